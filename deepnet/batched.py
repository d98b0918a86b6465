"""Seeds trained as one batched model (torch.func): S runs that differ only in ``seed``.

Every seed's network is built exactly as :func:`deepnet.train` builds it
(``torch.manual_seed(seed)``; ``build_model(config, data)``), the S parameter sets are stacked
along a new leading axis (``torch.func.stack_module_state``) and each step evaluates, with
``torch.func.vmap`` over the stacked parameters and ``functional_call``,

  J_s(θ_s) = (1/B) Σ_{i ∈ batch_s} ℓ(f_{θ_s}(x_i), y_i) + (λ/2) Σ_{decayed} ‖θ_s‖_F²   (THEORY §2)

for s = 1..S, then differentiates Σ_s J_s. Since J_s depends on θ_s alone, ∂(Σ_t J_t)/∂θ_s =
∂J_s/∂θ_s: the seeds' gradients do not mix. One Adam (or SGD with momentum) steps the stacked
tensors; both are elementwise, so this is S independent optimizers (the registry's
``batchable`` optimizers, :mod:`deepnet.optimizers`). Minibatches follow each
seed's own permutation stream (a generator seeded ``seed + 1``, as in ``deepnet.train``), so each
seed's trajectory is its separate run's up to floating-point rounding of batched kernels.

Full-batch optimizers are not batched: L-BFGS's strong-Wolfe line search (Newton-TR's trust
region) picks one step length for all parameters it holds, so one over the stacked tensors would
couple the seeds. The schedule, history entries, checkpoint layout and results are those of
:mod:`deepnet.runstate`, as in ``deepnet.train``.

No checkpoints during training and no resumption: the sweep uses this for fresh units only (a
unit that has a checkpoint is resumed by ``deepnet.train``). With ``run_dirs``, each seed's folder
receives at the end exactly what a finished ``deepnet.train(config, data, run_dir)`` writes
(config.json, checkpoint.pt with the seed's own optimizer and permutation-generator state,
metrics.json, features.npz), so a later depth can continue from it, ``load_result`` reads it and
``deepnet.train`` can extend a schedule-free run from it.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from .config import RunConfig, RunResult
from .continuation import continue_from
from .io import rng_state, save_checkpoint, write_json, write_result
from .layers import CollapseNet, half_sq_norm
from .models import build_model
from .objective import data_term, evaluate
from .optimizers import OPTIMIZERS
from .runstate import (
    EvalHook,
    RunState,
    Schedule,
    TrainingDivergedError,
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

#: fields that may differ between the batched runs: the seed, and where a continuation run
#: starts from (each seed continues its own shallower run)
PER_SEED = ("seed", "init_from")

#: why L-BFGS runs are not batched (each full-batch optimizer says it in its own words)
LBFGS_MESSAGE = OPTIMIZERS["lbfgs"].unbatchable_message()


def check_batchable(configs: list[RunConfig], data_given: bool = True) -> None:
    """Raise ``ValueError`` unless ``configs`` can train as one batched model: a non-empty list
    of RunConfigs with distinct seeds, equal in every field but ``seed`` (and ``init_from``),
    with a ``batchable`` optimizer. Without ``data`` they must also share the data subset."""
    if not configs:
        raise ValueError("train_batched needs at least one RunConfig, got an empty list")
    bad = [type(c).__name__ for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise ValueError(f"train_batched takes RunConfigs, got {bad}")
    ref = configs[0].to_dict()
    differ = sorted(
        {
            k
            for c in configs[1:]
            for k, v in c.to_dict().items()
            if k not in PER_SEED and v != ref[k]
        }
    )
    if differ:
        raise ValueError(
            f"batched runs may differ only in seed (and init_from); these fields differ: {differ}"
        )
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"batched runs need distinct seeds, got {seeds}")
    spec = OPTIMIZERS[configs[0].optimizer]
    if not spec.batchable:
        raise ValueError(spec.unbatchable_message())
    if not data_given and len({c.subset_seed for c in configs}) > 1:
        raise ValueError(
            "without data, each seed would load its own subset (data_seed=None means "
            "data_seed=seed): set data_seed, or pass the shared data"
        )


def train_batched(
    configs: list[RunConfig],
    data: Dataset | None = None,
    *,
    progress: bool = False,
    eval_hook: EvalHook | None = None,
    run_dirs: list[str | Path] | None = None,
) -> list[RunResult]:
    """Train the runs ``configs`` (equal but for ``seed``) as one vmapped model on ``data``
    (loaded from ``configs[0]`` when None; then all must share ``data_seed``).

    Returns one :class:`RunResult` per config, in order, built as ``deepnet.train`` builds it:
    the same history entries (epoch, objective, its split, train_acc, phase, lr) at the same
    evaluation points, final float64 evaluation, gradient norms, stationarity, test accuracy and
    provenance (plus ``batched_seeds``). ``wall_time_s`` is the whole batched call's time, and
    ``result.model`` the seed's trained network. ``eval_hook`` is called per seed at every
    evaluation point, as in ``deepnet.train``. Raises :class:`TrainingDivergedError` naming the
    seeds whose objective became non-finite.

    ``run_dirs`` (one per config, fresh: no checkpoint.pt yet): a relative ``init_from`` is
    resolved against its run's folder, as in ``deepnet.train``, and each finished run is written
    there as ``deepnet.train`` writes it (nothing is written before the end).
    """
    check_batchable(configs, data_given=data is not None)
    paths = None
    if run_dirs is not None:
        paths = [Path(d) for d in run_dirs]
        if len(paths) != len(configs):
            raise ValueError(f"run_dirs has {len(paths)} folders for {len(configs)} configs")
        if len(set(paths)) != len(paths):
            raise ValueError("run_dirs must be distinct folders (one writer per run folder)")
        taken = [str(p) for p in paths if (p / "checkpoint.pt").exists()]
        if taken:
            raise ValueError(
                f"batched training starts fresh runs only; these folders hold a checkpoint "
                f"(resume them with deepnet.train): {taken}"
            )
        for p in paths:  # results of an earlier run in a folder are stale (as deepnet.train)
            for stale in ("metrics.json", "features.npz"):
                (p / stale).unlink(missing_ok=True)
    with threads(configs[0].num_threads):
        return _Batched(configs, data, eval_hook, paths).run(progress)


class _Batched:
    """S batched runs while they train: one stacked model, one optimizer, one
    :class:`~deepnet.runstate.RunState` per seed."""

    def __init__(
        self,
        configs: list[RunConfig],
        data: Dataset | None,
        eval_hook: EvalHook | None,
        run_paths: list[Path] | None = None,
    ) -> None:
        self.t0 = time.perf_counter()
        self.configs = configs
        self.run_paths = run_paths
        cfg = configs[0]
        if data is None:
            data = load_run_data(cfg)
        self.data = data
        self.device = resolve_device(cfg.device)
        dtype = getattr(torch, cfg.torch_dtype_name)
        self.models: list[CollapseNet] = []
        for s, c in enumerate(configs):
            torch.manual_seed(c.seed)
            model = build_model(c, data).to(device=self.device, dtype=dtype)
            if c.init == "continuation":
                continue_from(c, model, None if run_paths is None else run_paths[s])
            self.models.append(model)
        self.x, self.y, self.x_test, self.y_test = to_tensors(data, self.device, dtype)
        self.eval_hook = eval_hook
        self.lam = cfg.effective_lam
        self.epochs = cfg.epochs
        self.schedule = Schedule.of(cfg, len(self.x))

        # the stacked parameters (S, ...) are the trained leaves; a meta copy supplies the
        # module structure for functional_call
        params, buffers = stack_module_state(self.models)
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self.base = copy.deepcopy(self.models[0]).to("meta")
        self.decayed_names = [name for name, _ in self.models[0].decayed_parameters()]
        names = [name for name, _ in self.models[0].named_parameters()]
        self.param_list = [self.params[n] for n in names]  # the order train's optimizer sees
        self.opt = make_optimizer(cfg.optimizer, self.param_list, cfg)
        self.gens = []
        for c in configs:
            g = torch.Generator(device=self.device)
            g.manual_seed(c.seed + 1)
            self.gens.append(g)
        self.states = [RunState() for _ in configs]
        self.last_eval: list[dict[int, dict[str, Any]]] = [{} for _ in configs]
        self.objectives = vmap(self._objective, in_dims=(0, 0, None, None))
        self.objectives_mb = vmap(self._objective, in_dims=(0, 0, 0, 0))

    # ------------------------------------------------------------------------------ objective

    def _objective(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> Tensor:
        """J_s for one seed's parameters (vmapped over the seed axis); the same expression
        ``batch_objective`` evaluates in ``deepnet.train``."""
        J = data_term(functional_call(self.base, (params, buffers), (x,)), y, self.configs[0].loss)
        if self.lam > 0:
            J = J + self.lam * half_sq_norm([params[n] for n in self.decayed_names])
        return J

    # ---------------------------------------------------------------------------- evaluation

    def _sync(self) -> None:
        """Copy the stacked parameters into the per-seed models (for evaluation)."""
        with torch.no_grad():
            for s, model in enumerate(self.models):
                for name, p in model.named_parameters():
                    p.copy_(self.params[name][s])

    def record(self, at_epoch: int) -> list[dict[str, Any]]:
        self._sync()
        evs = []
        diverged = []
        for s, model in enumerate(self.models):
            ev = evaluate(model, self.x, self.y, self.lam, self.configs[0].loss)
            if not math.isfinite(ev["objective"]):
                diverged.append(self.configs[s].seed)
            evs.append(ev)
        if diverged:
            raise self._diverged(f"objective is non-finite at epoch {at_epoch}", diverged)
        before = max(at_epoch - 1, 0)
        for s, (model, ev) in enumerate(zip(self.models, evs)):
            entry = history_entry(
                at_epoch, ev, self.schedule.phase(before), self.schedule.lr(before)
            )
            if self.eval_hook is not None:
                entry.update(self.eval_hook(at_epoch, model, ev))
            self.states[s].add_entry(entry)
            self.last_eval[s] = {at_epoch: ev}
        return evs

    def _diverged(self, where: str, seeds: list[int]) -> TrainingDivergedError:
        return TrainingDivergedError(
            f"{where} for seed(s) {seeds} (lr={self.configs[0].lr}); batched runs keep no "
            "checkpoint"
        )

    # -------------------------------------------------------------------------------- training

    def _epoch(self, epoch: int, bad: Tensor) -> Tensor:
        """One pass over the data for every seed; ``bad`` (S,) flags non-finite losses."""
        sched = self.schedule
        full = sched.batch == len(self.x)
        order = (
            None
            if full
            else torch.stack(
                [torch.randperm(len(self.x), generator=g, device=self.device) for g in self.gens]
            )
        )
        for s in range(sched.steps_per_epoch):
            lr = sched.step_lr(epoch, s)
            for group in self.opt.param_groups:
                group["lr"] = lr
            if order is None:
                J = self.objectives(self.params, self.buffers, self.x, self.y)
            else:
                idx = order[:, s * sched.batch : (s + 1) * sched.batch]  # (S, B): seed s's batch
                J = self.objectives_mb(self.params, self.buffers, self.x[idx], self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            J.sum().backward()  # ∂(Σ_t J_t)/∂θ_s = ∂J_s/∂θ_s: the seeds stay independent
            self.opt.step()
            bad = bad | ~torch.isfinite(J.detach())
        return bad

    def run(self, progress: bool) -> list[RunResult]:
        cfg = self.configs[0]
        self.record(0)
        bar = None
        if progress:
            seeds = [c.seed for c in self.configs]
            bar = progress_bar(self.epochs, 0, f"{cfg.arch} L={cfg.depth} seeds={seeds}")
        bad = torch.zeros(len(self.configs), dtype=torch.bool, device=self.device)
        try:
            for epoch in range(self.epochs):
                bad = self._epoch(epoch, bad)
                done = epoch + 1
                for st in self.states:
                    st.epoch = done
                if self.schedule.must_eval(done):
                    # sync point (GPU): never record a history entry past a bad step
                    flags = bad.tolist()
                    if any(flags):
                        seeds = [c.seed for c, f in zip(self.configs, flags) if f]
                        raise self._diverged(f"non-finite training loss before epoch {done}", seeds)
                    evs = self.record(done)
                    if bar is not None:
                        best = min(ev["objective"] for ev in evs)
                        bar.set_postfix(J_min=f"{best:.6g}")
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return self.finish()

    # ---------------------------------------------------------------------------------- finish

    def finish(self) -> list[RunResult]:
        self._sync()
        wall = time.perf_counter() - self.t0
        seeds = [c.seed for c in self.configs]
        results = []
        for s, (cfg, model) in enumerate(zip(self.configs, self.models)):
            final = self.last_eval[s][self.epochs]  # the last epoch is always evaluated
            st = self.states[s]
            result = make_result(
                cfg,
                model,
                final,
                (self.x, self.y, self.x_test, self.y_test),
                st.history,
                self.epochs,
                stalled=False,
                completed=True,
                wall_time_s=wall,
                device=self.device,
            )
            result.provenance["batched_seeds"] = seeds
            st.current = result.stationarity
            if self.run_paths is not None:
                self._write(s, result, wall)
            results.append(result)
        return results

    def _optimizer_state(self, s: int) -> dict[str, Any]:
        """Seed ``s``'s share of the stacked optimizer's state, in the layout of the optimizer
        ``deepnet.train`` builds over ``model.parameters()`` (same parameter order)."""
        full = self.opt.state_dict()
        state = {}
        for i, st in full["state"].items():
            # per-element buffers carry the seed axis; Adam's step count is a shared scalar.
            # clone: a saved view would drag the whole stacked storage into the file
            state[i] = {
                k: v[s].clone() if isinstance(v, Tensor) and v.dim() > 0 else v
                for k, v in st.items()
            }
        return {"state": state, "param_groups": full["param_groups"]}

    def _write(self, s: int, result: RunResult, wall: float) -> None:
        """Write seed ``s``'s finished run as ``deepnet.train`` would (the one checkpoint
        layout of :mod:`deepnet.runstate`)."""
        assert self.run_paths is not None
        path, cfg = self.run_paths[s], self.configs[s]
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", cfg.to_dict())
        state = self.states[s].checkpoint(
            cfg,
            self.models[s].state_dict(),
            {"first": self._optimizer_state(s)},
            rng_state(self.gens[s]),
            wall,
        )
        save_checkpoint(path / "checkpoint.pt", state)
        write_result(path, result)
