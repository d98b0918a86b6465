"""Training on the exact, coupled-L2 objective (THEORY §2, §9), to a point one can vouch for.

Optimizers: Adam or SGD (minibatches from a seeded ``torch.randperm`` per epoch, or full batch)
and full-batch L-BFGS in float64 with a strong-Wolfe line search (optionally after a first-order
warm-up). For L-BFGS one "epoch" is one iteration. Data live on the device as whole tensors.

Every run ends with a stationarity record (THEORY §9): the float64 gradient norm at the final
point and the relative decrease of J over the final window of the budget at full step size, and
``converged`` only when both are below their tolerances (criteria that can fail: an annealed
learning rate makes the window test fail instead of passing trivially).

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
from .io import (
    CorruptCheckpointError,
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

#: the first-order window test needs the learning rate over the window to stay at least this
#: fraction of its peak ("full step size", THEORY §9); cosine-to-zero fails it by design
FULL_STEP_FRACTION = 0.5
#: line-search evaluations allowed per L-BFGS iteration (torch's strong-Wolfe uses at most 25)
MAX_EVALS_PER_ITER = 25

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


def lr_at(config: RunConfig, step: int, total_steps: int) -> float:
    """First-order learning rate at step ``step`` (0-based): cosine from lr to 0, or constant."""
    if config.lr_schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))


def convergence_window(config: RunConfig) -> int:
    """Iterations/epochs of the final window the relative-change test looks at (≥ 1)."""
    return max(1, round(config.conv_window * config.epochs))


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
    stalled: bool = False
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
            if run.epoch < config.epochs:  # results of an earlier run in this folder are stale
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
        self.lbfgs = None
        if cfg.optimizer == "lbfgs":
            # tolerances 0: stopping is ours (budget, stall), never torch's silent early exit
            self.lbfgs = torch.optim.LBFGS(
                params,
                lr=1.0,
                max_iter=1,
                history_size=cfg.lbfgs_history,
                tolerance_grad=0.0,
                tolerance_change=0.0,
                line_search_fn="strong_wolfe",
            )
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
            if int(ckpt["epoch"]) > self.config.epochs:
                raise ValueError(
                    f"{self.run_path} holds a run already trained for {ckpt['epoch']} epochs, "
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
        self.first.load_state_dict(ckpt["optimizer"]["first"])
        if self.lbfgs is not None and ckpt["optimizer"].get("lbfgs") is not None:
            self.lbfgs.load_state_dict(ckpt["optimizer"]["lbfgs"])
        set_rng_state(self.perm_gen, ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        self.stalled = bool(ckpt.get("stalled", False))

    @property
    def ckpt_path(self) -> Path | None:
        return None if self.run_path is None else self.run_path / "checkpoint.pt"

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        state = {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": {
                "first": self.first.state_dict(),
                "lbfgs": None if self.lbfgs is None else self.lbfgs.state_dict(),
            },
            "rng": rng_state(self.perm_gen),
            "history": self.history,
            "wall_time_s": self.wall_before + time.perf_counter() - self.t0,
            "stalled": self.stalled,
        }
        save_checkpoint(self.ckpt_path, state)

    # ---------------------------------------------------------------------------------- loop

    @property
    def lam(self) -> float:
        return self.config.effective_lam

    @property
    def window_start(self) -> int:
        return self.config.epochs - convergence_window(self.config)

    def _lbfgs_phase(self, epoch: int) -> bool:
        return self.lbfgs is not None and epoch >= self.config.warmup_epochs

    def _lr(self, epoch: int) -> float | None:
        """The first-order lr in force at the start of ``epoch`` (None in the L-BFGS phase)."""
        if self._lbfgs_phase(epoch):
            return None
        if self.lbfgs is not None:  # warm-up: constant lr
            return self.config.lr
        step = min(epoch * self.steps_per_epoch, self.total_steps)
        return lr_at(self.config, step, self.total_steps)

    def must_eval(self, e: int) -> bool:
        return e % self.config.eval_every == 0 or e in (self.window_start, self.config.epochs)

    def _next_boundary(self, stop_at: int) -> int:
        """The next epoch at which something happens: an evaluation, a checkpoint, the start of
        the convergence window, the end of the warm-up, or the end of this call."""
        cfg, e = self.config, self.epoch
        marks = [
            (e // cfg.eval_every + 1) * cfg.eval_every,
            (e // cfg.checkpoint_every + 1) * cfg.checkpoint_every,
            stop_at,
        ]
        marks += [m for m in (self.window_start, cfg.warmup_epochs) if m > e]
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

    def record(self, at_epoch: int) -> dict[str, Any]:
        ev = evaluate(self.model, self.x, self.y, self.lam, self.config.loss)
        if not math.isfinite(ev["objective"]):
            raise self._diverged(f"objective is {ev['objective']} at epoch {at_epoch}")
        before = max(at_epoch - 1, 0)
        phase = "lbfgs" if self._lbfgs_phase(before) else "first-order"
        entry = history_entry(at_epoch, ev, phase, self._lr(before))
        if self.eval_hook is not None:
            entry.update(self.eval_hook(at_epoch, self.model, ev))
        if not self.history or self.history[-1]["epoch"] != at_epoch:
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

    def _lbfgs_chunk(self, n: int) -> int:
        """Run up to ``n`` L-BFGS iterations in one ``step`` call; returns how many ran (fewer
        only when the line search can make no progress: the run has stalled)."""
        opt = self.lbfgs
        assert opt is not None
        group = opt.param_groups[0]
        group["max_iter"] = n
        group["max_eval"] = n * MAX_EVALS_PER_ITER + 1
        state = opt.state[group["params"][0]]
        before = int(state.get("n_iter", 0))

        def closure() -> Tensor:
            opt.zero_grad(set_to_none=False)
            J = batch_objective(
                self.model, self.x, self.y, self.lam, self.config.loss, self.decayed
            )
            J.backward()
            return J

        loss = opt.step(closure)
        if not math.isfinite(float(loss.detach())):
            raise self._diverged(
                f"non-finite objective in L-BFGS before iteration {self.epoch + n}"
            )
        # the trajectory does not depend on how iterations are grouped into step calls: each
        # call re-evaluates J at the current point, which the state already determines
        return int(opt.state[group["params"][0]].get("n_iter", 0)) - before

    def loop(self, stop_at: int, progress: bool) -> None:
        if self.epoch == 0 and not self.history:
            self.record(0)
        bar = None
        if progress and stop_at > self.epoch:
            from tqdm import tqdm  # plain tqdm: works in terminals, logs and notebooks alike

            bar = tqdm(
                total=self.config.epochs,
                initial=self.epoch,
                desc=f"{self.config.arch} L={self.config.depth} seed={self.config.seed}",
                mininterval=0.5,
            )
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.model.train()
        try:
            while self.epoch < stop_at and not self.stalled:
                target = self._next_boundary(stop_at)
                before = self.epoch
                if self._lbfgs_phase(self.epoch):
                    done = self._lbfgs_chunk(target - self.epoch)
                    self.epoch += done
                    self.stalled = self.epoch < target
                else:
                    while self.epoch < target:
                        bad = self._first_order_epoch(bad)
                        self.epoch += 1
                # sync point: never write a checkpoint, or a history entry, past a bad step
                if bool(bad) or not all(
                    bool(torch.isfinite(p).all()) for p in self.model.parameters()
                ):
                    raise self._diverged(f"non-finite training loss before epoch {self.epoch}")
                if self.must_eval(self.epoch) or self.stalled:
                    ev = self.record(self.epoch)
                    if bar is not None:
                        bar.set_postfix(J=f"{ev['objective']:.6g}", acc=f"{ev['train_acc']:.3f}")
                if (
                    self.epoch % self.config.checkpoint_every == 0
                    or self.epoch == stop_at
                    or self.stalled
                ):
                    self.save()
                if bar is not None:
                    bar.update(self.epoch - before)
        finally:
            if bar is not None:
                bar.close()

    # -------------------------------------------------------------------------------- finish

    @property
    def completed(self) -> bool:
        return self.epoch >= self.config.epochs or self.stalled

    def finish(self) -> RunResult:
        cfg, model = self.config, self.model
        final = self.last_eval.get(self.epoch) or evaluate(
            model, self.x, self.y, self.lam, cfg.loss
        )
        if not math.isfinite(final["objective"]):
            raise self._diverged(f"objective is {final['objective']} at epoch {self.epoch}")
        if self.completed and (not self.history or self.history[-1]["epoch"] != self.epoch):
            self.record(self.epoch)
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
        )
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
) -> RunResult:
    """The RunResult of a trained model: ``final`` is its last evaluation (``evaluate``); the
    test accuracy, the float64 gradient norms, the stationarity record and the provenance are
    computed here. The model rides along in memory (``result.model``) for measurements."""
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
    grads = gradient_norms(model, x, y, cfg.effective_lam, cfg.loss)
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
        stationarity=stationarity(cfg, history, grads, epochs_done, stalled),
        wall_time_s=wall_time_s,
        device=str(device),
        num_params=model.num_params(),
        epochs_done=epochs_done,
        completed=completed,
        provenance=provenance(device, cfg),
    )
    result.model = model  # type: ignore[attr-defined]  # in memory only, for measurements
    return result


def stationarity(
    config: RunConfig,
    history: list[dict[str, Any]],
    grads: dict[str, float],
    epochs_done: int,
    stalled: bool = False,
) -> dict[str, Any]:
    """The convergence record of a run (THEORY §9).

    rel_change = (J(E − w) − J(E)) / |J(E)| over the final window of w = conv_window·epochs
    epochs/iterations (the relative *decrease*; negative if J rose), taken only at full step size:
    always for L-BFGS after its warm-up, for a first-order optimizer only if its learning rate
    stayed ≥ 50% of its peak over the window (a cosine schedule annealed to 0 fails here by
    design: a small change at a tiny step says nothing about stationarity).
    converged ⇔ grad_norm ≤ grad_tol and |rel_change| ≤ rel_tol and the budget was used up;
    when L-BFGS stalled (its line search could make no further progress, possibly within the
    first window) the gradient criterion alone decides.
    """
    w = convergence_window(config)
    end = epochs_done
    start = max(end - w, 0)  # a run that stalled early: the window is the whole run
    by_epoch = {int(h["epoch"]): h for h in history}
    earlier = [e for e in by_epoch if e <= start]
    j1 = by_epoch[end]["objective"] if end in by_epoch else math.nan
    j0 = by_epoch[max(earlier)]["objective"] if earlier else math.nan
    if config.optimizer == "lbfgs":
        full_step = start >= config.warmup_epochs
        min_lr_ratio = None
    else:
        # the lr at each epoch boundary of the window (cosine is monotone within an epoch)
        lrs = [lr_at(config, e, config.epochs) / config.lr for e in range(max(start, 0), end + 1)]
        min_lr_ratio = min(lrs) if lrs else 1.0
        full_step = min_lr_ratio >= FULL_STEP_FRACTION
    rel = (j0 - j1) / abs(j1) if (full_step and math.isfinite(j0) and j1) else math.nan
    reasons = []
    if end < config.epochs and not stalled:
        reasons.append(f"budget not finished ({end} of {config.epochs})")
    if not grads["grad_norm"] <= config.grad_tol:
        reasons.append(f"gradient norm {grads['grad_norm']:.3g} > grad_tol {config.grad_tol:g}")
    if not full_step:
        if min_lr_ratio is not None:
            reasons.append(
                f"step size annealed over the final window (lr down to "
                f"{100 * min_lr_ratio:.2g}% of its peak): the change of J there proves nothing"
            )
        else:
            reasons.append("the final window reaches into the first-order warm-up")
    elif stalled:
        pass  # the line search found no decrease at all: judged by the gradient alone
    elif not abs(rel) <= config.rel_tol:
        reasons.append(
            f"J moved by {100 * rel:+.3g}% over the last {w} "
            f"{'iterations' if config.optimizer == 'lbfgs' else 'epochs'} "
            f"(rel_tol {100 * config.rel_tol:g}%)"
        )
    return {
        **grads,
        "rel_change": rel,
        "window": w,
        "window_start_objective": j0,
        "final_objective": j1,
        "full_step": bool(full_step),
        "min_lr_ratio": min_lr_ratio,
        "grad_tol": config.grad_tol,
        "rel_tol": config.rel_tol,
        "stalled": bool(stalled),
        "converged": not reasons,
        "reasons": reasons,
    }


def _continue_from(config: RunConfig, model: CollapseNet, run_path: Path | None) -> None:
    """Start ``model`` (depth L) from the finished shallower run in ``config.init_from`` (a
    relative path is relative to this run's folder, or, when no run is there, to the working
    directory): its embedding, blocks and classifier are copied, blocks L'..L−1 start near the
    identity."""
    import json

    src = Path(config.init_from) if config.init_from else None
    if src is not None and not src.is_absolute() and run_path is not None:
        near = Path(os.path.normpath(run_path / src))  # lexical: run_path need not exist yet
        # relative to this run's folder (how sweeps record it), else to the working directory
        src = near if (near / "metrics.json").exists() or not (src / "metrics.json").exists() \
            else src
    if src is None or not (src / "metrics.json").exists() or not (src / "checkpoint.pt").exists():
        raise ValueError(
            "init='continuation' needs a finished shallower run in init_from (a run folder with "
            f"metrics.json and checkpoint.pt); got {config.init_from!r}"
        )
    src_cfg = RunConfig.from_dict(json.loads((src / "config.json").read_text()))
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
    try:
        state = load_checkpoint(src / "checkpoint.pt")["model"]
    except CorruptCheckpointError as err:
        raise ValueError(f"cannot continue from {src}: {err}") from err
    merged = model.state_dict()
    unknown = sorted(set(state) - set(merged))
    if unknown:
        raise ValueError(f"{src} holds parameters this model does not have: {unknown[:5]}")
    merged.update({k: v.to(merged[k].dtype) for k, v in state.items()})
    model.load_state_dict(merged)
    model.pad_init(src_cfg.depth, config.pad_scale)
