"""Training on the exact, coupled L2 objective (SPEC §2, §7, §9).

  J_L(θ) = (1/N) Σ_i ℓ(f_θ(x_i), y_i) + (λ/2) Σ_{decayed} ‖·‖_F²

ℓ is cross-entropy, or (1/2)‖z − e_y‖² for ``loss="mse"`` (so the data term is (1/(2N))‖Z − Y‖_F²).
The penalty is part of the loss that is backpropagated, for Adam and SGD alike (never AdamW's
decoupled decay), so the reported J_L is the number the theory bounds.

Data live on the device as whole tensors; full batch by default, minibatches from a seeded
``torch.randperm`` per epoch on the device. Checkpoints (model, optimizer, step, RNG, history) are
written atomically and a resumed run is bitwise identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import CollapseNet
from .resnet import ResNet, ResNetConfig
from .transformer import Transformer, TransformerConfig

ARCHS = ("rn1", "rn2", "t11", "t12")
LOSSES = ("ce", "mse")
LAM_SCHEDULES = ("constant", "inverse_depth")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
PLATEAU_WINDOW = 0.10  # last 10% of epochs (SPEC §9)
PLATEAU_TOL = 0.005  # relative change of J below 0.5% counts as a plateau
EVAL_CHUNK = 8192  # samples per forward in full-set evaluation (bounds memory, not results)

# Fields that may differ between a checkpointed run and its resumption.
_RESUME_FREE = ("device", "checkpoint_every", "eval_every", "num_threads")


class TrainingDivergedError(RuntimeError):
    """The objective became NaN or infinite; the last good checkpoint (if any) is kept."""


@dataclass
class RunConfig:
    """Everything that defines one training run (recorded in config.json)."""

    arch: str = "rn1"
    depth: int = 2
    width: int = 64
    norm: str = "post"
    ln_affine: bool = False
    block_form: str = "relu_of_linear"
    heads: int = 1
    readout: str = "cls"
    patch_size: int = 7
    dataset: str = "mnist"
    n_per_class: int | None = 100
    test_per_class: int | None = 100
    data_root: str | None = None
    data_options: dict = field(default_factory=dict)
    loss: str = "ce"
    lam: float = 0.005
    lam_schedule: str = "constant"
    decay_embedding: bool = False
    bias: bool = False
    optimizer: str = "adam"
    lr: float = 3e-4
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    epochs: int = 3000
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    checkpoint_every: int = 500
    eval_every: int = 50
    # torch CPU threads during the run (restored after); None leaves torch's setting. On a shared
    # machine 1 thread per run avoids oversubscription, which slows small matmuls 10-40x.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")

        choice("arch", ARCHS)
        choice("norm", ("post", "pre"))
        choice("block_form", ("relu_of_linear", "linear_of_relu"))
        choice("readout", ("cls", "last", "mean"))
        choice("loss", LOSSES)
        choice("lam_schedule", LAM_SCHEDULES)
        choice("optimizer", OPTIMIZERS)
        choice("lr_schedule", LR_SCHEDULES)
        choice("dtype", tuple(DTYPES))
        if self.block_form != "relu_of_linear" and self.arch != "rn1":
            raise ValueError("block_form applies to one-layer ResNet blocks (arch='rn1') only")
        for name in ("depth", "width", "heads", "patch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide width ({self.width})")
        for name in ("n_per_class", "test_per_class", "batch_size", "num_threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ValueError(f"lam must be finite and >= 0, got {self.lam}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not isinstance(self.data_options, dict):
            raise ValueError(f"data_options must be a dict, got {type(self.data_options).__name__}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    @property
    def effective_lam(self) -> float:
        """λ actually used: λ (constant) or λ/L (inverse_depth)."""
        return self.lam / self.depth if self.lam_schedule == "inverse_depth" else self.lam

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RunConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class RunResult:
    """Outcome of :func:`train`; ``to_dict()`` (metrics.json) omits features, labels, W and b."""

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
    history: list[dict[str, float]]
    decayed: list[str]
    plateau: dict[str, Any]
    wall_time_s: float
    device: str
    num_params: int
    epochs_done: int = 0
    completed: bool = True

    @property
    def penalty(self) -> float:
        return self.classifier_penalty + self.body_penalty + self.embedding_penalty

    def to_dict(self) -> dict[str, Any]:
        skip = {"features", "labels", "W", "b", "config"}
        out: dict[str, Any] = {
            "config": self.config.to_dict(),
            "effective_lam": self.config.effective_lam,
        }
        for f in dataclasses.fields(self):
            if f.name not in skip:
                out[f.name] = getattr(self, f.name)
        return out


# ----------------------------------------------------------------------------------------------
# model construction


def _data_shape_info(data: Any) -> dict[str, Any]:
    kind = data.kind
    x = data.x_train
    if kind == "image" and np.ndim(x) != 4:
        raise ValueError(f"image data must be (N, C, H, W), got shape {np.shape(x)}")
    if kind == "vector" and np.ndim(x) != 2:
        raise ValueError(f"vector data must be (N, D), got shape {np.shape(x)}")
    if kind == "text" and np.ndim(x) != 2:
        raise ValueError(f"text data must be (N, T) token ids, got shape {np.shape(x)}")
    return {"kind": kind, "shape": tuple(np.shape(x)[1:])}


def build_model(config: RunConfig, data: Any) -> CollapseNet:
    """The network ``config`` describes, sized for ``data`` (a ``deepnet.data.Dataset``)."""
    info = _data_shape_info(data)
    kind, shape = info["kind"], info["shape"]
    common = dict(
        num_classes=int(data.num_classes),
        width=config.width,
        depth=config.depth,
        norm=config.norm,
        ln_affine=config.ln_affine,
        bias=config.bias,
        decay_embedding=config.decay_embedding,
    )
    if config.arch in ("rn1", "rn2"):
        if kind == "text":
            raise ValueError("ResNets take image or vector data; use a transformer for text")
        return ResNet(
            ResNetConfig(
                input_dim=int(np.prod(shape)),
                layers_per_block=1 if config.arch == "rn1" else 2,
                block_form=config.block_form,
                **common,
            )
        )
    tcfg: dict[str, Any] = dict(
        kind=kind,
        mlp_layers=1 if config.arch == "t11" else 2,
        heads=config.heads,
        readout=config.readout,
        patch_size=config.patch_size,
    )
    if kind == "image":
        tcfg.update(in_channels=shape[0], image_size=(shape[1], shape[2]))
    elif kind == "vector":
        tcfg.update(input_dim=shape[0])
    else:
        vocab = getattr(data, "vocab", None)
        data_info = getattr(data, "info", None) or {}
        max_len = int(data_info.get("max_len", shape[0]))
        vocab_size = data_info.get("vocab_size")
        if vocab_size is None:
            vocab_size = len(vocab) if vocab is not None else int(np.max(data.x_train)) + 1
        vocab_size = max(int(vocab_size), int(np.max(data.x_train)) + 1)
        tcfg.update(vocab_size=vocab_size, max_len=max(max_len, shape[0]))
    return Transformer(TransformerConfig(**common, **tcfg))


# ----------------------------------------------------------------------------------------------
# objective


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def data_term(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """(1/N) Σ CE(z_i, y_i), or (1/(2N)) ‖Z − Y‖_F² with one-hot Y."""
    if loss == "ce":
        return F.cross_entropy(logits, y)
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return 0.5 * (logits - onehot).square().sum() / logits.shape[0]


@torch.no_grad()
def evaluate(model: CollapseNet, x: Tensor, y: Tensor, lam: float, loss: str) -> dict[str, Any]:
    """Full-set J_L and its split, with float64 reductions. Returns features (N, d) float64 too."""
    model.eval()
    feats = torch.cat([model.features(x[i : i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])
    model.train()
    h = feats.double()
    W = model.classifier.weight.double()
    b = model.classifier.bias
    logits = h @ W.T + (b.double() if b is not None else 0.0)
    fit = data_term(logits, y, loss)
    pens = model.penalties(1.0, dtype=torch.float64)  # ½‖·‖² sums, reduced in float64
    out: dict[str, Any] = {
        "fit": float(fit),
        "classifier_penalty": lam * float(pens["classifier_penalty"]),
        "body_penalty": lam * float(pens["body_penalty"]),
        "embedding_penalty": lam * float(pens["embedding_penalty"]),
        "train_acc": float((logits.argmax(1) == y).double().mean()),
        "features": h,
    }
    out["objective"] = (
        out["fit"] + out["classifier_penalty"] + out["body_penalty"] + out["embedding_penalty"]
    )
    return out


def _half_sq_norm(params: list[Tensor]) -> Tensor:
    """½ Σ‖p‖² in one fused reduction."""
    norms = torch._foreach_norm(params)
    return 0.5 * torch.stack(norms).square().sum()


# ----------------------------------------------------------------------------------------------
# files


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write a temporary file in the same folder, then os.replace: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, allow_nan=True), mode="w")


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "perm": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["perm"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_at(config: RunConfig, step: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): cosine from lr to 0, or constant."""
    if config.lr_schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))


def plateau_window(epochs: int) -> int:
    """Number of final epochs over which the plateau is judged (10%, at least 1)."""
    return max(1, round(PLATEAU_WINDOW * epochs))


def plateau_check(history: list[dict[str, float]], epochs: int) -> dict[str, Any]:
    """Relative change |J(E) − J(E − w)| / |J(E − w)| over the last w = 10% of epochs (SPEC §9)."""
    window = plateau_window(epochs)
    start = epochs - window
    by_epoch = {int(h["epoch"]): h["objective"] for h in history}
    if start not in by_epoch or epochs not in by_epoch:
        return {"window_epochs": window, "rel_change": None, "plateaued": False}
    j0, j1 = by_epoch[start], by_epoch[epochs]
    rel = abs(j1 - j0) / max(abs(j0), 1e-300)
    return {
        "window_epochs": window,
        "start_epoch": start,
        "objective_start": j0,
        "objective_end": j1,
        "rel_change": rel,
        "threshold": PLATEAU_TOL,
        "plateaued": bool(rel < PLATEAU_TOL),
    }


# ----------------------------------------------------------------------------------------------
# training


def _to_device(
    data: Any, kind: str, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    xdtype = torch.long if kind == "text" else dtype

    def conv(a: Any, dt: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

    xs = [conv(data.x_train, xdtype), conv(data.y_train, torch.long)]
    has_test = data.x_test is not None and len(data.x_test) > 0
    xs += [conv(data.x_test, xdtype), conv(data.y_test, torch.long)] if has_test else [None, None]
    return tuple(xs)  # type: ignore[return-value]


def load_run_data(config: RunConfig, seed: int | None = None) -> Any:
    """The dataset a run of ``config`` trains on; ``seed`` picks the subset (default config.seed).

    A depth sweep passes one fixed ``seed`` so that every run of the sweep sees the same samples.
    """
    from .data import load_dataset  # late import: data.py pulls optional readers

    return load_dataset(
        config.dataset,
        n_per_class=config.n_per_class,
        test_per_class=config.test_per_class,
        seed=config.seed if seed is None else seed,
        root=config.data_root,
        **config.data_options,
    )


def train(
    config: RunConfig,
    data: Any = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    *,
    max_epochs_this_call: int | None = None,
) -> RunResult:
    """Train ``config`` on ``data`` (loaded from ``config.dataset`` when None).

    With ``run_dir``: resume from its checkpoint.pt when ``resume`` (the stored config must match),
    checkpoint every ``checkpoint_every`` epochs, and write config.json, metrics.json,
    checkpoint.pt and features.npz at the end. ``max_epochs_this_call`` stops after that many epochs
    of this call (a checkpoint is written when run_dir is given) and returns the partial result with
    ``completed=False``; calling again resumes.
    """
    if config.num_threads is None:
        return _train(config, data, run_dir, resume, progress, max_epochs_this_call)
    before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _train(config, data, run_dir, resume, progress, max_epochs_this_call)
    finally:
        torch.set_num_threads(before)


def _train(
    config: RunConfig,
    data: Any,
    run_dir: str | os.PathLike | None,
    resume: bool,
    progress: bool,
    max_epochs_this_call: int | None,
) -> RunResult:
    t0 = time.perf_counter()
    if data is None:
        data = load_run_data(config)
    device = _resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    lam = config.effective_lam
    kind = data.kind
    run_path = Path(run_dir) if run_dir is not None else None

    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device=device, dtype=dtype)
    x, y, x_test, y_test = _to_device(data, kind, device, dtype)
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x_train has {n} samples but y_train has {len(y)}")
    if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
        raise ValueError(f"labels must lie in [0, {data.num_classes})")

    decayed = model.decayed_parameters()
    decayed_names = [name for name, _ in decayed]
    decayed_params = [p for _, p in decayed]
    params = list(model.parameters())
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, foreach=True)
    else:
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, foreach=True)

    batch = n if config.batch_size is None else min(config.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total_steps = config.epochs * steps_per_epoch
    perm_gen = torch.Generator(device=device)
    perm_gen.manual_seed(config.seed + 1)

    epoch = 0
    history: list[dict[str, float]] = []
    wall_before = 0.0
    ckpt_path = run_path / "checkpoint.pt" if run_path else None
    if run_path is not None:
        cfg_file = run_path / "config.json"
        if resume and ckpt_path is not None and ckpt_path.exists():
            # CPU first: RNG states must be CPU tensors; load_state_dict moves the rest.
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            stored = ckpt["config"]
            mine = config.to_dict()
            diff = sorted(k for k in mine if k not in _RESUME_FREE and stored.get(k) != mine[k])
            if diff:
                raise ValueError(
                    f"{run_path} holds a run with a different config (fields {diff}); "
                    "use another run_dir or resume=False"
                )
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            _set_rng_state(perm_gen, ckpt["rng"])
            epoch = int(ckpt["epoch"])
            history = list(ckpt["history"])
            wall_before = float(ckpt.get("wall_time_s", 0.0))
        _write_json(cfg_file, config.to_dict())
        if epoch < config.epochs:  # results of an earlier run in this folder are now stale
            for stale in ("metrics.json", "features.npz"):
                (run_path / stale).unlink(missing_ok=True)

    def save_checkpoint(at_epoch: int) -> None:
        if ckpt_path is None:
            return
        state = {
            "config": config.to_dict(),
            "epoch": at_epoch,
            "step": at_epoch * steps_per_epoch,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": _rng_state(perm_gen),
            "history": history,
            "wall_time_s": wall_before + time.perf_counter() - t0,
        }
        atomic_write(ckpt_path, lambda fh: torch.save(state, fh))

    def record(at_epoch: int) -> dict[str, Any]:
        ev = evaluate(model, x, y, lam, config.loss)
        if not math.isfinite(ev["objective"]):
            raise TrainingDivergedError(
                f"objective is {ev['objective']} at epoch {at_epoch} (lr={config.lr}); "
                + (f"last good checkpoint kept at {ckpt_path}" if ckpt_path else "no run_dir given")
            )
        entry = {
            "epoch": at_epoch,
            "objective": ev["objective"],
            "fit": ev["fit"],
            "classifier_penalty": ev["classifier_penalty"],
            "body_penalty": ev["body_penalty"],
            "embedding_penalty": ev["embedding_penalty"],
            "train_acc": ev["train_acc"],
            "lr": _lr_at(config, min(at_epoch * steps_per_epoch, total_steps), total_steps),
        }
        if not history or history[-1]["epoch"] != at_epoch:
            history.append(entry)
        last_eval.clear()  # keep one (features are N×d)
        last_eval[at_epoch] = ev
        return ev

    last_eval: dict[int, dict[str, Any]] = {}  # the latest evaluation, reused at the end

    plateau_start = config.epochs - plateau_window(config.epochs)

    def must_eval(e: int) -> bool:
        return e % config.eval_every == 0 or e == plateau_start or e == config.epochs

    if epoch == 0:
        record(0)
    stop_at = config.epochs
    if max_epochs_this_call is not None:
        stop_at = min(config.epochs, epoch + max(0, int(max_epochs_this_call)))

    bar = None
    if progress and stop_at > epoch:
        from tqdm import tqdm  # plain tqdm: works in terminals, logs and notebooks alike

        bar = tqdm(
            total=config.epochs,
            initial=epoch,
            desc=f"{config.arch} L={config.depth}",
            mininterval=0.5,
        )
    bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite step loss so far
    full_batch = batch == n
    model.train()
    try:
        while epoch < stop_at:
            if not full_batch:
                order = torch.randperm(n, generator=perm_gen, device=device)
            for s in range(steps_per_epoch):
                if full_batch:
                    xb, yb = x, y
                else:
                    idx = order[s * batch : (s + 1) * batch]
                    xb, yb = x[idx], y[idx]
                step = epoch * steps_per_epoch + s
                lr = _lr_at(config, step, total_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                loss = data_term(model(xb), yb, config.loss)
                if lam > 0:
                    loss = loss + lam * _half_sq_norm(decayed_params)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # No sync per step (GPU): fold finiteness into a device flag, checked at evals.
                bad |= ~torch.isfinite(loss.detach())
            epoch += 1
            is_ckpt = epoch % config.checkpoint_every == 0 or epoch == stop_at
            if is_ckpt or must_eval(epoch):
                # Sync point: never write a checkpoint, or a history entry, past a non-finite step.
                if bool(bad) or not all(bool(torch.isfinite(p).all()) for p in params):
                    raise TrainingDivergedError(
                        f"non-finite training loss before epoch {epoch} (lr={config.lr}); "
                        + (
                            f"last good checkpoint kept at {ckpt_path}"
                            if ckpt_path
                            else "no run_dir given"
                        )
                    )
            if must_eval(epoch):  # history only at eval epochs, so it is the same after resuming
                ev = record(epoch)
                if bar is not None:
                    bar.set_postfix(J=f"{ev['objective']:.5f}", acc=f"{ev['train_acc']:.3f}")
            if is_ckpt:
                save_checkpoint(epoch)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    final = last_eval.get(epoch) or evaluate(model, x, y, lam, config.loss)
    if not math.isfinite(final["objective"]):
        raise TrainingDivergedError(f"objective is {final['objective']} at epoch {epoch}")
    test_acc = None
    if x_test is not None:
        with torch.no_grad():
            model.eval()
            pred = torch.cat(
                [
                    model(x_test[i : i + EVAL_CHUNK]).argmax(1)
                    for i in range(0, len(x_test), EVAL_CHUNK)
                ]
            )
            model.train()
        test_acc = float((pred == y_test).double().mean())
    completed = epoch >= config.epochs
    W = model.classifier.weight.detach().double().cpu().numpy()
    b = model.classifier.bias
    result = RunResult(
        config=config,
        objective=final["objective"],
        fit=final["fit"],
        classifier_penalty=final["classifier_penalty"],
        body_penalty=final["body_penalty"],
        embedding_penalty=final["embedding_penalty"],
        train_acc=final["train_acc"],
        test_acc=test_acc,
        features=final["features"].cpu().numpy(),
        labels=y.cpu().numpy(),
        W=W,
        b=None if b is None else b.detach().double().cpu().numpy(),
        history=history,
        decayed=decayed_names,
        plateau=plateau_check(history, config.epochs) if completed else {"plateaued": False},
        wall_time_s=wall_before + time.perf_counter() - t0,
        device=str(device),
        num_params=model.num_params(),
        epochs_done=epoch,
        completed=completed,
    )
    if run_path is not None and completed:
        _write_json(run_path / "metrics.json", result.to_dict())

        def write_npz(fh: Any) -> None:
            arrays = {"features": result.features, "labels": result.labels, "W": result.W}
            if result.b is not None:
                arrays["b"] = result.b
            np.savez(fh, **arrays)

        atomic_write(run_path / "features.npz", write_npz)
    return result


def load_result(run_dir: str | os.PathLike) -> RunResult:
    """Read a finished run (config.json, metrics.json, features.npz) back into a RunResult."""
    path = Path(run_dir)
    with open(path / "metrics.json") as fh:
        metrics = json.load(fh)
    with open(path / "config.json") as fh:
        config = RunConfig.from_dict(json.load(fh))
    with np.load(path / "features.npz") as z:
        arrays = {k: z[k] for k in z.files}
    names = {f.name for f in dataclasses.fields(RunResult)}
    kwargs = {k: v for k, v in metrics.items() if k in names and k != "config"}
    return RunResult(
        config=config,
        features=arrays["features"],
        labels=arrays["labels"],
        W=arrays["W"],
        b=arrays.get("b"),
        **kwargs,
    )
