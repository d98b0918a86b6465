"""What defines a training run (:class:`RunConfig`) and what it produced (:class:`RunResult`).

Every field is recorded in the run's config.json; :meth:`RunConfig.from_dict` reloads it, and the
data subset is part of the config (``data_seed``), so a config reproduces its run exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models import ARCHS
from .optimizers import OPTIMIZERS, first_order, optimizer_spec

LOSSES = ("ce", "mse")
NORMS = ("post", "pre")
BLOCK_FORMS = ("relu_of_linear", "linear_of_relu")
READOUTS = ("cls", "last", "mean")
LAM_SCHEDULES = ("constant", "inverse_depth")
LR_SCHEDULES = ("cosine", "constant")
INITS = ("default", "continuation")
DTYPES = ("auto", "float32", "float64")

#: the choice-valued fields with fixed options; ``arch``, ``optimizer`` and ``warmup_optimizer``
#: take theirs from the registries (:func:`choices`)
_FIXED_CHOICES: dict[str, tuple[str, ...]] = {
    "norm": NORMS,
    "block_form": BLOCK_FORMS,
    "readout": READOUTS,
    "loss": LOSSES,
    "lam_schedule": LAM_SCHEDULES,
    "lr_schedule": LR_SCHEDULES,
    "init": INITS,
    "dtype": DTYPES,
}
#: every choice-valued field (RunConfig validation and the CLI read :func:`choices`)
CHOICE_FIELDS = ("arch", "optimizer", "warmup_optimizer", *_FIXED_CHOICES)


def choices(name: str) -> tuple[str, ...]:
    """The options of the choice-valued field ``name``, read from the registries where they live
    (:data:`deepnet.models.ARCHS`, :data:`deepnet.optimizers.OPTIMIZERS`)."""
    if name == "arch":
        return tuple(ARCHS)
    if name == "optimizer":
        return tuple(OPTIMIZERS)
    if name == "warmup_optimizer":
        return first_order()
    return _FIXED_CHOICES[name]


#: fields that may differ between a checkpointed run and its resumption (they do not change the
#: trajectory): where it runs, how often it reports, and where a continuation came from
RESUME_FREE = (
    "device",
    "checkpoint_every",
    "eval_every",
    "num_threads",
    "init_from",
    "until_converged",
)
#: full-batch iterations between convergence checks when ``chunk_epochs`` is None (or the
#: budget, when that is smaller)
DEFAULT_CHUNK = 500
#: fields that must agree between a continuation run and the shallower run it starts from
CONTINUATION_SAME = (
    "arch",
    "width",
    "norm",
    "ln_affine",
    "ln_eps",
    "block_form",
    "heads",
    "readout",
    "patch_size",
    "dataset",
    "n_per_class",
    "test_per_class",
    "data_root",
    "data_options",
    "loss",
    "bias",
    "decay_embedding",
    "whiten_embedding",
)


@dataclass
class RunConfig:
    """Everything that defines one training run (recorded in config.json).

    Model: ``arch`` (see :data:`deepnet.models.ARCHS`), ``depth`` L ≥ 0 (0 = no blocks: embedding
    → LN → classifier), ``width`` d, LN placement ``norm``, ``ln_affine``, LayerNorm's ε
    ``ln_eps`` (every LN of the model; THEORY §2: the UFM lower bound holds for any ε > 0),
    ``block_form`` (L-RN1 only), ``heads``, ``readout`` and ``patch_size`` (transformers; None =
    the largest divisor of the input size that is ≤ 7).

    Data: ``dataset``, ``n_per_class`` training samples per class (None = all), up to
    ``test_per_class`` test samples per class (fewer where a class has fewer), ``data_seed`` picks
    the subset (None = ``seed``).

    Objective (THEORY §2): J_L = (1/N)Σℓ + (λ/2)Σ‖W‖²_F over the decayed list, λ = ``lam``
    (constant) or lam/max(L, 1) (``inverse_depth``).

    Optimisation (THEORY §9): ``optimizer`` names an entry of :data:`deepnet.optimizers.OPTIMIZERS`:
    first-order adam / sgd (``lr``, ``lr_schedule``, ``momentum``, ``batch_size``; ``epochs``
    passes over the data) or full-batch float64 lbfgs (strong-Wolfe line search,
    ``lbfgs_history`` pairs) / newton_tr (trust-region Newton-CG, :mod:`deepnet.newton`), for
    which ``epochs`` counts iterations and the first ``warmup_epochs`` of them are full-batch
    ``warmup_optimizer`` steps at a constant ``lr``. ``init``: "default"
    (random) or "continuation" from the finished shallower run in ``init_from``, with the new
    blocks started near the identity (``pad_scale``).

    ``whiten_embedding`` (THEORY §2, §9) parametrises the linear map of image/vector inputs as
    E = V P with P the whitening of the training inputs: the same function class and objective,
    a better conditioned problem. None = on for full-batch optimizers (the runs that aim at the
    optimum), off for first-order runs (the paper's protocol); resolved to a bool at
    construction.

    Convergence (THEORY §9): ``converged`` needs the float64 gradient norm ≤ ``grad_tol``, the
    relative decrease of J over the last ``conv_window`` of the chunk (full-batch) or of the
    budget (first-order), taken at full step size, ≤ ``rel_tol``, and an escape probe from the
    final point (fresh L-BFGS for ``escape_lbfgs_iters`` iterations, float64 Adam at
    ``escape_adam_lr`` for ``escape_adam_steps`` steps) that lowers J by ≤ ``escape_tol``.
    For a full-batch optimizer ``epochs`` is a cap: training runs in chunks of ``chunk_epochs``
    iterations (None = 500), emptying the optimizer's state (L-BFGS's memory, Newton-TR's trust
    radius) whenever it can make no progress,
    and stops at the first chunk where the criteria hold (``until_converged``; False runs the
    whole cap). A probe that lowers J by more than ``escape_tol`` at the end of a chunk hands
    its point to the run, which continues from there; its steps count against the cap. At the
    cap the criteria are only recorded, so a run resumed with a larger cap is the run trained
    with that cap from the start.
    """

    arch: str = "rn1"
    depth: int = 2
    width: int = 64
    norm: str = "post"
    ln_affine: bool = False
    ln_eps: float = 1e-5
    block_form: str = "relu_of_linear"
    heads: int = 1
    readout: str = "cls"
    patch_size: int | None = None
    dataset: str = "mnist"
    n_per_class: int | None = 100
    test_per_class: int | None = 100
    data_root: str | None = None
    data_options: dict = field(default_factory=dict)
    data_seed: int | None = None
    loss: str = "ce"
    lam: float = 0.005
    lam_schedule: str = "constant"
    decay_embedding: bool = False
    whiten_embedding: bool | None = None
    bias: bool = False
    optimizer: str = "adam"
    lr: float = 3e-4
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    epochs: int = 3000
    batch_size: int | None = None
    warmup_epochs: int = 0
    warmup_optimizer: str = "adam"
    lbfgs_history: int = 50
    init: str = "default"
    init_from: str | None = None
    pad_scale: float = 0.01
    grad_tol: float = 0.02
    rel_tol: float = 1e-3
    conv_window: float = 0.1
    chunk_epochs: int | None = None
    until_converged: bool = True
    escape_tol: float = 1e-3
    escape_lbfgs_iters: int = 50
    escape_adam_steps: int = 200
    escape_adam_lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    checkpoint_every: int = 500
    eval_every: int = 50
    # torch CPU threads during the run (restored after); None leaves torch's setting. On a shared
    # machine 1 thread per run avoids oversubscription, which slows small matmuls 10-40x.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        _check_types(self)
        for name in CHOICE_FIELDS:
            options = choices(name)
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        arch = ARCHS[self.arch]
        if self.block_form not in arch.block_forms:
            raise ValueError(
                f"block_form={self.block_form!r} does not apply to arch={self.arch!r} (its "
                f"blocks: {arch.block_forms}); other block forms are one-layer ResNet blocks only"
            )
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0 (0 = no blocks), got {self.depth}")
        for name in ("width", "heads", "epochs", "checkpoint_every", "eval_every", "lbfgs_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        for name in ("n_per_class", "test_per_class", "batch_size", "num_threads", "patch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        if self.data_seed is not None and self.data_seed < 0:
            raise ValueError(f"data_seed must be None or >= 0, got {self.data_seed}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("lam", "pad_scale", "grad_tol", "rel_tol", "escape_tol"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        for name in ("lr", "escape_adam_lr", "ln_eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        for name in ("escape_lbfgs_iters", "escape_adam_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.escape_lbfgs_iters == 0 and self.escape_adam_steps == 0:
            raise ValueError(
                "the escape probe needs at least one optimiser: set escape_lbfgs_iters or "
                "escape_adam_steps >= 1 (converged is never claimed without it)"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.conv_window <= 1:
            raise ValueError(f"conv_window must be a fraction in (0, 1], got {self.conv_window}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")
        opt = optimizer_spec(self.optimizer)
        if opt.float64 and self.dtype == "float32":
            raise ValueError(
                f"{opt.label} runs in float64 (its {opt.step_control} and the stationarity test "
                "need it): use dtype='auto' or 'float64'"
            )
        if opt.full_batch:
            if self.batch_size is not None:
                raise ValueError(
                    f"{opt.label} is full-batch (its {opt.step_control} needs the exact "
                    f"objective): use batch_size=None, got {self.batch_size}"
                )
            if not 0 <= self.warmup_epochs < self.epochs:
                raise ValueError(
                    f"warmup_epochs must be in [0, epochs) = [0, {self.epochs}), "
                    f"got {self.warmup_epochs}"
                )
            if self.chunk_epochs is not None:
                if self.chunk_epochs < 1:
                    raise ValueError(f"chunk_epochs must be None or >= 1, got {self.chunk_epochs}")
                if self.chunk_epochs > self.epochs - self.warmup_epochs:
                    raise ValueError(
                        f"the cap epochs={self.epochs} (after {self.warmup_epochs} warm-up "
                        f"epochs) is below the chunk size chunk_epochs={self.chunk_epochs}: "
                        "raise epochs or lower chunk_epochs"
                    )
        else:
            full = ", ".join(repr(n) for n, o in OPTIMIZERS.items() if o.full_batch)
            if self.warmup_epochs:
                raise ValueError(
                    f"warmup_epochs applies to the full-batch optimizers ({full}) only"
                )
            if self.chunk_epochs is not None:
                raise ValueError(
                    f"chunk_epochs applies to the full-batch optimizers ({full}) only (a "
                    "first-order schedule depends on its whole budget)"
                )
        if self.whiten_embedding is None:
            self.whiten_embedding = opt.full_batch and not self.decay_embedding
        elif self.whiten_embedding and self.decay_embedding:
            raise ValueError(
                "whiten_embedding=True with decay_embedding=True would decay V, not the "
                "embedding E = V P: set whiten_embedding=False"
            )
        if self.init == "continuation" and self.depth == 0:
            raise ValueError("depth 0 has no shallower run to continue from: use init='default'")
        if self.init == "default" and self.init_from is not None:
            raise ValueError("init_from is only used with init='continuation'")

    @property
    def effective_lam(self) -> float:
        """λ actually used: λ (constant) or λ/max(L, 1) (inverse_depth; depth 0 uses λ)."""
        if self.lam_schedule == "inverse_depth":
            return self.lam / max(self.depth, 1)
        return self.lam

    @property
    def chunk(self) -> int:
        """Full-batch iterations between convergence checks (THEORY §9)."""
        return DEFAULT_CHUNK if self.chunk_epochs is None else self.chunk_epochs

    @property
    def torch_dtype_name(self) -> str:
        """float64 for the optimizers that need it (L-BFGS, Newton-TR), else float32, unless
        ``dtype`` says otherwise."""
        if self.dtype != "auto":
            return self.dtype
        return "float64" if OPTIMIZERS[self.optimizer].float64 else "float32"

    @property
    def full_batch(self) -> bool:
        """Whether the optimizer steps on the exact objective (L-BFGS, Newton-TR): ``epochs``
        counts its iterations, and the run trains in chunks with convergence checks."""
        return OPTIMIZERS[self.optimizer].full_batch

    @property
    def subset_seed(self) -> int:
        """The seed of the data subset: ``data_seed`` when set, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def schedule_free(self) -> bool:
        """True when no step depends on the total budget (a full-batch optimizer, or a constant
        lr): the run with a larger ``epochs`` is then this run continued, so a finished run may
        be extended."""
        return self.full_batch or self.lr_schedule == "constant"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config stored as ``d`` (config.json). A missing ``whiten_embedding`` means False:
        such a file predates the option, and its run used the plain embedding."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RunConfig fields: {sorted(unknown)}")
        # a config written before the whitened embedding existed (v0.2) trained the plain one
        return cls(**{"whiten_embedding": False, **d})


def _check_types(cfg: Any) -> None:
    """Reject values of the wrong type (1.5 epochs, lr="0.1", True as a width) with one line;
    ints are accepted (and converted) where a float is expected."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = str(f.type).replace(" ", "")
        optional = kind.endswith("|None")
        base = kind.removesuffix("|None")
        if value is None:
            if optional:
                continue
            raise ValueError(f"{f.name} must not be None")
        if isinstance(value, np.generic):
            value = value.item()
            setattr(cfg, f.name, value)
        if base == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        elif base == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            expected = "a number"
            if ok:
                setattr(cfg, f.name, float(value))
        elif base == "bool":
            ok, expected = isinstance(value, bool), "true or false"
        elif base == "str":
            ok, expected = isinstance(value, str), "a string"
        elif base == "dict":
            ok, expected = isinstance(value, dict), "a dict"
        else:  # pragma: no cover - a new field type must be added here
            raise TypeError(f"RunConfig field {f.name} has an unchecked type {f.type}")
        if not ok:
            raise ValueError(
                f"{f.name} must be {expected}{' or None' if optional else ''}, "
                f"got {value!r} ({type(value).__name__})"
            )


@dataclass(frozen=True)
class Stationarity(Mapping[str, Any]):
    """The convergence record of a run at its current point (THEORY §9; built by
    :func:`deepnet.convergence.stationarity`).

    ``grad_norm`` is the float64 ‖∇J‖₂ over every trained parameter (``grad_norm_<group>`` its
    split); ``rel_change`` = (J(E − w) − J(E)) / |J(E)| over the final ``window`` of w
    iterations/epochs at full step size (NaN otherwise); ``escape_rel`` the larger relative
    decrease of J the escape probes found (``escape_lbfgs_rel``, ``escape_adam_rel``; NaN when
    no probe ran). ``converged`` ⇔ grad_norm ≤ grad_tol, |rel_change| ≤ rel_tol over a whole
    window and escape_rel ≤ escape_tol; ``reasons`` says which failed.

    It reads like the dict it is written as (``record["grad_norm"]``, ``record.get(...)``):
    :meth:`to_dict` gives the keys of metrics.json's ``stationarity``, in this order.
    """

    grad_norm_embedding: float = math.nan
    grad_norm_body: float = math.nan
    grad_norm_classifier: float = math.nan
    grad_norm: float = math.nan
    rel_change: float = math.nan
    window: int = 0
    window_by_probe: bool = False
    window_start_objective: float = math.nan
    final_objective: float = math.nan
    full_step: bool = False
    min_lr_ratio: float | None = None
    grad_tol: float = math.nan
    rel_tol: float = math.nan
    stalled: bool = False
    escape_rel: float = math.nan
    escape_lbfgs_rel: float = math.nan
    escape_adam_rel: float = math.nan
    escape_tol: float = math.nan
    converged: bool = False
    reasons: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if key == "reasons" else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        """The record as metrics.json and checkpoints hold it."""
        return {k: self[k] for k in self}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stationarity:
        """The record stored as ``d``; keys an older version did not write take their defaults."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "reasons" in known:
            known["reasons"] = tuple(known["reasons"])
        return cls(**known)


@dataclass
class RunResult:
    """Outcome of :func:`deepnet.train`; ``to_dict()`` (metrics.json) omits the arrays.

    ``stationarity``: the :class:`Stationarity` record at the final point (THEORY §9).
    ``epochs_done`` counts iterations of a full-batch optimizer (epochs for first-order runs),
    ``escape_steps`` the probe steps the run adopted: the run used ``epochs_done +
    escape_steps`` of its cap. ``model`` is the trained network, in memory only.
    """

    config: RunConfig
    objective: float
    fit: float
    classifier_penalty: float
    body_penalty: float
    embedding_penalty: float
    train_acc: float
    test_acc: float | None
    features: np.ndarray
    labels: np.ndarray
    W: np.ndarray
    b: np.ndarray | None
    history: list[dict[str, Any]]
    decayed: list[str]
    stationarity: Stationarity
    wall_time_s: float
    device: str
    num_params: int
    epochs_done: int = 0
    completed: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)
    #: steps of the escape probes whose points the run adopted (THEORY §9; count against the cap)
    escape_steps: int = 0
    #: times the full-batch optimizer's state was emptied because it could make no progress
    #: (L-BFGS's memory after a failed line search; Newton-TR's collapsed trust radius)
    lbfgs_resets: int = 0
    #: the convergence checks at the ends of the chunks (full-batch): epoch, J, grad, window,
    #: probe
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: the trained network (in memory only: never written, never compared)
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def penalty(self) -> float:
        return self.classifier_penalty + self.body_penalty + self.embedding_penalty

    @property
    def converged(self) -> bool:
        return self.stationarity.converged

    def to_dict(self) -> dict[str, Any]:
        skip = {"features", "labels", "W", "b", "config", "model"}
        out: dict[str, Any] = {
            "config": self.config.to_dict(),
            "effective_lam": self.config.effective_lam,
        }
        for f in dataclasses.fields(self):
            if f.name not in skip:
                out[f.name] = getattr(self, f.name)
        out["stationarity"] = self.stationarity.to_dict()
        return out


# --------------------------------------------------------------------------------------------
# limits and fingerprints
# --------------------------------------------------------------------------------------------

#: the deepest network a sweep accepts: a guard against typos (``--depths 1000000`` would build
#: a model that cannot fit in memory); the paper's deepest runs have tens of blocks
MAX_DEPTH = 10_000

#: fields left out of a fingerprint: those that may differ between a run and its resumption
#: (RESUME_FREE) and those a sweep sets per unit (depth, seed); ``init`` and ``data_seed`` enter
#: in their sweep-level form (see :func:`fingerprint_fields`)
FINGERPRINT_FREE = (*RESUME_FREE, "depth", "seed")


def fingerprint_fields(
    config: RunConfig, *, per_seed: bool = False, continuation: bool = False
) -> dict[str, Any]:
    """The settings a fingerprint hashes: the resolved config minus :data:`FINGERPRINT_FREE`.

    In a sweep whose units each draw their own subset (``per_seed``) ``data_seed`` is written as
    "per_seed" when it equals the unit's seed; in a continuation sweep ``init`` is written as
    "continuation" (the shallowest unit of a chain starts from the default init, and a default
    start is exactly the run a continuation sweep makes when nothing shallower exists).
    """
    fields = {k: v for k, v in config.to_dict().items() if k not in FINGERPRINT_FREE}
    fields["data_seed"] = (
        "per_seed" if per_seed and config.subset_seed == config.seed else config.subset_seed
    )
    if continuation:
        fields["init"] = "continuation"
    return fields


def fingerprint_of(fields: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``fields`` as canonical JSON (sorted keys)."""
    import hashlib
    import json

    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(config: RunConfig, *, per_seed: bool = False, continuation: bool = False) -> str:
    """A short stable hash of the settings that produced a run (:func:`fingerprint_fields`):
    two runs with the same fingerprint differ at most in depth, seed and where they ran."""
    return fingerprint_of(fingerprint_fields(config, per_seed=per_seed, continuation=continuation))


def fingerprint_diff(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """The fields two fingerprinted settings differ in, as ``name: A there, B here`` (short)."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    return "; ".join(f"{k}: {short(theirs.get(k))} there, {short(ours.get(k))} here" for k in keys)
