"""Training on the exact, coupled-L2 objective (THEORY §2, §9), to a point one can vouch for.

Optimizers come from the registry (:mod:`deepnet.optimizers`): first-order ones (Adam, SGD:
minibatches from a seeded ``torch.randperm`` per epoch, or full batch) and full-batch float64
ones (L-BFGS with a strong-Wolfe line search, Newton-TR; optionally after a first-order warm-up),
for which one "epoch" is one iteration. Data live on the device as whole tensors.

Every run ends with a stationarity record (THEORY §9, :mod:`deepnet.convergence`): the float64
gradient norm at the final point, the relative decrease of J over the final window at full step
size, and an escape probe (fresh L-BFGS and float64 Adam from the final point); ``converged`` only
when all three pass. For a full-batch optimizer ``epochs`` is a cap: the run trains in chunks,
empties the optimizer's state whenever it can make no progress (L-BFGS: a failed line search),
checks the criteria at the end of each chunk, adopts the point of a probe that lowers J, and
stops once the criteria hold. The schedule, history, checkpoint layout and result are those of
:mod:`deepnet.runstate`, shared with :mod:`deepnet.batched`.

Checkpoints (model, optimizer state, step, RNG, history) are written atomically; a resumed run is
bitwise identical to an uninterrupted one on the CPU, for every optimizer. ``init="continuation"``
starts depth L from a finished shallower run padded with near-identity blocks (THEORY §10).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .config import RESUME_FREE, RunConfig, RunResult
from .continuation import continue_from
from .convergence import escape_probe, stationarity
from .io import load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json, write_result
from .layers import CollapseNet
from .models import build_model
from .objective import batch_objective, evaluate, gradient_norms
from .optimizers import OPTIMIZERS, OptimizerSpec
from .runstate import (
    EvalHook,
    RunState,
    Schedule,
    TrainingDivergedError,
    check_threads,
    first_order_name,
    history_entry,
    load_run_data,
    make_optimizer,
    make_result,
    progress_bar,
    resolve_device,
    threads,
    to_tensors,
)

if TYPE_CHECKING:
    from .data import Dataset

__all__ = ["train"]


def train(
    config: RunConfig,
    data: Dataset | None = None,
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
    with threads(config.num_threads):
        run = _Run.setup(config, data, run_dir, resume, eval_hook)
        stop_at = config.epochs
        if max_epochs_this_call is not None:
            stop_at = min(config.epochs, run.state.epoch + max(0, int(max_epochs_this_call)))
        run.loop(stop_at, progress)
        return run.finish()


@dataclass
class _Run:
    """One run while it trains (built by :meth:`setup`): its data, model, optimizers and
    :class:`~deepnet.runstate.RunState`."""

    config: RunConfig
    data: Dataset
    device: torch.device
    model: CollapseNet
    x: Tensor
    y: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    run_path: Path | None
    eval_hook: EvalHook | None
    schedule: Schedule
    #: the first-order optimizer (a full-batch run's warm-up) and the full-batch one, if any
    first: torch.optim.Optimizer
    full: torch.optim.Optimizer | None
    decayed: list[Tensor]
    perm_gen: torch.Generator
    t0: float = field(default_factory=time.perf_counter)
    state: RunState = field(default_factory=RunState)
    last_eval: dict[int, dict[str, Any]] = field(default_factory=dict)

    # ---------------------------------------------------------------------------------- setup

    @classmethod
    def setup(
        cls,
        config: RunConfig,
        data: Dataset | None,
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
        x, y, x_test, y_test = to_tensors(data, device, dtype)
        params = list(model.parameters())
        perm_gen = torch.Generator(device=device)
        perm_gen.manual_seed(config.seed + 1)
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
            schedule=Schedule.of(config, len(x)),
            first=make_optimizer(first_order_name(config), params, config),
            full=make_optimizer(config.optimizer, params, config) if config.full_batch else None,
            decayed=[p for _, p in model.decayed_parameters()],
            perm_gen=perm_gen,
            t0=t0,
        )
        ckpt = run._read_checkpoint() if resume else None
        if ckpt is not None:
            run._restore(ckpt)
        elif config.init == "continuation":
            continue_from(config, model, run.run_path)
        if run.run_path is not None:
            write_json(run.run_path / "config.json", config.to_dict())
            if not run.completed:  # results of an earlier run in this folder are stale
                for stale in ("metrics.json", "features.npz"):
                    (run.run_path / stale).unlink(missing_ok=True)
        return run

    @property
    def spec(self) -> OptimizerSpec:
        return OPTIMIZERS[self.config.optimizer]

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
        if self.full is not None and opt.get(self.config.optimizer) is not None:
            self.full.load_state_dict(opt[self.config.optimizer])
        set_rng_state(self.perm_gen, ckpt["rng"])
        self.state = RunState.restore(ckpt, self.config)

    @property
    def ckpt_path(self) -> Path | None:
        return None if self.run_path is None else self.run_path / "checkpoint.pt"

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        optimizers: dict[str, Any] = {"first": self.first.state_dict()}
        if self.full is not None:
            optimizers[self.config.optimizer] = self.full.state_dict()
        wall = self.state.wall_before + time.perf_counter() - self.t0
        save_checkpoint(
            self.ckpt_path,
            self.state.checkpoint(
                self.config, self.model.state_dict(), optimizers, rng_state(self.perm_gen), wall
            ),
        )

    # ---------------------------------------------------------------------------------- loop

    @property
    def lam(self) -> float:
        return self.config.effective_lam

    @property
    def budget_left(self) -> int:
        """Epochs/iterations left under the cap (adopted probe steps count against it)."""
        return self.config.epochs - self.state.epoch - self.state.escape_steps

    def _diverged(self, where: str) -> TrainingDivergedError:
        lr = "" if self.schedule.full_phase(self.state.epoch) else f" (lr={self.config.lr})"
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
        entry = history_entry(
            at_epoch, ev, phase or self.schedule.phase(before), self.schedule.lr(before)
        )
        if self.eval_hook is not None:
            entry.update(self.eval_hook(at_epoch, self.model, ev))
        self.state.add_entry(entry, always=phase == "escape")
        self.last_eval = {at_epoch: ev}  # keep one (features are N×d)
        return ev

    def _first_order_epoch(self, bad: Tensor) -> Tensor:
        cfg, model, opt, sched = self.config, self.model, self.first, self.schedule
        epoch = self.state.epoch
        full = sched.batch == len(self.x)
        order = (
            None
            if full
            else torch.randperm(len(self.x), generator=self.perm_gen, device=self.device)
        )
        lr = sched.lr(epoch)
        for s in range(sched.steps_per_epoch):
            if full:
                xb, yb = self.x, self.y
            else:
                assert order is not None
                idx = order[s * sched.batch : (s + 1) * sched.batch]
                xb, yb = self.x[idx], self.y[idx]
            if self.full is None:
                lr = sched.step_lr(epoch, s)
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

    def _full_chunk(self, n: int) -> int:
        """Run up to ``n`` iterations of the full-batch optimizer; returns how many ran. When it
        stops short (L-BFGS: its line search failed), its state is emptied; if it was already
        empty and J did not fall, the run has stalled (``state.stalled``)."""
        opt, st = self.full, self.state
        assert opt is not None and self.spec.iterate is not None
        was_fresh = st.fresh
        done, start_loss = self.spec.iterate(opt, self._objective, n)
        if not math.isfinite(float(start_loss.detach())):
            raise self._diverged(
                f"non-finite objective in {self.spec.label} before iteration {st.epoch + n}"
            )
        if done < n:
            with torch.no_grad():
                fell = float(self._objective()) < float(start_loss)
            st.stalled = was_fresh and not fell
            opt.state.clear()  # a stale model of J: start again from -∇J
            st.fresh = True
            st.resets += 1
        elif done > 0:
            st.fresh = False
        return done

    def _check(self) -> None:
        """The convergence check at the end of a chunk, a stall or the cap (THEORY §9): the
        gradient and window tests, and the escape probe once those pass (or when the run can
        go no further). The run stops when the criteria hold (``until_converged``); a probe
        that lowers J by more than escape_tol (after a stall: at all) hands the run its point,
        with an empty optimizer state; a stall that no probe can leave ends the run."""
        cfg, st = self.config, self.state
        grads = gradient_norms(self.model, self.x, self.y, self.lam, cfg.loss)
        rec = stationarity(cfg, st.history, grads, st.epoch, st.stalled, None)
        others = [r for r in rec.reasons if r != "no escape probe was run"]
        at_end = self.budget_left <= 0
        probe, point = None, None
        if not others or st.stalled or at_end:
            probe, point = escape_probe(self.model, self.x, self.y, cfg)
            rec = stationarity(cfg, st.history, grads, st.epoch, st.stalled, probe)
        st.checks.append(
            {
                "epoch": st.epoch,
                "escape_steps_before": st.escape_steps,
                "objective": rec.final_objective,
                "grad_norm": rec.grad_norm,
                "rel_change": rec.rel_change,
                "escape_rel": rec.escape_rel,
                "escape_by": None if probe is None else probe["escape_by"],
                "stalled": st.stalled,
                "converged": rec.converged,
            }
        )
        st.current = rec
        if rec.converged:
            if cfg.until_converged:
                st.finished = True
            return
        # a probe's point is adopted when it lowers J by more than the tolerance, and after a
        # stall when it lowers J at all (nothing else can move the run)
        # (at the cap the check is a record: the run ends where its budget ended)
        threshold = 0.0 if st.stalled else cfg.escape_tol
        if at_end:
            return
        if probe is not None and point is not None and probe["escape_rel"] > threshold:
            with torch.no_grad():
                for name, value in point.items():
                    self.model.state_dict()[name].copy_(value)
            st.escape_steps += int(probe["escape_steps"])
            assert self.full is not None
            self.full.state.clear()
            st.fresh, st.stalled, st.current = True, False, None
            self.record(st.epoch, phase="escape")
        elif st.stalled:
            st.finished = True  # neither the optimizer nor a probe can lower J from here

    def loop(self, stop_at: int, progress: bool) -> None:
        st, sched = self.state, self.schedule
        if st.epoch == 0 and not st.history:
            self.record(0)
        bar = None
        if progress and stop_at > st.epoch and not self.completed:
            cfg = self.config
            bar = progress_bar(
                cfg.epochs, st.epoch + st.escape_steps, f"{cfg.arch} L={cfg.depth} seed={cfg.seed}"
            )
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        try:
            while st.epoch < stop_at and self.budget_left > 0 and not st.finished:
                target = min(
                    sched.next_boundary(st.epoch, stop_at, self.budget_left),
                    st.epoch + self.budget_left,
                )
                before, used = st.epoch, st.escape_steps
                if sched.full_phase(st.epoch):
                    st.epoch += self._full_chunk(target - st.epoch)
                else:
                    while st.epoch < target:
                        bad = self._first_order_epoch(bad)
                        st.epoch += 1
                # sync point: never write a checkpoint, or a history entry, past a bad step
                if bool(bad) or not all(
                    bool(torch.isfinite(p).all()) for p in self.model.parameters()
                ):
                    raise self._diverged(f"non-finite training loss before epoch {st.epoch}")
                if st.epoch != before:
                    st.current = None
                if sched.must_eval(st.epoch) or st.stalled:
                    ev = self.record(st.epoch)
                    if bar is not None:
                        bar.set_postfix(J=f"{ev['objective']:.6g}", acc=f"{ev['train_acc']:.3f}")
                if sched.full_phase(max(st.epoch - 1, 0)) and (
                    sched.chunk_end(st.epoch) or st.stalled or self.budget_left <= 0
                ) and st.current is None:
                    self._check()
                if (
                    st.epoch % self.config.checkpoint_every == 0
                    or st.epoch == stop_at
                    or self.completed
                    or st.escape_steps != used
                ):
                    self.save()
                if bar is not None:
                    bar.update(st.epoch + st.escape_steps - before - used)
        finally:
            if bar is not None:
                bar.close()

    # -------------------------------------------------------------------------------- finish

    @property
    def completed(self) -> bool:
        return self.state.finished or self.budget_left <= 0

    def finish(self) -> RunResult:
        cfg, model, st = self.config, self.model, self.state
        final = self.last_eval.get(st.epoch) or evaluate(
            model, self.x, self.y, self.lam, cfg.loss
        )
        if not math.isfinite(final["objective"]):
            raise self._diverged(f"objective is {final['objective']} at epoch {st.epoch}")
        if self.completed and (not st.history or st.history[-1]["epoch"] != st.epoch):
            self.record(st.epoch)
        station = st.current
        if station is None and self.completed:
            grads = gradient_norms(model, self.x, self.y, self.lam, cfg.loss)
            probe, _ = escape_probe(model, self.x, self.y, cfg)
            station = stationarity(cfg, st.history, grads, st.epoch, st.stalled, probe)
            st.current = station
            self.save()
        result = make_result(
            cfg,
            model,
            final,
            (self.x, self.y, self.x_test, self.y_test),
            st.history,
            st.epoch,
            stalled=st.stalled,
            completed=self.completed,
            wall_time_s=st.wall_before + time.perf_counter() - self.t0,
            device=self.device,
            station=station,
        )
        result.escape_steps = st.escape_steps
        result.lbfgs_resets = st.resets
        result.checks = list(st.checks)
        if self.run_path is not None and self.completed:
            write_result(self.run_path, result)
        return result
