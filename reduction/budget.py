"""The 2×-budget check (THEORY §9): rerun the shallowest depth with blocks and the deepest (first
seed) with twice the budget, under OUT/budget2x, and compare.

Schedule-free runs (full-batch optimizers, constant lr) continue from their final point with
fresh optimiser state (:func:`deepnet.restart_copy`) for as many iterations again as they used
(at least one chunk), to the end; others are retrained from scratch from the same start with
twice the epochs. The check passes when the rerun is converged by its own criteria, J moved by
at most BUDGET_TOL and the rerun executed iterations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepnet import RunConfig, restart_copy
from reduction.layout import budget_out, read_row, run_dir_of
from reduction.plan import Sweep
from reduction.unit import DataCache, Trainer, run_unit

#: the 2×-budget rerun passes when J moves by at most this fraction (of J_2x) and the rerun
#: is itself converged by its own criteria (THEORY §9)
BUDGET_TOL = 0.01

__all__ = ["BUDGET_TOL", "budget_summary", "budget_unit"]


def iterations_used(row: Mapping[str, Any]) -> int:
    """Iterations (epochs) a finished run used: its iterations plus adopted probe steps."""
    return int(row.get("epochs_done", 0) or 0) + int(row.get("escape_steps", 0) or 0)


def budget_overrides(sweep: Sweep, base: Mapping[str, Any]) -> dict[str, Any]:
    """The 2× rerun's overrides: twice the iterations the 1× run used (at least one more chunk),
    run to the end whatever the criteria say (``until_converged=False``)."""
    cfg = RunConfig.from_dict(base["config"])
    if not cfg.schedule_free:  # a schedule over the budget: retrained with twice the epochs
        return {**sweep.overrides, "epochs": 2 * cfg.epochs}
    used = iterations_used(base)
    extra = max(used, cfg.chunk_epochs or 1)  # an explicit chunk must fit in the cap
    return {**sweep.overrides, "epochs": used + extra, "until_converged": False}


def budget_unit(
    sweep: Sweep,
    depth: int,
    seed: int,
    out: Path,
    datasets: DataCache,
    progress: bool,
    trainer: Trainer,
) -> bool:
    """Train the 2×-budget rerun of (depth, seed) under OUT/budget2x. Returns whether anything
    was trained."""
    base = read_row(run_dir_of(out, depth, seed))
    if base is None or base.get("status") != "ok":
        return False
    base_cfg = RunConfig.from_dict(base["config"])
    sub_out = budget_out(out)
    target = run_dir_of(sub_out, depth, seed)
    src = out / base["run_dir"]
    if base_cfg.schedule_free and not (target / "checkpoint.pt").exists():
        restart_copy(src, target)
    init_from = None
    if base_cfg.init_from:  # the same start as the 1x unit, seen from the 2x unit's folder
        init_from = os.path.relpath(src / base_cfg.init_from, target)
    rerun = sweep.budget.with_overrides(budget_overrides(sweep, base))
    _, did = run_unit(
        rerun, depth, seed, sub_out, datasets.get(seed), progress, trainer, init_from
    )
    return did


def budget_summary(sweep: Sweep, out: Path) -> list[dict[str, Any]]:
    """Compare each 2× rerun with its 1× run. Sign convention everywhere:
    rel_improvement_2x = (J_1x − J_2x)/|J_2x| > 0 when the larger budget lowered J;
    ``iterations_run`` is what the rerun executed beyond the 1× run (it must be > 0)."""
    seed = sweep.seeds[0]
    checks: list[dict[str, Any]] = []
    for depth in sweep.budget_depths():
        base = read_row(run_dir_of(out, depth, seed))
        row = read_row(run_dir_of(budget_out(out), depth, seed))
        if base is None or base.get("status") != "ok":
            continue
        if row is None or row.get("status") != "ok":
            status = "missing" if row is None else row.get("status")
            checks.append({"depth": depth, "seed": seed, "status": status, "ok": False})
            continue
        rel = (base["objective"] - row["objective"]) / abs(row["objective"])
        schedule_free = RunConfig.from_dict(base["config"]).schedule_free
        ran = iterations_used(row) - (iterations_used(base) if schedule_free else 0)
        checks.append(
            {
                "depth": depth,
                "seed": seed,
                "status": "ok",
                "iterations_1x": iterations_used(base),
                "iterations_run": ran,
                "objective": base["objective"],
                "objective_2x": row["objective"],
                "rel_improvement_2x": rel,
                "tolerance": BUDGET_TOL,
                "converged_2x": bool(row["converged"]),
                "grad_norm_2x": row["grad_norm"],
                "escape_rel_2x": row.get("escape_rel"),
                "ok": bool(row["converged"] and abs(rel) <= BUDGET_TOL and ran > 0),
                "nc1": base["nc1"],
                "nc1_2x": row["nc1"],
                "objective_gap": base["objective_gap"],
                "objective_gap_2x": row["objective_gap"],
            }
        )
    return checks
