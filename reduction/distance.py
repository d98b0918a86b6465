"""Distance of a trained network's last layer to the global optimum of its UFM (SPEC §3, §6).

The deep network's features h_i, classifier W and bias b are evaluated on the UFM objective of a
``ufm.Problem`` (same loss conventions as ``ufm``: mean cross-entropy, or (1/(2N))‖Z − Y‖_F² with
one-hot Y; penalties (λ_W/2)‖W‖_F², (λ_b/2)‖b‖² for a regularised bias, (λ_H/2)‖H‖_F² for free
features) and compared with the optimum from ``ufm.solve``:

* ``gap`` = classifier-side objective (fit + classifier penalties) − UFM*. For LayerNorm features
  (every h_i on the problem's sphere) the UFM relaxes the network, so gap ≥ 0; the same holds for
  ``ufm_gap`` (the full UFM objective, adding the feature penalty for free features) at any point.
  A negative value beyond ``gap_tol`` means the "optimum" is not optimal (solver tolerance, or
  features that are not what the problem assumes): by default a :class:`NegativeGapError` is
  raised; ``on_negative_gap="warn"`` warns instead. Features off the sphere (``feasible`` False)
  are not checked, since the bound does not apply to them.
* shape: the ratio of mean classifier row norms to the optimum's, and orthogonal-Procrustes
  distances min_R ‖A R − B‖_F (R orthogonal) between Frobenius-normalised configurations: centred
  class means M̄ (K×d), classifier W (K×d), and both stacked with one shared rotation.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.special import logsumexp

import ufm

from .metrics import _as_tensor

__all__ = ["NegativeGapError", "distance_to_optimum", "procrustes_distance"]


class NegativeGapError(RuntimeError):
    """A feasible point beat the claimed UFM optimum by more than the tolerance."""


def _np64(x: Any, name: str) -> np.ndarray:
    """Any numpy/torch (any device)/sequence → float64 numpy (distance is O(NK): CPU is fine)."""
    t = _as_tensor(x, name)
    if t.is_floating_point():
        t = t.to(torch.float64)
    return t.cpu().numpy()


def procrustes_distance(A: np.ndarray, B: np.ndarray) -> float:
    """min over orthogonal R of ‖A/‖A‖_F · R − B/‖B‖_F‖_F (rows = points); NaN if either is 0.

    Lies in [0, 2]; 0 iff the configurations agree up to rotation/reflection and overall scale.
    """
    na, nb = np.linalg.norm(A), np.linalg.norm(B)
    if na == 0 or nb == 0:
        return math.nan
    A, B = A / na, B / nb
    if A.shape[1] > 2 * A.shape[0]:
        # only the joint row span matters (AᵀB lives there), so solve in ≤ 2K coordinates
        # instead of d: same optimum, and a (2K)² SVD instead of a d² one
        Q, _ = np.linalg.qr(np.vstack([A, B]).T)
        A, B = A @ Q, B @ Q
    R, _ = orthogonal_procrustes(A, B)
    return float(np.linalg.norm(A @ R - B))


def _fit(problem: ufm.Problem, Z: np.ndarray, y: np.ndarray) -> float:
    """Data term with the problem's loss; Z (N, K) logits."""
    N = Z.shape[0]
    if problem.loss == "ce":
        return float(np.mean(logsumexp(Z, axis=1) - Z[np.arange(N), y]))
    Y = np.zeros_like(Z)
    Y[np.arange(N), y] = 1.0
    return float(np.sum((Z - Y) ** 2) / (2 * N))


def distance_to_optimum(
    features: Any,
    labels: Any,
    W: Any,
    b: Any,
    problem: ufm.Problem,
    *,
    solution: Any = None,
    gap_tol: float | None = None,
    feasibility_tol: float = 1e-4,
    on_negative_gap: Literal["raise", "warn"] = "raise",
    global_mean: Literal["sample", "class"] = "sample",
) -> dict[str, Any]:
    """Compare (features (N, d) as rows, labels (N,), W (K, d), b (K,) or None) with the optimum.

    ``solution``: a ``ufm.Solution`` of ``problem`` to reuse (default ``ufm.solve(problem)``).
    ``gap_tol``: allowed negative gap, default 1e-7 + 1e-6·|UFM*| (solver tolerance).
    ``feasibility_tol``: relative tolerance for "on the sphere": |‖h_i‖ − r| ≤ tol·r and, when
    centred, |1ᵀh_i| ≤ tol·r·√d (float32 LayerNorm outputs, whose LN ε shrinks norms by ~1e-5).

    Returns: optimum_value, optimum_method, optimum_geometry, fit, classifier_penalty (λ_W/2‖W‖²
    + λ_b/2‖b‖² if the bias is regularised), classifier_objective = fit + classifier_penalty,
    gap = classifier_objective − optimum_value, rel_gap = gap/|optimum_value|, feature_penalty
    (λ_H/2‖H‖_F², free features only), ufm_objective, ufm_gap, feasible, feasibility_violation,
    gap_tol, w_norm_mean, w_norm_mean_opt, w_norm_ratio, procrustes_means, procrustes_W,
    procrustes_joint.
    """
    if not isinstance(problem, ufm.Problem):
        raise ValueError(f"problem must be a ufm.Problem, got {type(problem).__name__}")
    if on_negative_gap not in ("raise", "warn"):
        raise ValueError(f"on_negative_gap must be 'raise' or 'warn', got {on_negative_gap!r}")
    if global_mean not in ("sample", "class"):
        raise ValueError(f"global_mean must be 'sample' or 'class', got {global_mean!r}")
    H = _np64(features, "features")
    Wn = _np64(W, "W")
    K, d = problem.K, problem.width
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"features must have shape (N, width = {d}), got {H.shape}")
    if Wn.shape != (K, d):
        raise ValueError(f"W must have shape (K, width) = ({K}, {d}), got {Wn.shape}")
    y = _as_tensor(labels, "labels").cpu().numpy()
    if y.ndim != 1 or y.shape[0] != H.shape[0]:
        raise ValueError(f"labels must be 1-D of length N = {H.shape[0]}, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("labels must be integers")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}), got range [{y.min()}, {y.max()}]")
    if not (np.all(np.isfinite(H)) and np.all(np.isfinite(Wn))):
        raise ValueError("features or W contain NaN or inf")
    N = H.shape[0]
    if K > N:
        raise ValueError(f"more classes (K = {K}) than samples (N = {N})")
    counts = np.bincount(y, minlength=K)
    if np.any(counts == 0):
        raise ValueError(f"class(es) {np.nonzero(counts == 0)[0].tolist()} have no samples")
    pc = np.asarray(problem.counts)
    # the LayerNorm UFM value depends only on class proportions; free features (λ_H‖H‖² is not
    # divided by N) and tied inputs (groups) depend on the counts themselves
    proportional = problem.features == "layernorm" and not problem.groups
    same = np.array_equal(counts * pc.sum(), pc * N) if proportional else np.array_equal(counts, pc)
    if not same:
        raise ValueError(
            f"class counts of the data {counts.tolist()} do not match the problem's "
            f"{pc.tolist()}{' (up to scale)' if proportional else ''}; build the ufm.Problem "
            "from the data's counts"
        )

    bn: np.ndarray | None = None
    if b is not None:
        bn = _np64(b, "b").reshape(-1)
        if bn.shape != (K,) or not np.all(np.isfinite(bn)):
            raise ValueError(f"b must be a finite vector of shape ({K},), got {bn.shape}")
    if problem.bias == "none" and bn is not None and np.any(bn != 0):
        raise ValueError("problem has bias='none' but a nonzero b was given")

    # -- objective at the given point -------------------------------------------------------------
    Z = H @ Wn.T
    if bn is not None and problem.bias != "none":
        Z = Z + bn
    fit = _fit(problem, Z, y)
    cls_pen = 0.5 * problem.lam_W * float(np.sum(Wn**2))
    if problem.bias == "regularized" and bn is not None:
        cls_pen += 0.5 * problem.lam_b * float(np.sum(bn**2))
    feat_pen = 0.5 * problem.lam_H * float(np.sum(H**2)) if problem.features == "free" else 0.0

    if problem.features == "layernorm":
        r = problem.r
        viol = float(np.max(np.abs(np.linalg.norm(H, axis=1) - r)) / r)
        if problem.centered:
            viol = max(viol, float(np.max(np.abs(H.sum(axis=1)))) / (r * math.sqrt(d)))
        feasible = viol <= feasibility_tol
    else:
        viol, feasible = 0.0, True  # free features: every H is feasible

    sol = ufm.solve(problem) if solution is None else solution
    value = float(sol.value)
    tol = 1e-7 + 1e-6 * abs(value) if gap_tol is None else float(gap_tol)
    cls_obj = fit + cls_pen
    ufm_obj = cls_obj + feat_pen
    gap, ufm_gap = cls_obj - value, ufm_obj - value
    if feasible and ufm_gap < -tol:
        msg = (
            f"UFM objective {ufm_obj:.10g} at the given point is below the claimed optimum "
            f"{value:.10g} by {-ufm_gap:.3g} > tolerance {tol:.3g} (problem {problem.to_dict()}, "
            f"solver method {getattr(sol, 'method', '?')}): the optimum is not optimal"
        )
        if on_negative_gap == "raise":
            raise NegativeGapError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)

    # -- shape -------------------------------------------------------------------------------------
    mu = np.stack([H[y == k].mean(axis=0) for k in range(K)])
    mu_g = (counts @ mu) / N if global_mean == "sample" else mu.mean(axis=0)
    Mbar = mu - mu_g
    Wopt = np.asarray(sol.W, dtype=np.float64)
    mu_opt = np.asarray(sol.class_means, dtype=np.float64).T  # (K, width)
    pcw = pc / pc.sum()
    mu_opt_g = pcw @ mu_opt if global_mean == "sample" else mu_opt.mean(axis=0)
    Mopt = mu_opt - mu_opt_g
    w_mean = float(np.mean(np.linalg.norm(Wn, axis=1)))
    w_opt = float(np.mean(np.linalg.norm(Wopt, axis=1)))

    def _unit(X: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(X)
        return X / n if n > 0 else X

    return {
        "optimum_value": value,
        "optimum_method": getattr(sol, "method", None),
        "optimum_geometry": getattr(sol, "geometry", None),
        "fit": fit,
        "classifier_penalty": cls_pen,
        "classifier_objective": cls_obj,
        "gap": gap,
        "rel_gap": gap / abs(value) if value != 0 else math.nan,
        "feature_penalty": feat_pen,
        "ufm_objective": ufm_obj,
        "ufm_gap": ufm_gap,
        "feasible": bool(feasible),
        "feasibility_violation": viol,
        "gap_tol": tol,
        "w_norm_mean": w_mean,
        "w_norm_mean_opt": w_opt,
        "w_norm_ratio": w_mean / w_opt if w_opt > 0 else math.nan,
        "procrustes_means": procrustes_distance(Mbar, Mopt),
        "procrustes_W": procrustes_distance(Wn, Wopt),
        # one rotation for both blocks (each unit-normalised first): the RMS of the two block
        # residuals, sqrt((‖M̄R − M*‖² + ‖WR − W*‖²)/2), again in [0, 2]
        "procrustes_joint": procrustes_distance(
            np.vstack([_unit(Mbar), _unit(Wn)]), np.vstack([_unit(Mopt), _unit(Wopt)])
        ),
    }
