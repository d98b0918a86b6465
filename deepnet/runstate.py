"""What every training run carries, shared by :func:`deepnet.train` and
:func:`deepnet.batched.train_batched`: the evaluation schedule, the history entries, the loop's
record of itself (:class:`RunState`), the one checkpoint layout, the progress bar, and the final
:class:`~deepnet.config.RunResult` (THEORY §9).

Checkpoint layout (``checkpoint.pt``, written atomically)::

    {"config": RunConfig.to_dict(), "epoch": int, "escape_steps": int,
     "model": state_dict, "optimizer": {"first": state | None, <full-batch name>: state | None},
     "rng": {"torch", "perm"[, "cuda"]}, "history": [...], "wall_time_s": float,
     "loop": {"stalled", "finished", "fresh", "resets", "escape_steps", "checks", "current"}}

``optimizer`` holds the first-order optimizer's state under "first" and a full-batch
optimizer's under its registry name (e.g. "lbfgs"); ``loop.current`` is the stationarity record
of the current point, when the last check was taken there.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .config import RunConfig, RunResult, Stationarity
from .convergence import convergence_window, escape_probe, lr_at, stationarity
from .io import provenance
from .layers import CollapseNet
from .objective import EVAL_CHUNK, gradient_norms
from .optimizers import OPTIMIZERS

if TYPE_CHECKING:  # the data package loads its readers: imported when a run needs data
    from .data import Dataset

#: hook called at every evaluation point with (epoch, model, evaluation dict); what it returns
#: is stored in that history entry (the sweep uses it for NC metrics over training)
EvalHook = Callable[[int, CollapseNet, dict[str, Any]], dict[str, Any]]


class TrainingDivergedError(RuntimeError):
    """The objective became NaN or infinite; the last good checkpoint (if any) is kept."""


# ---------------------------------------------------------------------------------- set-up


def load_run_data(config: RunConfig) -> Dataset:
    """The dataset a run of ``config`` trains on (the subset drawn with ``config.subset_seed``)."""
    from .data import load_dataset

    return load_dataset(
        config.dataset,
        n_per_class=config.n_per_class,
        test_per_class=config.test_per_class,
        seed=config.subset_seed,
        root=config.data_root,
        **config.data_options,
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def check_threads(n: int | None) -> None:
    """Refuse more CPU threads than this process may use (one line): torch would try to start
    them all (100,000 threads end the process), and more threads than cores only slow it."""
    if n is None:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    if n > cores:
        raise ValueError(
            f"num_threads={n} is more than the {cores} core(s) this process may use; "
            f"use 1 to {cores} (or None to leave torch's setting)"
        )


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` for the block (restored after); None leaves them."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: the training and test tensors of a run: x, y, x_test, y_test (the test pair None without one)
Tensors = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def to_tensors(data: Dataset, device: torch.device, dtype: torch.dtype) -> Tensors:
    """The data on ``device`` (token ids as int64, other inputs in ``dtype``); labels checked."""
    xdtype = torch.long if data.kind == "text" else dtype

    def conv(a: Any, dt: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

    x, y = conv(data.x_train, xdtype), conv(data.y_train, torch.long)
    if len(y) != len(x):
        raise ValueError(f"x_train has {len(x)} samples but y_train has {len(y)}")
    if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
        raise ValueError(f"labels must lie in [0, {data.num_classes})")
    if data.x_test is not None and len(data.x_test) > 0:
        return x, y, conv(data.x_test, xdtype), conv(data.y_test, torch.long)
    return x, y, None, None


# ------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """When a run evaluates, checks and changes phase, as a function of the epoch (THEORY §9).

    A full-batch run takes ``warmup_epochs`` first-order epochs at the constant ``lr``, then
    iterations of its optimizer in chunks of ``chunk`` with a convergence check at each chunk
    end; a first-order run follows its lr schedule over ``epochs``. J is evaluated every
    ``eval_every`` epochs, at the end, at each chunk end and at the start of every window the
    relative-change test reads.
    """

    config: RunConfig
    #: samples per step (the whole training set for full-batch steps)
    batch: int
    steps_per_epoch: int

    @classmethod
    def of(cls, config: RunConfig, n_samples: int) -> Schedule:
        batch = n_samples if config.batch_size is None else min(config.batch_size, n_samples)
        return cls(config, batch, math.ceil(n_samples / batch))

    @property
    def full_batch(self) -> bool:
        return self.config.full_batch

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def full_phase(self, epoch: int) -> bool:
        """Whether ``epoch`` is an iteration of the full-batch optimizer (after the warm-up)."""
        return self.full_batch and epoch >= self.config.warmup_epochs

    def phase(self, epoch: int) -> str:
        """The history's phase of the step that ends at ``epoch`` + 1."""
        return self.config.optimizer if self.full_phase(epoch) else "first-order"

    def chunk_end(self, e: int) -> bool:
        """Whether iteration ``e`` ends a chunk (a convergence check follows)."""
        start = self.config.warmup_epochs
        return self.full_batch and e > start and (e - start) % self.config.chunk == 0

    def window_starts(self) -> set[int]:
        """The epochs J must be recorded at for the window tests: w before each chunk end
        (full-batch) or before the end of the budget (first-order)."""
        cfg, w = self.config, convergence_window(self.config)
        if not self.full_batch:
            return {cfg.epochs - w}
        ends = set(range(cfg.warmup_epochs + cfg.chunk, cfg.epochs + 1, cfg.chunk))
        return {c - w for c in ends | {cfg.epochs}}

    def lr(self, epoch: int) -> float | None:
        """The first-order lr in force at the start of ``epoch`` (None in the full-batch phase)."""
        if self.full_phase(epoch):
            return None
        if self.full_batch:  # warm-up: constant lr
            return self.config.lr
        step = min(epoch * self.steps_per_epoch, self.total_steps)
        return lr_at(self.config, step, self.total_steps)

    def step_lr(self, epoch: int, step: int) -> float:
        """The lr of minibatch step ``step`` of ``epoch`` (first-order runs)."""
        return lr_at(self.config, epoch * self.steps_per_epoch + step, self.total_steps)

    def must_eval(self, e: int) -> bool:
        return (
            e % self.config.eval_every == 0
            or e == self.config.epochs
            or self.chunk_end(e)
            or e in self.window_starts()
        )

    def next_boundary(self, e: int, stop_at: int, budget_left: int) -> int:
        """The next epoch after ``e`` at which something happens: an evaluation, a checkpoint,
        the start of a convergence window, the end of a chunk or of the warm-up, or the end of
        this call."""
        cfg = self.config
        marks = [
            (e // cfg.eval_every + 1) * cfg.eval_every,
            (e // cfg.checkpoint_every + 1) * cfg.checkpoint_every,
            stop_at,
            e + max(budget_left, 1),
        ]
        marks += [m for m in (*self.window_starts(), cfg.warmup_epochs) if m > e]
        if self.full_phase(e):
            start = cfg.warmup_epochs
            marks.append(start + ((e - start) // cfg.chunk + 1) * cfg.chunk)
        return min(marks)


def history_entry(epoch: int, ev: dict[str, Any], phase: str, lr: float | None) -> dict[str, Any]:
    """One history entry: J and its split from an ``evaluate`` result, the phase (the full-batch
    optimizer's name, "first-order" or "escape") and the lr of the steps that led there (None
    for full-batch iterations)."""
    keys = ("objective", "fit", "classifier_penalty", "body_penalty", "embedding_penalty")
    return {
        "epoch": epoch,
        **{k: ev[k] for k in keys},
        "train_acc": ev["train_acc"],
        "phase": phase,
        "lr": lr,
    }


# ------------------------------------------------------------------------------ run state


@dataclass
class RunState:
    """What a run has done so far: everything its checkpoint holds besides tensors and RNG."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_before: float = 0.0
    #: the full-batch optimizer could make no progress even from an empty state
    stalled: bool = False
    #: training is over before the cap: the criteria hold (until_converged), or a stall that
    #: no probe could leave
    finished: bool = False
    #: the full-batch optimizer's state is empty (just created or reset): a failure is a stall
    fresh: bool = True
    resets: int = 0
    escape_steps: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: the stationarity record of the current point, when the last check was taken there
    current: Stationarity | None = None

    def add_entry(self, entry: dict[str, Any], *, always: bool = False) -> None:
        """Append a history entry (one per epoch unless ``always``: an adopted probe point)."""
        last = self.history[-1] if self.history else None
        if last is None or last["epoch"] != entry["epoch"] or always:
            self.history.append(entry)

    def checkpoint(
        self,
        config: RunConfig,
        model: dict[str, Tensor],
        optimizers: dict[str, Any],
        rng: dict[str, Any],
        wall_time_s: float,
    ) -> dict[str, Any]:
        """The checkpoint of this state (the layout in the module docstring)."""
        return {
            "config": config.to_dict(),
            "epoch": self.epoch,
            "escape_steps": self.escape_steps,
            "model": model,
            "optimizer": optimizers,
            "rng": rng,
            "history": self.history,
            "wall_time_s": wall_time_s,
            "loop": {
                "stalled": self.stalled,
                "finished": self.finished,
                "fresh": self.fresh,
                "resets": self.resets,
                "escape_steps": self.escape_steps,
                "checks": self.checks,
                "current": None if self.current is None else self.current.to_dict(),
            },
        }

    @classmethod
    def restore(cls, ckpt: dict[str, Any], config: RunConfig) -> RunState:
        """The state a checkpoint holds, as ``config`` (its budget perhaps larger) resumes it."""
        opt = ckpt["optimizer"]
        loop = ckpt.get("loop", {})
        current = loop.get("current")
        state = cls(
            epoch=int(ckpt["epoch"]),
            history=list(ckpt["history"]),
            wall_before=float(ckpt.get("wall_time_s", 0.0)),
            stalled=bool(loop.get("stalled", False)),
            finished=bool(loop.get("finished", False)),
            fresh=bool(loop.get("fresh", opt.get(config.optimizer) is None)),
            resets=int(loop.get("resets", 0)),
            escape_steps=int(loop.get("escape_steps", 0)),
            checks=list(loop.get("checks", [])),
            current=None if current is None else Stationarity.from_dict(current),
        )
        stored_cap = int(ckpt["config"].get("epochs", config.epochs))
        ended_at_cap = state.epoch + state.escape_steps >= stored_cap
        if state.finished and not state.stalled and (
            not config.until_converged or (ended_at_cap and config.epochs > stored_cap)
        ):
            # a run resumed with until_converged=False trains on; so does a run whose check at
            # its old cap passed, when the cap grows: that check was a record, not a stop
            state.finished = False
        if config.epochs > stored_cap and ended_at_cap:
            state.current = None
        return state


def progress_bar(total: int, initial: int, desc: str) -> Any:
    """A progress bar over a run's epochs (plain tqdm: terminals, logs and notebooks alike)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=0.5)


# -------------------------------------------------------------------------------- result


def make_result(
    cfg: RunConfig,
    model: CollapseNet,
    final: dict[str, Any],
    tensors: Tensors,
    history: list[dict[str, Any]],
    epochs_done: int,
    *,
    stalled: bool,
    completed: bool,
    wall_time_s: float,
    device: torch.device,
    station: Stationarity | None = None,
) -> RunResult:
    """The RunResult of a trained model: ``final`` is its last evaluation (``evaluate``); the
    test accuracy, the float64 gradient norms, the stationarity record (``station`` when the
    caller has it for this point; else computed here, with an escape probe when ``completed``)
    and the provenance are computed here. The model rides along in memory (``result.model``)."""
    x, y, x_test, y_test = tensors
    test_acc = None
    if x_test is not None:
        assert y_test is not None  # the test pair comes together (to_tensors)
        with torch.no_grad():
            was = model.training
            model.eval()
            pred = torch.cat(
                [
                    model(x_test[i : i + EVAL_CHUNK]).argmax(1)
                    for i in range(0, len(x_test), EVAL_CHUNK)
                ]
            )
            model.train(was)
        test_acc = float(torch.eq(pred, y_test).double().mean())
    if station is None:
        grads = gradient_norms(model, x, y, cfg.effective_lam, cfg.loss)
        probe = escape_probe(model, x, y, cfg)[0] if completed else None
        station = stationarity(cfg, history, grads, epochs_done, stalled, probe)
    b = model.classifier.bias
    return RunResult(
        config=cfg,
        objective=final["objective"],
        fit=final["fit"],
        classifier_penalty=final["classifier_penalty"],
        body_penalty=final["body_penalty"],
        embedding_penalty=final["embedding_penalty"],
        train_acc=final["train_acc"],
        test_acc=test_acc,
        features=final["features"].cpu().numpy(),
        labels=y.cpu().numpy(),
        W=model.classifier.weight.detach().double().cpu().numpy(),
        b=None if b is None else b.detach().double().cpu().numpy(),
        history=history,
        decayed=[name for name, _ in model.decayed_parameters()],
        stationarity=station,
        wall_time_s=wall_time_s,
        device=str(device),
        num_params=model.num_params(),
        epochs_done=epochs_done,
        completed=completed,
        provenance=provenance(device, cfg),
        model=model,
    )


def first_order_name(config: RunConfig) -> str:
    """The first-order optimizer of a run: its own, or a full-batch run's warm-up optimizer."""
    return config.warmup_optimizer if config.full_batch else config.optimizer


def make_optimizer(
    name: str, params: Sequence[Tensor], config: RunConfig
) -> torch.optim.Optimizer:
    """The registered optimizer ``name`` over ``params`` (:data:`deepnet.optimizers.OPTIMIZERS`)."""
    return OPTIMIZERS[name].make(params, config)
