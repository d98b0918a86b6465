"""A trained run against its UFM (THEORY §3, §6, §10, §11): the problem a run reduces to
(:func:`ufm_problem_for`), its optimum (solved once per process), and every number a sweep row
holds about the run (:func:`measure_run`): the objective split, the collapse metrics, the
distance to the optimum (:mod:`reduction.distance`), the per-layer path (:mod:`reduction.profile`)
and the stationarity record. The columns are those of :mod:`reduction.registry`.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import ufm
from reduction.distance import distance_to_optimum, group_distance
from reduction.metrics import collapse_metrics
from reduction.registry import Row

if TYPE_CHECKING:
    from deepnet import RunConfig, RunResult
    from deepnet.data import Dataset

__all__ = ["measure_run", "solve_cached", "ufm_problem_for"]


def ufm_problem_for(
    config: RunConfig, labels: np.ndarray, num_classes: int, data: Dataset | None = None
) -> ufm.Problem:
    """The LayerNorm UFM a trained network of ``config`` reduces to (THEORY §3).

    Same loss, classes and per-class counts as the training set, width d, radius √d (the LN
    sphere), λ_W = the run's effective λ; the classifier bias is free (undecayed) when present.
    Data whose identical inputs carry several labels (next-token data: ``info`` holds the
    (G, K) ``group_label_counts`` of the distinct contexts) give the generalised UFM of
    THEORY §11, one feature per context.
    With ``ln_affine`` the features leave the sphere and the undecayed LN scale lets the
    classifier penalty shrink without limit (J has no minimiser): no UFM applies (ValueError).
    """
    if config.ln_affine:
        raise ValueError(
            "the UFM comparison needs parameter-free LayerNorm (ln_affine=False): an affine LN "
            "moves the features off the sphere and its undecayed scale lets (λ/2)‖W‖² shrink "
            "without limit, so J_L has no minimiser to compare"
        )
    info = getattr(data, "info", None) or {}
    if info.get("group_label_counts") is not None:
        return ufm.Problem.from_label_counts(
            np.asarray(info["group_label_counts"]),
            config.width,
            config.effective_lam,
            config.loss,
            bias="free" if config.bias else "none",
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    per_class: int | list[int] = (
        int(counts[0]) if np.all(counts == counts[0]) else [int(c) for c in counts]
    )
    return ufm.Problem(
        loss=config.loss,
        num_classes=num_classes,
        samples_per_class=per_class,
        width=config.width,
        lam_W=config.effective_lam,
        bias="free" if config.bias else "none",
        features="layernorm",
    )


_SOLUTIONS: dict[str, ufm.Solution] = {}


def solve_cached(problem: ufm.Problem) -> ufm.Solution:
    """ufm.solve, once per distinct problem in this process (every depth of a constant-λ sweep
    shares one; the generalised UFM of a next-token sweep takes seconds to solve)."""
    groups = [list(map(int, g)) for g in (problem.groups or ())]
    key = json.dumps([problem.to_dict(), groups], sort_keys=True, default=str)
    if key not in _SOLUTIONS:
        _SOLUTIONS[key] = ufm.solve(problem)
    return _SOLUTIONS[key]


def measure_run(
    result: RunResult, num_classes: int, data: Dataset | None = None
) -> tuple[Row, list[dict[str, Any]] | None]:
    """Collapse metrics, distance to the UFM optimum and stationarity of one run, flat (the
    row's measured columns), and, with ``data`` and the in-memory model, the per-layer profile
    (the rows of profile.json; None without)."""
    cfg = result.config
    metrics = collapse_metrics(
        result.features, result.labels, result.W, result.b, num_classes=num_classes
    )
    problem = ufm_problem_for(cfg, result.labels, num_classes, data)
    solution = solve_cached(problem)
    dist = distance_to_optimum(
        result.features, result.labels, result.W, result.b, problem, solution=solution
    )
    ufm_value = float(dist["optimum_value"])
    st = result.stationarity
    row: dict[str, Any] = {
        "objective": result.objective,
        "fit": result.fit,
        "classifier_penalty": result.classifier_penalty,
        "body_penalty": result.body_penalty,
        "embedding_penalty": result.embedding_penalty,
        "train_acc": result.train_acc,
        "test_acc": result.test_acc,
        "ufm_value": ufm_value,
        "ufm_geometry": dist["optimum_geometry"],
        # J_L − UFM*: the theory says ≥ body penalty ≥ 0 and → 0 with depth
        "objective_gap": result.objective - ufm_value,
        # relative to UFM*: with λ/L the optimum itself shrinks with depth, so compare these
        "objective_rel_gap": (result.objective - ufm_value) / ufm_value if ufm_value else math.nan,
        # gap in units of the effective λ (THEORY §10: the λ/L presets)
        "objective_gap_per_lam": (result.objective - ufm_value) / cfg.effective_lam
        if cfg.effective_lam
        else math.nan,
        # (fit + (λ/2)‖W‖²) − UFM*, recomputed in float64 from the features: ≥ 0 (THEORY §3)
        "classifier_gap": float(dist["gap"]),
        "classifier_rel_gap": float(dist["rel_gap"]),
        "w_norm_ratio": float(dist["w_norm_ratio"]),
        "procrustes_means": float(dist["procrustes_means"]),
        "procrustes_W": float(dist["procrustes_W"]),
        "procrustes_joint": float(dist["procrustes_joint"]),
        "sphere_violation": float(dist["feasibility_violation"]),
    }
    for key in ("nc2_ufm", "nc2_means_ufm", "nc3_ufm"):
        if key in dist:
            row[key] = float(dist[key])
    if problem.groups:  # the generalised UFM: how far from its (non-collapsed) geometry
        assert data is not None  # group_label_counts come from the data's info
        groups = np.asarray(data.info["group_ids"])
        row.update(group_distance(result.features, groups, solution))
        geometry = ufm.gufm_geometry(solution)
        row.update(
            n_groups=len(problem.groups),
            gufm_nc1=float(geometry.nc1),
            gufm_collapsed=bool(geometry.collapsed),
        )
    row.update({k: float(v) for k, v in metrics.items()})
    layers = None
    if data is not None and result.model is not None:
        layers, path = _profile(result, num_classes, data)
        row.update(path)
    row.update(
        {
            "grad_norm": float(st.grad_norm),
            "rel_change": float(st.rel_change),
            "converged": bool(st.converged),
            "stalled": bool(st.stalled),
            "not_converged_because": "; ".join(st.reasons),
            "escape_rel": float(st.escape_rel),
            "escape_lbfgs_rel": float(st.escape_lbfgs_rel),
            "escape_adam_rel": float(st.escape_adam_rel),
            "epochs_done": int(result.epochs_done),
            "escape_steps": int(result.escape_steps),
            "lbfgs_resets": int(result.lbfgs_resets),
            "wall_time_s": float(result.wall_time_s),
            "device": str(result.device),
        }
    )
    return cast(Row, row), layers


def _profile(
    result: RunResult, num_classes: int, data: Dataset
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The per-layer profile of the run's in-memory model on its training data (THEORY §10)."""
    import torch

    from reduction.profile import layer_profile

    cfg, model = result.config, result.model
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    x = torch.as_tensor(
        np.asarray(data.x_train), device=dev, dtype=torch.long if data.kind == "text" else dtype
    )
    y = torch.as_tensor(np.asarray(data.y_train), device=dev)
    return layer_profile(model, x, y, num_classes, cfg.effective_lam, cfg.arch, cfg.norm)
