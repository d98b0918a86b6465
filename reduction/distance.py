"""Distance of a trained network's last layer to the global optimum of its UFM
(docs/THEORY.md §3, §6, §10).

The deep network's features h_i, classifier W and bias b are evaluated on the UFM objective of a
``ufm.Problem`` (same loss conventions as ``ufm``: mean cross-entropy, or (1/(2N))‖Z − Y‖_F² with
one-hot Y; penalties (λ_W/2)‖W‖_F², (λ_b/2)‖b‖² for a regularised bias, (λ_H/2)‖H‖_F² for free
features) and compared with the optimum from ``ufm.solve``:

* ``gap`` = classifier-side objective (fit + classifier penalties) − UFM*. For LayerNorm features
  the UFM relaxes the network, so gap ≥ 0 (THEORY §3); the same holds for ``ufm_gap`` (the full
  UFM objective, adding the feature penalty for free features) at any point. A negative value
  beyond ``gap_tol`` means the "optimum" is not optimal (solver tolerance, or features that are
  not what the problem assumes): by default a :class:`NegativeGapError` is raised;
  ``on_negative_gap="warn"`` warns instead. Infeasible points (``feasible`` False) are not
  checked, since the bound does not apply to them.
* feasibility is one-sided: the bound holds for every centred point *inside* the ball ‖h_i‖ ≤ r,
  not only on the sphere (proof in :func:`distance_to_optimum`); only norms above r, or
  non-centred features for a centred problem, make a point infeasible.
* geometry: the ratio of mean classifier row norms to the optimum's; orthogonal-Procrustes
  distances min_R ‖A R − B‖_F (R orthogonal) between Frobenius-normalised configurations (centred
  class means M̄, classifier W, both stacked with one shared rotation); and NC2 / NC3 measured
  against the optimum's own geometry (``nc2_ufm``, ``nc2_means_ufm``, ``nc3_ufm``), which is the
  simplex ETF for CE but an orthogonal frame for MSE without bias, and the numerical optimum for
  imbalanced classes (THEORY §4, §10).
* without a problem, :func:`problem_from_features` builds the LayerNorm-sphere UFM from the data
  (λ_W must be given).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from deepcollapse.output import missing_extra

try:
    import torch
except ImportError:  # the [torch] extra is not installed: one line naming it
    raise missing_extra("torch", "torch", "reduction.distance_to_optimum") from None
from scipy.linalg import orthogonal_procrustes
from scipy.special import logsumexp

import ufm

from .explain import Report

if TYPE_CHECKING:
    from .collect import Layout, Pool
from .formulas import _unit_scale
from .metrics import _as_tensor

__all__ = [
    "NegativeGapError",
    "distance_to_optimum",
    "problem_from_features",
    "procrustes_distance",
]


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
    A, B = _unit_scale(np.asarray(A, dtype=np.float64)), _unit_scale(np.asarray(B, np.float64))
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


# --------------------------------------------------------------------------------------------------
# input handling


def _inputs(
    features: Any, labels: Any, W: Any, b: Any, K: int | None = None, d: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and convert (features (N, d), labels (N,), W (K, d), b (K,) or None) to float64
    numpy (labels int64). K and d default to W's shape."""
    H = _np64(features, "features")
    Wn = _np64(W, "W")
    if Wn.ndim != 2:
        raise ValueError(f"W must be 2-D (K, d) with one row per class, got shape {Wn.shape}")
    K = Wn.shape[0] if K is None else K
    if d is None:
        if H.ndim != 2:
            raise ValueError(f"features must be 2-D (N, d) with samples as rows, got {H.shape}")
        d = H.shape[1]
    if H.ndim != 2 or H.shape[1] != d:
        raise ValueError(f"features must have shape (N, width = {d}), got {H.shape}")
    if Wn.shape != (K, d):
        raise ValueError(f"W must have shape (K, width) = ({K}, {d}), got {Wn.shape}")
    if K < 2:
        raise ValueError(f"need at least 2 classes (rows of W), got K = {K}")
    if H.dtype.kind not in "fiu" or Wn.dtype.kind not in "fiu":
        raise ValueError("features and W must be real numbers")
    H, Wn = H.astype(np.float64, copy=False), Wn.astype(np.float64, copy=False)
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
    bn: np.ndarray | None = None
    if b is not None:
        bn = _np64(b, "b").reshape(-1)
        if bn.shape != (K,) or bn.dtype.kind not in "fiu" or not np.all(np.isfinite(bn)):
            raise ValueError(f"b must be a finite vector of shape ({K},), got {bn.shape}")
        bn = bn.astype(np.float64, copy=False)
    return H, y, Wn, bn


def _row_norms(H: np.ndarray) -> np.ndarray:
    """‖h_i‖ without overflow or underflow of the squares (power-of-two rescaling is exact)."""
    m = float(np.max(np.abs(H), initial=0.0))
    if m == 0:
        return np.zeros(H.shape[0])
    t = math.ldexp(1.0, min(math.frexp(m)[1], 1023))
    return np.linalg.norm(H / t, axis=1) * t


def _centring_violation(H: np.ndarray, r: float) -> float:
    """max_i |1ᵀh_i| / (r√d), on a common power-of-two scale (no overflow at extreme scales)."""
    m = float(np.max(np.abs(H), initial=0.0))
    if m == 0:
        return 0.0
    t = math.ldexp(1.0, min(math.frexp(m)[1], 1023))
    return float(np.max(np.abs((H / t).sum(axis=1)))) / ((r / t) * math.sqrt(H.shape[1]))


def _check_lam(lam: Any) -> float:
    if (
        lam is None
        or isinstance(lam, bool)
        or not isinstance(lam, numbers.Real)
        or not math.isfinite(float(lam))
        or float(lam) <= 0
    ):
        raise ValueError(
            "lam (λ_W, the weight decay of the classifier) is required when no ufm.Problem is "
            f"given and must be a positive finite number, got {lam!r}"
        )
    return float(lam)


def _check_loss(loss: Any) -> str:
    if loss not in ufm.problem.LOSSES:
        raise ValueError(f"loss must be one of {ufm.problem.LOSSES}, got {loss!r}")
    return str(loss)


def problem_from_features(
    features: Any,
    labels: Any,
    W: Any,
    b: Any = None,
    *,
    lam: float | None,
    loss: str = "ce",
    tol: float = 1e-4,
) -> ufm.Problem:
    """The LayerNorm-sphere UFM (THEORY §3) of a network's last layer, built from the data.

    K = rows of W; per-class counts from ``labels``; width d = columns of ``features``;
    λ_W = ``lam`` (> 0, required); ``loss`` "ce" or "mse"; bias "free" if ``b`` is given (the
    network has an undecayed bias), else "none"; features "layernorm" with

    * radius r = the **largest** row norm max_i ‖h_i‖, snapped to √d when within ``tol``·√d
      (LayerNorm outputs: ε only shrinks them, so max ≈ √d and the UFM is the one of THEORY §3).
      The max, not the RMS, because then every feature lies in the ball ‖h‖ ≤ r, where the UFM
      value is a valid lower bound (see :func:`distance_to_optimum`); with the RMS radius the rows
      longer than the RMS would be infeasible and the bound could fail.
    * centred iff every row sums to ≈ 0: |1ᵀh_i| ≤ ``tol``·r·√d (LayerNorm without affine shift).
    """
    H, y, Wn, bn = _inputs(features, labels, W, b)
    lam_W = _check_lam(lam)
    loss = _check_loss(loss)
    K, d = Wn.shape
    norms = _row_norms(H)
    r_max = float(norms.max())
    if r_max == 0.0:
        raise ValueError("features are all zero: there is no sphere radius to build a UFM from")
    root_d = math.sqrt(d)
    radius: float | None = None if abs(r_max - root_d) <= tol * root_d else r_max
    r = root_d if radius is None else r_max
    centred = d >= 2 and _centring_violation(H, r) <= tol
    counts = np.bincount(y, minlength=K)
    per_class: int | list[int] = (
        int(counts[0]) if np.all(counts == counts[0]) else [int(c) for c in counts]
    )
    return ufm.Problem(
        loss=loss,
        num_classes=K,
        samples_per_class=per_class,
        width=d,
        lam_W=lam_W,
        bias="free" if bn is not None else "none",
        features="layernorm",
        radius=radius,
        centered=centred,
    )


# --------------------------------------------------------------------------------------------------
# feasibility and geometry helpers


def _liftable(W: np.ndarray, centered: bool) -> bool:
    """Is there a unit v with W v = 0 (and 1ᵀv = 0 when centred)? Then any point inside the ball
    lifts onto the sphere along v with unchanged logits (see :func:`distance_to_optimum`).

    v ∈ 1⊥ with W v = 0 ⟺ W_c v = 0 for W_c = W(I − 11ᵀ/d), a map of rank ≤ d − 1 on 1⊥: such v
    exists iff rank W_c < d' (d' = d − 1 centred, d otherwise).
    """
    K, d = W.shape
    d_eff = d - 1 if centered else d
    if K < d_eff:
        return True  # rank ≤ K < d'
    Wc = W - W.mean(axis=1, keepdims=True) if centered else W
    return int(np.linalg.matrix_rank(_unit_scale(Wc))) < d_eff


def _gram_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """‖G_X/‖G_X‖_F − G_Y/‖G_Y‖_F‖_F with G = X Xᵀ; NaN if X or Y is 0."""
    X, Y = _unit_scale(X), _unit_scale(Y)
    GX, GY = X @ X.T, Y @ Y.T
    nx, ny = np.linalg.norm(GX), np.linalg.norm(GY)
    if nx == 0 or ny == 0:
        return math.nan
    return float(np.linalg.norm(GX / nx - GY / ny))


def _class_map(M: np.ndarray, W: np.ndarray, rtol: float = 1e-8) -> np.ndarray | None:
    """A = M W⁺ (K×K) from the SVD of W, singular values below rtol·s_max dropped (the optimum's
    W is often rank-deficient, e.g. rank K − 1 for CE; its rounding-level singular values must
    not be inverted). None if W = 0."""
    U, s, Vt = np.linalg.svd(_unit_scale(W), full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return None
    keep = s > rtol * s[0]
    u = float(np.max(np.abs(W)))
    scale = math.ldexp(1.0, min(math.frexp(u)[1], 1023))  # the factor _unit_scale removed
    return ((M @ Vt[keep].T) / s[keep]) @ U[:, keep].T / scale


def _cosines(H: np.ndarray, T: np.ndarray) -> np.ndarray:
    """C[i, k] = cos(h_i, t_k); 0 where a vector is zero (as in the metrics)."""
    H, T = _unit_scale(H), _unit_scale(T)
    denom = np.outer(np.linalg.norm(H, axis=1), np.linalg.norm(T, axis=1))
    dots = H @ T.T
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def _mean_cos_gap(H: np.ndarray, y: np.ndarray, T: np.ndarray) -> float:
    """1 − (1/N) Σ_i cos(h_i, t_{y_i})."""
    return float(1.0 - _cosines(H, T)[np.arange(len(y)), y].mean())


def _mean_cos_gap_points(sol: Any, T: np.ndarray) -> float:
    """The same at the solver's optimum, from its points (one feature per point j with label
    counts c_jk): 1 − (1/N) Σ_j Σ_k c_jk cos(h_j, t_k), without expanding to N samples."""
    points = getattr(sol, "points", None)
    Hp = getattr(sol, "H_points", None)
    if points is None or Hp is None:  # a Solution-like object without the point reduction
        H = np.asarray(sol.H, dtype=np.float64).T
        return _mean_cos_gap(H, sol.problem.labels, T)
    C = np.asarray(points.counts, dtype=np.float64)  # (K, P)
    cos = _cosines(np.asarray(Hp, dtype=np.float64).T, T)  # (P, K)
    return float(1.0 - np.sum(C.T * cos) / C.sum())


def _same_problem(a: ufm.Problem, b: ufm.Problem) -> bool:
    """Equal up to the class counts being proportional (LayerNorm UFM without groups, whose
    value depends only on the class proportions)."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("samples_per_class")
    db.pop("samples_per_class")
    if da != db or a.groups != b.groups:
        return False
    ca, cb = a.counts, b.counts
    if a.features == "layernorm" and not a.groups:
        return bool(np.array_equal(ca * cb.sum(), cb * ca.sum()))
    return bool(np.array_equal(ca, cb))


# --------------------------------------------------------------------------------------------------
# the distance


def distance_to_optimum(
    features: Any = None,
    labels: Any = None,
    W: Any = None,
    b: Any = None,
    problem: ufm.Problem | None = None,
    *,
    lam: float | None = None,
    loss: str | None = None,
    solution: Any = None,
    gap_tol: float | None = None,
    feasibility_tol: float = 1e-4,
    on_negative_gap: Literal["raise", "warn"] = "raise",
    global_mean: Literal["sample", "class"] = "sample",
    model: Any = None,
    loader: Any = None,
    classifier: str | None = None,
    layer: str | None = None,
    pool: Pool = "flatten",
    layout: Layout | None = None,
    device: Any = None,
) -> Report:
    """Compare (features (N, d) as rows, labels (N,), W (K, d), b (K,) or None) with the optimum.

    **From a model, in one call**: ``distance_to_optimum(model=m, loader=dl, classifier="fc",
    lam=5e-3)`` hooks the input of the classifier module ``classifier`` over one pass of
    ``loader`` (or the pooled output of ``layer``, with ``pool`` and ``layout`` as in
    :func:`reduction.collect`), takes W and b from that module, and measures them as below;
    ``features``, ``labels`` and ``W`` are then not given. The classifier's bias, if it has one,
    makes the UFM's bias "free" (an undecayed bias).

    The result is a :class:`reduction.explain.Report`: a dict that prints its headline numbers
    first, each with its meaning and which way is better (``.table()`` prints every key).

    ``problem``: the ``ufm.Problem`` to compare with. ``None``: built from the data by
    :func:`problem_from_features` (LayerNorm sphere, radius = largest feature norm, centred iff
    the features are, bias "free" iff ``b`` is given) with λ_W = ``lam`` (required then) and
    ``loss`` ("ce" if None). With a problem, ``lam`` must be None and ``loss`` None or equal.
    ``solution``: a ``ufm.Solution`` of the problem to reuse (default ``ufm.solve(problem)``).
    ``gap_tol``: allowed negative gap, default 1e-7 + 1e-6·|UFM*| (solver tolerance); features
    longer than r by a factor 1 + e ≤ 1 + ``feasibility_tol`` add (λ_W/2)‖W‖²((1+e)² − 1) to it
    (the exact bound for them, by rescaling W and H).
    ``feasibility_tol``: relative tolerance of the feasibility checks (float32 LayerNorm outputs,
    whose LN ε shrinks norms by ~1e-5): ‖h_i‖ ≤ r(1 + tol) and, when centred, |1ᵀh_i| ≤ tol·r·√d.

    **Ball = sphere** (why feasibility is one-sided). Let v be a unit vector with W v = 0 (and
    1ᵀv = 0 when centred). For ‖h‖ ≤ r, h' = h − ⟨h,v⟩v + (r² − ‖h‖² + ⟨h,v⟩²)^{1/2} v has
    ‖h'‖ = r, the same centring and the same logits W h' + b = W h + b, and the penalty is on W
    only: so fit + penalties at (W, b, H) ≥ UFM*(sphere). Such v exists whenever rank W < d'
    (d' = d − 1 centred, d otherwise; always when K < d'); for CE it suffices that d' ≥ K, since
    the ball minimiser can take 1ᵀW = 0 (CE is shift-invariant and P_K W has the smaller norm), so
    rank W ≤ K − 1 < d' there and the ball value equals the sphere value. When neither holds
    (MSE with d' ≤ K and W of full rank d', or CE with d' < K) the check stays two-sided.

    **Geometry of the optimum.** With G = W Wᵀ and G* = W* W*ᵀ of the optimum,
    nc2_ufm = ‖G/‖G‖_F − G*/‖G*‖_F‖_F (= nc2 against P_K when the optimum is a simplex ETF, = nc2
    against I_K for an orthogonal frame), nc2_means_ufm the same for the centred class means
    against the optimum's. nc3_ufm = 1 − (1/N) Σ_i cos(h_i, t_{y_i}) with t = A W and
    A = M* W*⁺ (K×K; M* the optimum's class means, rows). Derivation: at an optimum every feature
    lies in the row space of W* (first-order conditions: free features λ_H h_i = −W*ᵀ∇_zℓ_i;
    LayerNorm features 2ν_i h_i = −P_1 W*ᵀ∇_zℓ_i with P_1 = I − 11ᵀ/d and W*1 = 0, because that
    component of W changes no logit and costs penalty), so M* = A W* exactly. A is invariant to
    rotating the optimum ((M*Q)(W*Q)⁺ = M*W*⁺), so at any optimal point (W*Q, H*Q) the target is
    t = A W* Q = M* Q, the class's own feature: nc3_ufm = 0 for every geometry, with no Procrustes
    step. For an ETF optimum A ∝ P_K, so t_k ∝ w_k − w̄ (the classifier row with the class-mean
    row removed, which CE cannot see). ``nc3_ufm_opt`` is its value at the solver's optimum
    (0 up to solver precision; > 0 only for points mixing labels, i.e. tied inputs).

    Returns (headline keys first): optimum_value, gap, rel_gap, nc2_ufm, nc3_ufm, w_norm_ratio,
    optimum_method, optimum_geometry, optimum_status (the solution's: "closed_form",
    "certified", "not_certified"), fit, classifier_penalty (λ_W/2‖W‖²
    + λ_b/2‖b‖² if the bias is regularised), classifier_objective = fit + classifier_penalty,
    gap = classifier_objective − optimum_value, rel_gap = gap/|optimum_value|, feature_penalty
    (λ_H/2‖H‖_F², free features only), ufm_objective, ufm_gap, feasible, feasibility_violation
    (the one-sided violation that decides ``feasible``: max(max_i ‖h_i‖/r − 1, 0) or, when the
    ball argument does not apply, max_i |‖h_i‖ − r|/r; with the centring violation
    max_i |1ᵀh_i|/(r√d) when centred), sphere_violation (two-sided distance to the sphere, for
    information), ball_bound (whether points inside the ball are covered), gap_tol, w_norm_mean,
    w_norm_mean_opt, w_norm_ratio, procrustes_means, procrustes_W, procrustes_joint, nc2_ufm,
    nc2_means_ufm, nc3_ufm, nc3_ufm_opt, radius (the problem's r, None for free features),
    centered, problem (``ufm.Problem.to_dict()``, JSON-able).
    """
    if model is not None:
        if features is not None or labels is not None or W is not None or b is not None:
            raise ValueError("give either model= (with loader= and classifier=) or "
                             "features, labels and W, not both")
        if loader is None or classifier is None:
            raise ValueError("model= needs loader= and classifier= (the classifier module's "
                             "name)")
        from .collect import classifier_features

        features, labels, W, b = classifier_features(
            model, loader, classifier, layer=layer, pool=pool, layout=layout, device=device)
    elif loader is not None or classifier is not None or layer is not None:
        raise ValueError("loader=, classifier= and layer= apply with model= only")
    if features is None or labels is None or W is None:
        raise ValueError("give features, labels and W (or model=, loader= and classifier=)")
    if on_negative_gap not in ("raise", "warn"):
        raise ValueError(f"on_negative_gap must be 'raise' or 'warn', got {on_negative_gap!r}")
    if global_mean not in ("sample", "class"):
        raise ValueError(f"global_mean must be 'sample' or 'class', got {global_mean!r}")
    if problem is None:
        H, y, Wn, bn = _inputs(features, labels, W, b)
        problem = problem_from_features(
            H, y, Wn, bn, lam=lam, loss="ce" if loss is None else loss, tol=feasibility_tol
        )
        if solution is not None and not (
            isinstance(getattr(solution, "problem", None), ufm.Problem)
            and _same_problem(solution.problem, problem)
        ):
            raise ValueError(
                "solution is not a solution of the problem built from the data "
                f"({problem.to_dict()}); pass that problem explicitly or drop solution"
            )
    else:
        if not isinstance(problem, ufm.Problem):
            raise ValueError(f"problem must be a ufm.Problem, got {type(problem).__name__}")
        if lam is not None:
            raise ValueError(
                f"give either problem or lam, not both (the problem has lam_W = {problem.lam_W})"
            )
        if loss is not None and loss != problem.loss:
            raise ValueError(f"loss = {loss!r} but the problem's loss is {problem.loss!r}")
        H, y, Wn, bn = _inputs(features, labels, W, b, problem.K, problem.width)
    K = problem.K
    N = H.shape[0]
    counts = np.bincount(y, minlength=K)
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
        ratio = _row_norms(H) / r
        excess = max(float(ratio.max()) - 1.0, 0.0)
        # norms up to r(1 + excess) pass within feasibility_tol; (W(1+e), H/(1+e)) lies in the
        # ball with the same logits, so the bound there is gap ≥ −(λ_W/2)‖W‖²((1+e)² − 1)
        slack = 0.5 * problem.lam_W * float(np.sum(Wn**2)) * ((1.0 + excess) ** 2 - 1.0)
        sphere = float(np.max(np.abs(ratio - 1.0)))
        cent = _centring_violation(H, r) if problem.centered else 0.0
        ball = _liftable(Wn, problem.centered) or (problem.loss == "ce" and problem.d_eff >= K)
        viol = max(excess if ball else sphere, cent)
        sphere_viol = max(sphere, cent)
        feasible = viol <= feasibility_tol
    else:
        viol, sphere_viol, feasible, ball = 0.0, 0.0, True, True  # free features: any H
        slack = 0.0

    sol = ufm.solve(problem) if solution is None else solution
    value = float(sol.value)
    tol = (1e-7 + 1e-6 * abs(value) if gap_tol is None else float(gap_tol)) + slack
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
    w_mean = float(np.mean(_row_norms(Wn)))
    w_opt = float(np.mean(_row_norms(Wopt)))

    A = _class_map(mu_opt, Wopt)
    if A is None:  # zero optimum (W* = 0): no classifier geometry to compare with
        nc3_ufm = nc3_ufm_opt = math.nan
    else:
        nc3_ufm = _mean_cos_gap(H, y, A @ Wn)
        nc3_ufm_opt = _mean_cos_gap_points(sol, A @ Wopt)

    def _unit(X: np.ndarray) -> np.ndarray:
        X = _unit_scale(X)
        n = np.linalg.norm(X)
        return X / n if n > 0 else X

    out = {
        "optimum_value": value,
        "gap": gap,
        "rel_gap": gap / abs(value) if value != 0 else math.nan,
        "nc2_ufm": _gram_distance(Wn, Wopt),
        "nc3_ufm": nc3_ufm,
        "w_norm_ratio": w_mean / w_opt if w_opt > 0 else math.nan,
        "optimum_method": getattr(sol, "method", None),
        "optimum_geometry": getattr(sol, "geometry", None),
        "optimum_status": getattr(sol, "status", "unknown"),
        "fit": fit,
        "classifier_penalty": cls_pen,
        "classifier_objective": cls_obj,
        "feature_penalty": feat_pen,
        "ufm_objective": ufm_obj,
        "ufm_gap": ufm_gap,
        "feasible": bool(feasible),
        "feasibility_violation": float(viol),
        "sphere_violation": float(sphere_viol),
        "ball_bound": bool(ball),
        "gap_tol": tol,
        "w_norm_mean": w_mean,
        "w_norm_mean_opt": w_opt,
        "procrustes_means": procrustes_distance(Mbar, Mopt),
        "procrustes_W": procrustes_distance(Wn, Wopt),
        # one rotation for both blocks (each unit-normalised first): the RMS of the two block
        # residuals, sqrt((‖M̄R − M*‖² + ‖WR − W*‖²)/2), again in [0, 2]
        "procrustes_joint": procrustes_distance(
            np.vstack([_unit(Mbar), _unit(Wn)]), np.vstack([_unit(Mopt), _unit(Wopt)])
        ),
        "nc2_means_ufm": _gram_distance(Mbar, Mopt),
        "nc3_ufm_opt": nc3_ufm_opt,
        "radius": problem.r if problem.features == "layernorm" else None,
        "centered": bool(problem.centered) if problem.features == "layernorm" else None,
        "problem": problem.to_dict(),
    }
    return Report(out)


def group_distance(features: Any, group_ids: Any, solution: Any) -> dict[str, float]:
    """Distance of a network's per-context features to the generalised UFM optimum (THEORY §11).

    features (N, d) rows, group_ids (N,) the distinct-context index of each sample (0..G−1, the
    row order of the problem's count matrix), solution: a ``ufm.Solution`` of
    ``ufm.Problem.from_label_counts`` with one optimal feature per group. Returns
    ``procrustes_groups`` = min_R ‖Ĥ R − Ĥ*‖_F between the Frobenius-normalised (G, d) group
    features (the network's averaged over each group's samples, which a deterministic network
    maps to one point anyway), and ``gram_distance_groups`` = ‖Ĝ − Ĝ*‖_F between the normalised
    G×G Gram matrices (rotation-free, in [0, 2]).
    """
    H = _np64(features, "features")
    g = np.asarray(group_ids).astype(np.int64)
    Hp = np.asarray(solution.H_points, dtype=np.float64)
    G = int(g.max()) + 1 if g.size else 0
    if Hp.shape[1] != G and Hp.shape[0] == G:
        Hp = Hp.T
    if H.ndim != 2 or g.shape != (H.shape[0],) or Hp.shape != (H.shape[1], G):
        raise ValueError(
            f"features {H.shape}, group_ids {g.shape} and the optimum's group features "
            f"{Hp.shape} do not describe the same G = {G} groups in width {H.shape[-1]}"
        )
    sums = np.zeros((G, H.shape[1]))
    np.add.at(sums, g, H)
    counts = np.bincount(g, minlength=G)[:, None]
    Hn = sums / np.maximum(counts, 1)
    Hs = Hp.T
    Gn, Gs = Hn @ Hn.T, Hs @ Hs.T
    nn_, ns = np.linalg.norm(Gn), np.linalg.norm(Gs)
    gram = float(np.linalg.norm(Gn / nn_ - Gs / ns)) if nn_ > 0 and ns > 0 else math.nan
    return {"procrustes_groups": procrustes_distance(Hn, Hs), "gram_distance_groups": gram}
