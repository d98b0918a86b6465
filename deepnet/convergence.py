"""When is a run converged? The stationarity record and the escape probe (THEORY §9).

A run is called converged only by criteria that can fail:

1. the gradient test: the float64 ‖∇J‖ at the final point ≤ ``grad_tol``;
2. the window test: the relative decrease of J over the last ``w`` iterations, at full step
   size, ≤ ``rel_tol`` (a run with fewer than ``w`` iterations, e.g. one whose line search
   stalled at once, fails it: there is no window to judge);
3. the escape probe: optimisers that share none of the run's state start from the final point,
   L-BFGS with empty memory for ``escape_lbfgs_iters`` iterations and float64 full-batch Adam at
   the small step ``escape_adam_lr`` for ``escape_adam_steps`` steps; neither may lower J by
   more than ``escape_tol`` (relative). A stalled line search, or a stiff valley that L-BFGS's
   memory cannot model, passes tests 1–2 at points these optimisers leave at once.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor

from .config import RunConfig, Stationarity
from .layers import CollapseNet
from .objective import batch_objective, evaluate
from .optimizers import lbfgs_iterate, make_lbfgs

#: the first-order window test needs the learning rate over the window to stay at least this
#: fraction of its peak ("full step size", THEORY §9); cosine-to-zero fails it by design
FULL_STEP_FRACTION = 0.5
#: the Adam probe evaluates J (float64) every this many steps and keeps the lowest point
PROBE_EVAL_EVERY = 25


def lr_at(config: RunConfig, step: int, total_steps: int) -> float:
    """First-order learning rate at step ``step`` (0-based): cosine from lr to 0, or constant."""
    if config.lr_schedule == "constant":
        return config.lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / total_steps))


def convergence_window(config: RunConfig) -> int:
    """Iterations/epochs w of the window the relative-change test looks at (≥ 1): a fraction
    ``conv_window`` of the chunk (full-batch optimizers; of the budget after the warm-up when that
    is shorter) or of the whole budget (first-order optimizers)."""
    if config.full_batch:
        span = min(config.chunk, config.epochs - config.warmup_epochs)
    else:
        span = config.epochs
    return max(1, round(config.conv_window * span))


def escape_probe(
    model: CollapseNet, x: Tensor, y: Tensor, config: RunConfig
) -> tuple[dict[str, Any], dict[str, Tensor] | None]:
    """Try to leave the model's point with optimisers that share none of its training state.

    On float64 copies (the model is not modified): L-BFGS with empty memory for
    ``config.escape_lbfgs_iters`` iterations, and full-batch Adam at lr ``escape_adam_lr`` for
    ``escape_adam_steps`` steps (J evaluated every PROBE_EVAL_EVERY steps; the lowest point
    kept). Returns the record {"escape_rel" (the larger relative decrease (J₀ − J)/|J₀| of the
    two; ≤ 0 when neither lowered J), "escape_lbfgs_rel", "escape_adam_rel", "escape_objective"
    (the lowest J found), "escape_by" (which probe found it), "escape_steps" (the probe's steps
    to that point)} and the state dict of that lowest point when it is below J₀ (else None).
    """
    lam, loss = config.effective_lam, config.loss
    base = copy.deepcopy(model).to(torch.float64)
    base.train()
    xx = x.to(torch.float64) if x.is_floating_point() else x
    J0 = evaluate(base, xx, y, lam, loss)["objective"]
    found: list[tuple[float, str, int, dict[str, Tensor]]] = []
    rels: dict[str, float] = {}

    def objective_of(m: CollapseNet) -> Any:
        decayed = [p for _, p in m.decayed_parameters()]

        def J() -> Tensor:
            return batch_objective(m, xx, y, lam, loss, decayed)

        return J

    if config.escape_lbfgs_iters > 0:
        m = copy.deepcopy(base)
        J = objective_of(m)
        opt = make_lbfgs(list(m.parameters()), config.lbfgs_history)
        done = 0
        with torch.enable_grad():
            while done < config.escape_lbfgs_iters:
                k, _ = lbfgs_iterate(opt, J, config.escape_lbfgs_iters - done)
                done += k
                if done < config.escape_lbfgs_iters:
                    break  # a stall with empty memory: this probe can go no further
        j = evaluate(m, xx, y, lam, loss)["objective"]
        rels["lbfgs"] = (J0 - j) / abs(J0) if math.isfinite(j) else -math.inf
        if math.isfinite(j):
            found.append((j, "lbfgs", done, m.state_dict()))
    if config.escape_adam_steps > 0:
        m = copy.deepcopy(base)
        J = objective_of(m)
        opt_a = torch.optim.Adam(m.parameters(), lr=config.escape_adam_lr)
        best, best_step, best_state = math.inf, 0, None
        with torch.enable_grad():
            for step in range(1, config.escape_adam_steps + 1):
                opt_a.zero_grad(set_to_none=True)
                value = J()
                value.backward()
                opt_a.step()
                if step % PROBE_EVAL_EVERY == 0 or step == config.escape_adam_steps:
                    j = evaluate(m, xx, y, lam, loss)["objective"]
                    if math.isfinite(j) and j < best:
                        best, best_step = j, step
                        best_state = copy.deepcopy(m.state_dict())
        rels["adam"] = (J0 - best) / abs(J0) if math.isfinite(best) else -math.inf
        if best_state is not None:
            found.append((best, "adam", best_step, best_state))
    record: dict[str, Any] = {
        "escape_rel": max(rels.values()),
        "escape_lbfgs_rel": rels.get("lbfgs", math.nan),
        "escape_adam_rel": rels.get("adam", math.nan),
        "escape_tol": config.escape_tol,
        "escape_objective": J0,
        "escape_by": None,
        "escape_steps": 0,
    }
    state = None
    if found:
        j, by, steps, st = min(found, key=lambda f: f[0])
        if j < J0:
            record.update(escape_objective=j, escape_by=by, escape_steps=steps)
            state = st
    return record, state


def stationarity(
    config: RunConfig,
    history: list[dict[str, Any]],
    grads: dict[str, float],
    epochs_done: int,
    stalled: bool = False,
    probe: dict[str, Any] | None = None,
) -> Stationarity:
    """The convergence record of a run at its current point (THEORY §9).

    rel_change = (J(E − w) − J(E)) / |J(E)| over the final window of w iterations/epochs
    (:func:`convergence_window`; the relative *decrease*, negative if J rose), taken only at full
    step size: for L-BFGS after its warm-up, for a first-order optimizer only if its learning
    rate stayed ≥ 50% of its peak over the window (a cosine schedule annealed to 0 fails here by
    design). J(E − w) is read from the history (the latest entry at or before E − w).
    converged ⇔ grad_norm ≤ grad_tol, |rel_change| ≤ rel_tol over a whole window, and the
    escape ``probe`` lowered J by at most escape_tol. A stalled line search is judged by the
    same three tests: it is a property of the optimiser, not of the point. When it stalled
    before a whole window of its own, the probes' steps (≥ w of them) are its window.
    """
    w = convergence_window(config)
    end = epochs_done
    start = end - w
    by_epoch = {int(h["epoch"]): h for h in history}  # the last entry of an epoch wins
    earlier = [e for e in by_epoch if e <= max(start, 0)]
    j1 = by_epoch[end]["objective"] if end in by_epoch else math.nan
    j0 = by_epoch[max(earlier)]["objective"] if earlier else math.nan
    unit = "iterations" if config.full_batch else "epochs"
    if config.full_batch:
        full_step = start >= config.warmup_epochs
        min_lr_ratio = None
    else:
        # the lr at each epoch boundary of the window (cosine is monotone within an epoch)
        lrs = [lr_at(config, e, config.epochs) / config.lr for e in range(max(start, 0), end + 1)]
        min_lr_ratio = min(lrs) if lrs else 1.0
        full_step = min_lr_ratio >= FULL_STEP_FRACTION
    rel = (j0 - j1) / abs(j1) if (full_step and math.isfinite(j0) and j1) else math.nan
    reasons = []
    if not grads["grad_norm"] <= config.grad_tol:
        reasons.append(f"gradient norm {grads['grad_norm']:.3g} > grad_tol {config.grad_tol:g}")
    probe_steps = config.escape_lbfgs_iters + config.escape_adam_steps
    window_by_probe = start < 0 and stalled and probe is not None and probe_steps >= w
    if window_by_probe:
        # the line search stalled before a whole window: the probes ran ≥ w steps of other
        # optimisers from the final point, and the most J fell over them is the window's change
        assert probe is not None
        rel, full_step = max(float(probe["escape_rel"]), 0.0), True
        if not rel <= config.rel_tol:
            reasons.append(
                f"the line search stalled after {end} {unit}, and J fell by {100 * rel:.3g}% "
                f"over the probes' {probe_steps} steps (rel_tol {100 * config.rel_tol:g}%)"
            )
    elif start < 0:
        reasons.append(
            f"only {end} {unit}{' (the line search stalled)' if stalled else ''}, fewer than "
            f"the window of {w}: the change of J cannot be judged"
        )
    elif not full_step:
        if min_lr_ratio is not None:
            reasons.append(
                f"step size annealed over the final window (lr down to "
                f"{100 * min_lr_ratio:.2g}% of its peak): the change of J there proves nothing"
            )
        else:
            reasons.append("the final window reaches into the first-order warm-up")
    elif not abs(rel) <= config.rel_tol:
        reasons.append(
            f"J moved by {100 * rel:+.3g}% over the last {w} {unit} "
            f"(rel_tol {100 * config.rel_tol:g}%)"
        )
    escape = {
        "escape_rel": math.nan,
        "escape_lbfgs_rel": math.nan,
        "escape_adam_rel": math.nan,
        "escape_tol": config.escape_tol,
    }
    if probe is None:
        reasons.append("no escape probe was run")
    else:
        escape.update({k: probe[k] for k in escape if k in probe})
        if not probe["escape_rel"] <= config.escape_tol:
            by = probe.get("escape_by") or "a probe"
            reasons.append(
                f"{'fresh L-BFGS' if by == 'lbfgs' else 'Adam' if by == 'adam' else by} "
                f"lowered J by {100 * probe['escape_rel']:.3g}% from the final point "
                f"(escape_tol {100 * config.escape_tol:g}%)"
            )
    return Stationarity(
        **grads,
        rel_change=rel,
        window=w,
        window_by_probe=bool(window_by_probe),
        window_start_objective=j0,
        final_objective=j1,
        full_step=bool(full_step),
        min_lr_ratio=min_lr_ratio,
        grad_tol=config.grad_tol,
        rel_tol=config.rel_tol,
        stalled=bool(stalled),
        **escape,
        converged=not reasons,
        reasons=tuple(reasons),
    )


@torch.no_grad()
def ln_input_spreads(model: CollapseNet, x: Tensor) -> dict[str, Tensor]:
    """The spread s = std over features (biased, as LN computes it) of every LayerNorm's input,
    per sample and token, for the inputs ``x`` (THEORY §9). LN(u) = (u − ū)/√(s² + ε) has
    curvature of order 1/(s² + ε): spreads near √ε make J stiff. Text pad positions (token id
    0) are left out: they feed nothing. Returns {module name: 1-D tensor of spreads}."""
    from .layers import LayerNorm

    found: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def record(_m: torch.nn.Module, inp: tuple[Tensor, ...], _out: Tensor) -> None:
            u = inp[0].detach()
            s = u.std(-1, unbiased=False)
            if keep is not None and s.ndim == 2:
                mask = keep
                if s.shape[1] == keep.shape[1] + 1:  # a CLS token in front: always kept
                    mask = torch.cat([keep.new_ones(len(keep), 1), keep], dim=1)
                if s.shape == mask.shape:
                    s = s[mask]
            found[name] = s.reshape(-1).to(torch.float64)

        return record

    keep = (x != 0) if not x.is_floating_point() and x.ndim == 2 else None
    handles = [
        module.register_forward_hook(hook(name or "layernorm"))
        for name, module in model.named_modules()
        if isinstance(module, LayerNorm)
    ]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return found
