"""Training on the exact, coupled-L2 objective (THEORY §2, §9), to a point one can vouch for.

Optimizers: Adam or SGD (minibatches from a seeded ``torch.randperm`` per epoch, or full batch)
and full-batch L-BFGS in float64 with a strong-Wolfe line search (optionally after a first-order
warm-up). For L-BFGS one "epoch" is one iteration. Data live on the device as whole tensors.

Every run ends with a stationarity record (THEORY §9, :mod:`deepnet.convergence`): the float64
gradient norm at the final point, the relative decrease of J over the final window at full step
size, and an escape probe (fresh L-BFGS and float64 Adam from the final point); ``converged`` only
when all three pass. For L-BFGS ``epochs`` is a cap: the run trains in chunks, empties L-BFGS's
memory whenever its line search fails, checks the criteria at the end of each chunk, adopts the
point of a probe that lowers J, and stops once the criteria hold.

Checkpoints (model, optimizer state, step, RNG, history) are written atomically; a resumed run is
bitwise identical to an uninterrupted one on the CPU, for every optimizer. ``init="continuation"``
starts depth L from a finished shallower run padded with near-identity blocks (THEORY §10).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import CONTINUATION_SAME, RESUME_FREE, RunConfig, RunResult
from .convergence import (
    convergence_window,
    escape_probe,
    lbfgs_steps,
    lr_at,
    make_lbfgs,
    stationarity,
)
from .io import (
    CorruptCheckpointError,
    CorruptSourceError,
    depth_of_state,
    load_checkpoint,
    provenance,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
    write_result,
)
from .layers import CollapseNet
from .models import build_model
from .objective import EVAL_CHUNK, batch_objective, evaluate, gradient_norms

#: hook called at every evaluation point with (epoch, model, evaluation dict); what it returns
#: is stored in that history entry (the sweep uses it for NC metrics over training)
EvalHook = Callable[[int, CollapseNet, dict[str, Any]], dict[str, Any]]


class TrainingDivergedError(RuntimeError):
    """The objective became NaN or infinite; the last good checkpoint (if any) is kept."""


def history_entry(epoch: int, ev: dict[str, Any], phase: str, lr: float | None) -> dict[str, Any]:
    """One history entry: J and its split from an ``evaluate`` result, the phase ("lbfgs" or
    "first-order") and the lr of the steps that led there (None for L-BFGS)."""
    keys = ("objective", "fit", "classifier_penalty", "body_penalty", "embedding_penalty")
    return {
        "epoch": epoch,
        **{k: ev[k] for k in keys},
        "train_acc": ev["train_acc"],
        "phase": phase,
        "lr": lr,
    }


def load_run_data(config: RunConfig) -> Any:
    """The dataset a run of ``config`` trains on (the subset drawn with ``config.subset_seed``)."""
    from .data import load_dataset  # late import: data pulls optional readers

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


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tensors(data: Any, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    xdtype = torch.long if data.kind == "text" else dtype

    def conv(a: Any, dt: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dt, device=device)

    out = [conv(data.x_train, xdtype), conv(data.y_train, torch.long)]
    has_test = data.x_test is not None and len(data.x_test) > 0
    out += [conv(data.x_test, xdtype), conv(data.y_test, torch.long)] if has_test else [None, None]
    return tuple(out)


def train(
    config: RunConfig,
    data: Any = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    *,
    max_epochs_this_call: int | None = None,
    eval_hook: EvalHook | None = None,
) -> RunResult:
    """Train ``config`` on ``data`` (loaded from ``config.dataset`` when None).

    With ``run_dir``: resume from its checkpoint.pt when ``resume`` (the stored config must match;
    a schedule-free run may be resumed with a larger ``epochs``, which continues it), checkpoint
    every ``checkpoint_every`` epochs, and write config.json, metrics.json, checkpoint.pt and
    features.npz at the end. ``max_epochs_this_call`` stops after that many epochs of this call
    (a checkpoint is written) and returns the partial result with ``completed=False``; calling
    again resumes. ``eval_hook`` adds entries to the history at every evaluation point.
    """
    check_threads(config.num_threads)
    with _threads(config.num_threads):
        run = _Run.setup(config, data, run_dir, resume, eval_hook)
        stop_at = config.epochs
        if max_epochs_this_call is not None:
            stop_at = min(config.epochs, run.epoch + max(0, int(max_epochs_this_call)))
        run.loop(stop_at, progress)
        return run.finish()


@dataclass
class _Run:
    """The state of one run while it trains (built by :meth:`setup`)."""

    config: RunConfig
    data: Any
    device: torch.device
    model: CollapseNet
    x: Tensor
    y: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    run_path: Path | None
    eval_hook: EvalHook | None
    t0: float = field(default_factory=time.perf_counter)
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_before: float = 0.0
    #: L-BFGS's line search could make no progress even with empty memory
    stalled: bool = False
    #: training is over before the cap: the criteria hold (until_converged), or a hard stall
    #: that no probe could leave
    finished: bool = False
    #: L-BFGS's memory is empty (just created or reset): a failed line search is then a stall
    fresh: bool = True
    resets: int = 0
    escape_steps: int = 0
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: the stationarity record of the current point, when the last check was taken there
    current: dict[str, Any] | None = None
    last_eval: dict[int, dict[str, Any]] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- setup

    @classmethod
    def setup(
        cls,
        config: RunConfig,
        data: Any,
        run_dir: str | Path | None,
        resume: bool,
        eval_hook: EvalHook | None,
    ) -> _Run:
        t0 = time.perf_counter()
        if data is None:
            data = load_run_data(config)
        device = resolve_device(config.device)
        dtype = getattr(torch, config.torch_dtype_name)
        torch.manual_seed(config.seed)
        model = build_model(config, data).to(device=device, dtype=dtype)
        x, y, x_test, y_test = _tensors(data, device, dtype)
        if len(y) != len(x):
            raise ValueError(f"x_train has {len(x)} samples but y_train has {len(y)}")
        if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
            raise ValueError(f"labels must lie in [0, {data.num_classes})")
        run = cls(
            config=config,
            data=data,
            device=device,
            model=model,
            x=x,
            y=y,
            x_test=x_test,
            y_test=y_test,
            run_path=None if run_dir is None else Path(run_dir),
            eval_hook=eval_hook,
            t0=t0,
        )
        run._make_optimizers()
        ckpt = run._read_checkpoint() if resume else None
        if ckpt is not None:
            run._restore(ckpt)
        elif config.init == "continuation":
            _continue_from(config, model, run.run_path)
        if run.run_path is not None:
            write_json(run.run_path / "config.json", config.to_dict())
            if not run.completed:  # results of an earlier run in this folder are stale
                for stale in ("metrics.json", "features.npz"):
                    (run.run_path / stale).unlink(missing_ok=True)
        return run

    def _make_optimizers(self) -> None:
        cfg = self.config
        params = list(self.model.parameters())
        self.decayed = [p for _, p in self.model.decayed_parameters()]
        n = len(self.x)
        self.batch = n if cfg.batch_size is None else min(cfg.batch_size, n)
        self.steps_per_epoch = math.ceil(n / self.batch)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        first = cfg.warmup_optimizer if cfg.optimizer == "lbfgs" else cfg.optimizer
        if first == "adam":
            self.first: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, foreach=True)
        else:
            self.first = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
        self.lbfgs = make_lbfgs(params, cfg.lbfgs_history) if cfg.optimizer == "lbfgs" else None
        self.perm_gen = torch.Generator(device=self.device)
        self.perm_gen.manual_seed(cfg.seed + 1)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        path = self.ckpt_path
        if path is None or not path.exists():
            return None
        ckpt = load_checkpoint(path)  # CorruptCheckpointError for an unreadable file
        stored, mine = ckpt["config"], self.config.to_dict()
        diff = sorted(k for k in mine if k not in RESUME_FREE and stored.get(k) != mine[k])
        if "epochs" in diff and self.config.schedule_free:
            used = int(ckpt["epoch"]) + int(ckpt.get("escape_steps", 0))
            if used > self.config.epochs:
                raise ValueError(
                    f"{self.run_path} holds a run that already used {used} epochs/iterations, "
                    f"more than epochs={self.config.epochs}; use another folder or resume=False"
                )
            diff.remove("epochs")  # no schedule depends on it: a larger budget continues the run
        if diff:
            raise ValueError(
                f"{self.run_path} holds a run with a different config (fields {diff}); "
                "use another folder or resume=False"
            )
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        opt = ckpt["optimizer"]
        if opt.get("first") is not None:
            self.first.load_state_dict(opt["first"])
        if self.lbfgs is not None and opt.get("lbfgs") is not None:
            self.lbfgs.load_state_dict(opt["lbfgs"])
        set_rng_state(self.perm_gen, ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        loop = ckpt.get("loop", {})
        self.stalled = bool(loop.get("stalled", False))
        self.finished = bool(loop.get("finished", False))
        self.fresh = bool(loop.get("fresh", opt.get("lbfgs") is None))
        self.resets = int(loop.get("resets", 0))
        self.escape_steps = int(loop.get("escape_steps", 0))
        self.checks = list(loop.get("checks", []))
        self.current = loop.get("current")
        stored_cap = int(ckpt["config"].get("epochs", self.config.epochs))
        ended_at_cap = self.epoch + self.escape_steps >= stored_cap
        if self.finished and not self.stalled and (
            not self.config.until_converged or (ended_at_cap and self.config.epochs > stored_cap)
        ):
            # a run resumed with until_converged=False trains on; so does a run whose check at
            # its old cap passed, when the cap grows: that check was a record, not a stop
            self.finished = False
        if self.config.epochs > stored_cap and ended_at_cap:
            self.current = None

    @property
    def ckpt_path(self) -> Path | None:
        return None if self.run_path is None else self.run_path / "checkpoint.pt"

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        state = {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "escape_steps": self.escape_steps,
            "model": self.model.state_dict(),
            "optimizer": {
                "first": self.first.state_dict(),
                "lbfgs": None if self.lbfgs is None else self.lbfgs.state_dict(),
            },
            "rng": rng_state(self.perm_gen),
            "history": self.history,
            "wall_time_s": self.wall_before + time.perf_counter() - self.t0,
            "loop": {
                "stalled": self.stalled,
                "finished": self.finished,
                "fresh": self.fresh,
                "resets": self.resets,
                "escape_steps": self.escape_steps,
                "checks": self.checks,
                "current": self.current,
            },
        }
        save_checkpoint(self.ckpt_path, state)

    # ---------------------------------------------------------------------------------- loop

    @property
    def lam(self) -> float:
        return self.config.effective_lam

    @property
    def budget_left(self) -> int:
        """Epochs/iterations left under the cap (adopted probe steps count against it)."""
        return self.config.epochs - self.epoch - self.escape_steps

    def _lbfgs_phase(self, epoch: int) -> bool:
        return self.lbfgs is not None and epoch >= self.config.warmup_epochs

    def _chunk_end(self, e: int) -> bool:
        """Whether L-BFGS iteration ``e`` ends a chunk (a convergence check follows)."""
        start = self.config.warmup_epochs
        return self.lbfgs is not None and e > start and (e - start) % self.config.chunk == 0

    def _window_starts(self) -> set[int]:
        """The epochs J must be recorded at for the window tests: w before each chunk end
        (L-BFGS) or before the end of the budget (first-order)."""
        cfg, w = self.config, convergence_window(self.config)
        if self.lbfgs is None:
            return {cfg.epochs - w}
        ends = set(range(cfg.warmup_epochs + cfg.chunk, cfg.epochs + 1, cfg.chunk))
        return {c - w for c in ends | {cfg.epochs}}

    def _lr(self, epoch: int) -> float | None:
        """The first-order lr in force at the start of ``epoch`` (None in the L-BFGS phase)."""
        if self._lbfgs_phase(epoch):
            return None
        if self.lbfgs is not None:  # warm-up: constant lr
            return self.config.lr
        step = min(epoch * self.steps_per_epoch, self.total_steps)
        return lr_at(self.config, step, self.total_steps)

    def must_eval(self, e: int) -> bool:
        return (
            e % self.config.eval_every == 0
            or e == self.config.epochs
            or self._chunk_end(e)
            or e in self._window_starts()
        )

    def _next_boundary(self, stop_at: int) -> int:
        """The next epoch at which something happens: an evaluation, a checkpoint, the start of
        a convergence window, the end of a chunk or of the warm-up, or the end of this call."""
        cfg, e = self.config, self.epoch
        marks = [
            (e // cfg.eval_every + 1) * cfg.eval_every,
            (e // cfg.checkpoint_every + 1) * cfg.checkpoint_every,
            stop_at,
            e + max(self.budget_left, 1),
        ]
        marks += [m for m in (*self._window_starts(), cfg.warmup_epochs) if m > e]
        if self._lbfgs_phase(e):
            start = cfg.warmup_epochs
            marks.append(start + ((e - start) // cfg.chunk + 1) * cfg.chunk)
        return min(marks)

    def _diverged(self, where: str) -> TrainingDivergedError:
        lr = "" if self._lbfgs_phase(self.epoch) else f" (lr={self.config.lr})"
        if self.ckpt_path is not None and self.ckpt_path.exists():
            kept = f"the last good checkpoint is kept at {self.ckpt_path}"
        elif self.ckpt_path is not None:
            kept = "no checkpoint had been written yet"
        else:
            kept = "no run_dir given"
        return TrainingDivergedError(f"{where}{lr}; {kept}")

    def record(self, at_epoch: int, phase: str | None = None) -> dict[str, Any]:
        ev = evaluate(self.model, self.x, self.y, self.lam, self.config.loss)
        if not math.isfinite(ev["objective"]):
            raise self._diverged(f"objective is {ev['objective']} at epoch {at_epoch}")
        before = max(at_epoch - 1, 0)
        if phase is None:
            phase = "lbfgs" if self._lbfgs_phase(before) else "first-order"
        entry = history_entry(at_epoch, ev, phase, self._lr(before))
        if self.eval_hook is not None:
            entry.update(self.eval_hook(at_epoch, self.model, ev))
        last = self.history[-1] if self.history else None
        if last is None or last["epoch"] != at_epoch or phase == "escape":
            self.history.append(entry)
        self.last_eval = {at_epoch: ev}  # keep one (features are N×d)
        return ev

    def _first_order_epoch(self, bad: Tensor) -> Tensor:
        cfg, model, opt = self.config, self.model, self.first
        full = self.batch == len(self.x)
        order = (
            None
            if full
            else torch.randperm(len(self.x), generator=self.perm_gen, device=self.device)
        )
        lr = self._lr(self.epoch)
        for s in range(self.steps_per_epoch):
            if full:
                xb, yb = self.x, self.y
            else:
                assert order is not None
                idx = order[s * self.batch : (s + 1) * self.batch]
                xb, yb = self.x[idx], self.y[idx]
            if self.lbfgs is None:
                lr = lr_at(cfg, self.epoch * self.steps_per_epoch + s, self.total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = batch_objective(model, xb, yb, self.lam, cfg.loss, self.decayed)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # no sync per step (GPU): fold finiteness into a device flag, checked at boundaries
            bad = bad | ~torch.isfinite(loss.detach())
        return bad

    def _objective(self) -> Tensor:
        return batch_objective(self.model, self.x, self.y, self.lam, self.config.loss, self.decayed)

    def _lbfgs_chunk(self, n: int) -> int:
        """Run up to ``n`` L-BFGS iterations; returns how many ran. When the line search fails
        (fewer than ``n``), L-BFGS's memory is emptied; if it was already empty and J did not
        fall, the run has stalled (``self.stalled``)."""
        opt = self.lbfgs
        assert opt is not None

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=False)
            J = self._objective()
            J.backward()
            return J

        was_fresh = self.fresh
        done, start_loss = lbfgs_steps(opt, closure, n)
        if not math.isfinite(float(start_loss.detach())):
            raise self._diverged(
                f"non-finite objective in L-BFGS before iteration {self.epoch + n}"
            )
        # the trajectory does not depend on how iterations are grouped into step calls: each
        # call re-evaluates J at the current point, which the state already determines
        if done < n:
            with torch.no_grad():
                fell = float(self._objective()) < float(start_loss)
            self.stalled = was_fresh and not fell
            opt.state.clear()  # a stale quasi-Newton model: start again from -∇J
            self.fresh = True
            self.resets += 1
        elif done > 0:
            self.fresh = False
        return done

    def _check(self) -> None:
        """The convergence check at the end of a chunk, a stall or the cap (THEORY §9): the
        gradient and window tests, and the escape probe once those pass (or when the run can
        go no further). The run stops when the criteria hold (``until_converged``); a probe
        that lowers J by more than escape_tol (after a stall: at all) hands the run its point,
        with empty L-BFGS memory; a stall that no probe can leave ends the run."""
        cfg = self.config
        grads = gradient_norms(self.model, self.x, self.y, self.lam, cfg.loss)
        rec = stationarity(cfg, self.history, grads, self.epoch, self.stalled, None)
        others = [r for r in rec["reasons"] if r != "no escape probe was run"]
        at_end = self.budget_left <= 0
        probe, state = None, None
        if not others or self.stalled or at_end:
            probe, state = escape_probe(self.model, self.x, self.y, cfg)
            rec = stationarity(cfg, self.history, grads, self.epoch, self.stalled, probe)
        self.checks.append(
            {
                "epoch": self.epoch,
                "escape_steps_before": self.escape_steps,
                "objective": rec["final_objective"],
                "grad_norm": rec["grad_norm"],
                "rel_change": rec["rel_change"],
                "escape_rel": rec["escape_rel"],
                "escape_by": None if probe is None else probe["escape_by"],
                "stalled": self.stalled,
                "converged": rec["converged"],
            }
        )
        self.current = rec
        if rec["converged"]:
            if cfg.until_converged:
                self.finished = True
            return
        # a probe's point is adopted when it lowers J by more than the tolerance, and after a
        # stall when it lowers J at all (nothing else can move the run)
        # (at the cap the check is a record: the run ends where its budget ended)
        threshold = 0.0 if self.stalled else cfg.escape_tol
        if at_end:
            return
        if probe is not None and state is not None and probe["escape_rel"] > threshold:
            with torch.no_grad():
                for name, value in state.items():
                    self.model.state_dict()[name].copy_(value)
            self.escape_steps += int(probe["escape_steps"])
            assert self.lbfgs is not None
            self.lbfgs.state.clear()
            self.fresh, self.stalled, self.current = True, False, None
            self.record(self.epoch, phase="escape")
        elif self.stalled:
            self.finished = True  # neither L-BFGS nor a probe can lower J from here

    def loop(self, stop_at: int, progress: bool) -> None:
        if self.epoch == 0 and not self.history:
            self.record(0)
        bar = None
        if progress and stop_at > self.epoch and not self.completed:
            from tqdm import tqdm  # plain tqdm: works in terminals, logs and notebooks alike

            bar = tqdm(
                total=self.config.epochs,
                initial=self.epoch + self.escape_steps,
                desc=f"{self.config.arch} L={self.config.depth} seed={self.config.seed}",
                mininterval=0.5,
            )
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        try:
            while self.epoch < stop_at and self.budget_left > 0 and not self.finished:
                target = min(self._next_boundary(stop_at), self.epoch + self.budget_left)
                before, used = self.epoch, self.escape_steps
                if self._lbfgs_phase(self.epoch):
                    self.epoch += self._lbfgs_chunk(target - self.epoch)
                else:
                    while self.epoch < target:
                        bad = self._first_order_epoch(bad)
                        self.epoch += 1
                # sync point: never write a checkpoint, or a history entry, past a bad step
                if bool(bad) or not all(
                    bool(torch.isfinite(p).all()) for p in self.model.parameters()
                ):
                    raise self._diverged(f"non-finite training loss before epoch {self.epoch}")
                if self.epoch != before:
                    self.current = None
                if self.must_eval(self.epoch) or self.stalled:
                    ev = self.record(self.epoch)
                    if bar is not None:
                        bar.set_postfix(J=f"{ev['objective']:.6g}", acc=f"{ev['train_acc']:.3f}")
                if self._lbfgs_phase(max(self.epoch - 1, 0)) and (
                    self._chunk_end(self.epoch) or self.stalled or self.budget_left <= 0
                ) and self.current is None:
                    self._check()
                if (
                    self.epoch % self.config.checkpoint_every == 0
                    or self.epoch == stop_at
                    or self.completed
                    or self.escape_steps != used
                ):
                    self.save()
                if bar is not None:
                    bar.update(self.epoch + self.escape_steps - before - used)
        finally:
            if bar is not None:
                bar.close()

    # -------------------------------------------------------------------------------- finish

    @property
    def completed(self) -> bool:
        return self.finished or self.budget_left <= 0

    def finish(self) -> RunResult:
        cfg, model = self.config, self.model
        final = self.last_eval.get(self.epoch) or evaluate(
            model, self.x, self.y, self.lam, cfg.loss
        )
        if not math.isfinite(final["objective"]):
            raise self._diverged(f"objective is {final['objective']} at epoch {self.epoch}")
        if self.completed and (not self.history or self.history[-1]["epoch"] != self.epoch):
            self.record(self.epoch)
        station = self.current
        if station is None and self.completed:
            grads = gradient_norms(model, self.x, self.y, self.lam, cfg.loss)
            probe, _ = escape_probe(model, self.x, self.y, cfg)
            station = stationarity(cfg, self.history, grads, self.epoch, self.stalled, probe)
            self.current = station
            self.save()
        result = make_result(
            cfg,
            model,
            final,
            (self.x, self.y, self.x_test, self.y_test),
            self.history,
            self.epoch,
            stalled=self.stalled,
            completed=self.completed,
            wall_time_s=self.wall_before + time.perf_counter() - self.t0,
            device=self.device,
            station=station,
        )
        result.escape_steps = self.escape_steps
        result.lbfgs_resets = self.resets
        result.checks = list(self.checks)
        if self.run_path is not None and self.completed:
            write_result(self.run_path, result)
        return result


def make_result(
    cfg: RunConfig,
    model: CollapseNet,
    final: dict[str, Any],
    tensors: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    history: list[dict[str, Any]],
    epochs_done: int,
    *,
    stalled: bool,
    completed: bool,
    wall_time_s: float,
    device: torch.device,
    station: dict[str, Any] | None = None,
) -> RunResult:
    """The RunResult of a trained model: ``final`` is its last evaluation (``evaluate``); the
    test accuracy, the float64 gradient norms, the stationarity record (``station`` when the
    caller has it for this point; else computed here, with an escape probe when ``completed``)
    and the provenance are computed here. The model rides along in memory (``result.model``)."""
    x, y, x_test, y_test = tensors
    test_acc = None
    if x_test is not None:
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
        test_acc = float((pred == y_test).double().mean())
    if station is None:
        grads = gradient_norms(model, x, y, cfg.effective_lam, cfg.loss)
        probe = escape_probe(model, x, y, cfg)[0] if completed else None
        station = stationarity(cfg, history, grads, epochs_done, stalled, probe)
    b = model.classifier.bias
    result = RunResult(
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
    )
    result.model = model  # type: ignore[attr-defined]  # in memory only, for measurements
    return result


def _continue_from(config: RunConfig, model: CollapseNet, run_path: Path | None) -> None:
    """Start ``model`` (depth L) from the finished shallower run in ``config.init_from`` (a
    relative path is relative to this run's folder, or, when no run is there, to the working
    directory): its embedding, blocks and classifier are copied, blocks L'..L−1 start near the
    identity.

    What is continued is read from the source's checkpoint, never from its config.json: the depth
    from its tensors (and its stored config), the model and data fields from its stored config.
    A config.json that disagrees with the checkpoint (an edited folder), a source of another
    model or data, or tensors that do not fit this model are refused with one line; a missing or
    unreadable checkpoint raises :class:`CorruptSourceError` (a sweep then redoes that run).
    """
    src = Path(config.init_from) if config.init_from else None
    if src is not None and not src.is_absolute() and run_path is not None:
        near = Path(os.path.normpath(run_path / src))  # lexical: run_path need not exist yet
        # relative to this run's folder (how sweeps record it), else to the working directory
        src = near if (near / "metrics.json").exists() or not (src / "metrics.json").exists() \
            else src
    if src is None or not (src / "metrics.json").exists():
        raise ValueError(
            "init='continuation' needs a finished shallower run in init_from (a run folder with "
            f"metrics.json and checkpoint.pt); got {config.init_from!r}"
        )
    if not (src / "checkpoint.pt").exists():
        raise CorruptSourceError(src, f"cannot continue from {src}: it has no checkpoint.pt")
    try:
        ckpt = load_checkpoint(src / "checkpoint.pt")
        src_cfg = RunConfig.from_dict(dict(ckpt["config"]))
    except CorruptCheckpointError as err:
        raise CorruptSourceError(src, f"cannot continue from {src}: {err}") from err
    except (TypeError, ValueError) as err:  # a stored config this version cannot read
        raise CorruptSourceError(
            src, f"cannot continue from {src}: its checkpoint's config is unreadable ({err})"
        ) from err
    state = ckpt["model"]
    held = depth_of_state(state)
    if held != src_cfg.depth:
        raise CorruptSourceError(
            src,
            f"cannot continue from {src}: its checkpoint holds {held} blocks but says depth "
            f"{src_cfg.depth}",
        )
    _check_config_json(src, src_cfg)
    if src_cfg.depth >= config.depth:
        raise ValueError(
            f"continuation must start from a shallower run: {src} has depth {src_cfg.depth}, "
            f"this run has depth {config.depth}"
        )
    diff = [k for k in CONTINUATION_SAME if getattr(src_cfg, k) != getattr(config, k)]
    if src_cfg.subset_seed != config.subset_seed:
        diff.append("data_seed")
    if diff:
        raise ValueError(f"{src} is a run of another model or data (fields {diff})")
    merged = model.state_dict()
    # exactly the parameters of this model up to the source's depth, with the same shapes
    expected = {k for k in merged if not (k.startswith("blocks.") and int(k.split(".")[1]) >= held)}
    unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unknown or missing:
        what = (
            f"parameters this model does not have: {unknown[:3]}"
            if unknown
            else (f"none of {missing[:3]}")
        )
        raise ValueError(f"{src} holds {what}; it is not a shallower run of this model")
    bad = [k for k in state if tuple(state[k].shape) != tuple(merged[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{src} does not fit this model: {k} has shape {tuple(state[k].shape)} there, "
            f"{tuple(merged[k].shape)} here"
        )
    merged.update({k: v.to(merged[k].dtype) for k, v in state.items()})
    model.load_state_dict(merged)
    model.pad_init(held, config.pad_scale)


def _check_config_json(run_dir: Path, stored: RunConfig) -> None:
    """Refuse a run folder whose config.json disagrees with the config stored in its checkpoint
    (beyond the fields a resumption may change): the folder was edited, and neither can be
    trusted to say what the other holds. A folder without config.json is judged by its
    checkpoint alone."""
    import json

    path = run_dir / "config.json"
    if not path.exists():
        return
    try:
        written = RunConfig.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable run config ({err}): the folder was edited or damaged; "
            "restore config.json or delete the run"
        ) from None
    theirs = stored.to_dict()
    diff = [k for k in theirs if k not in RESUME_FREE and written.get(k) != theirs[k]]
    if diff:
        k, more = diff[0], f"; also {diff[1:]}" if diff[1:] else ""
        raise ValueError(
            f"{path} disagrees with the checkpoint beside it ({k}: {written.get(k)!r} in "
            f"config.json, {theirs[k]!r} in checkpoint.pt{more}): the folder was edited; "
            "restore config.json or delete the run"
        )


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
