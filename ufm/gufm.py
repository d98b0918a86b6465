"""Generalised UFM for language modelling (THEORY §11): contexts with several continuations.

A next-token model sees N (context, next token) pairs. Identical contexts are identical inputs, so
at the UFM level they share one feature: the groups are the G distinct contexts, and group g
carries the counts c_g ∈ N^K of the tokens that follow it. The problem

    min_{W, b, h_g ∈ S} (1/N) Σ_g Σ_k c_gk ℓ(W h_g + b, k) + (λ_W/2)‖W‖² (+ (λ_b/2)‖b‖²)

(`Problem.from_label_counts`) is solved and certified at group level by `ufm.solve` /
`ufm.certify`. Its optimum is not collapsed in general: a context followed by several tokens
sits between their directions. `gufm_geometry` measures how far from collapse it is.

Closed forms (THEORY §11): (i) every group with the same distribution p → one shared feature, a
K-dimensional strongly convex problem (`closed_form._shared_closed_form`); (ii) every group
followed by a single token → the classic UFM with the class totals as class sizes (balanced →
THEORY §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .solution import Solution
from .threads import single_thread_blas

__all__ = ["GUFMGeometry", "context_counts", "gufm_geometry"]


def _int_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception:
        raise ValueError(f"{name} must be an integer array") from None
    if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers (token ids), got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def context_counts(
    contexts: Any, next_tokens: Any, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group identical contexts and count their continuations (THEORY §11).

    ``contexts``: (N, T) integer array, one context (e.g. T token ids) per row, or (N,) for
    one-token contexts; ``next_tokens``: (N,) labels in [0, num_classes). Returns
    ``counts`` (G, num_classes) int64 — row g counts the next tokens of the g-th distinct
    context, groups numbered by first occurrence — and ``group_of_sample`` (N,) int64.
    ``Problem.from_label_counts(counts, ...)`` then builds the generalised UFM.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    X = _int_array(contexts, "contexts")
    y = _int_array(next_tokens, "next_tokens")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"contexts must have shape (N, T) or (N,), got {X.shape}")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"next_tokens must have shape (N,) = ({X.shape[0]},), got {y.shape}")
    if X.shape[0] == 0:
        raise ValueError("contexts is empty: need at least one (context, next token) pair")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"next_tokens must lie in [0, {num_classes}), got range "
                         f"[{y.min()}, {y.max()}]")
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # groups by first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group = rank[inverse]
    counts = np.zeros((order.size, num_classes), dtype=np.int64)
    np.add.at(counts, (group, y), 1)
    return counts, group.astype(np.int64)


@dataclass(frozen=True)
class GUFMGeometry:
    """Geometry of the group features of a (generalised) UFM optimum (THEORY §11).

    Per group (point) g: feature h_g, multiplicity m_g (samples), label counts c_g. Samples are
    weighted equally, so group g weighs m_g. Majority label maj(g) = argmax_k c_gk (ties → the
    smallest k).

    - ``gram`` (G×G) = h_gᵀh_g'; ``cosine`` its normalisation.
    - ``nc1`` = tr Σ_W / tr Σ_B over the majority labels (Σ_W = (1/N) Σ_g m_g (h_g − μ_maj(g))
      (·)ᵀ, Σ_B = (1/K') Σ_k (μ_k − μ_G)(·)ᵀ over the K' majority labels present); NaN when
      K' < 2.
    - ``within_fraction`` = tr Σ_W / tr Σ_T ∈ [0, 1] (0: groups with the same majority share one
      feature, i.e. collapse; 1: class means coincide); 0 when all features are equal (tr Σ_T ≤
      (tol·r)²).
    - ``nc1_next_token``: the same ratio with each sample labelled by its own next token (not 0 at
      the optimum once a context has several continuations).
    - ``nc3`` = 1 − (1/N) Σ_g m_g cos(h_g, w_maj(g)).
    - ``gram_distance`` = ‖Ĝ − Ĝ_c‖_F with Ĝ = G/‖G‖_F and G_c the Gram of the features replaced
      by their majority-class means: 0 at collapse.
    - ``feature_rank``: numerical rank of the Gram; ``num_distinct``: distinct features (within
      ``tol``·r); ``collapsed``: within_fraction ≤ tol.
    """

    gram: np.ndarray
    cosine: np.ndarray
    multiplicity: np.ndarray
    majority: np.ndarray
    nc1: float
    within_fraction: float
    nc1_next_token: float
    nc3: float
    gram_distance: float
    feature_rank: int
    num_distinct: int
    collapsed: bool
    tol: float

    def summary(self) -> dict:
        """Scalars for printing or a results row."""
        return {
            "num_groups": int(self.multiplicity.size),
            "num_majority_labels": int(np.unique(self.majority).size),
            "nc1": self.nc1, "within_fraction": self.within_fraction,
            "nc1_next_token": self.nc1_next_token, "nc3": self.nc3,
            "gram_distance": self.gram_distance, "feature_rank": self.feature_rank,
            "num_distinct": self.num_distinct, "collapsed": self.collapsed,
        }


def _scatter(H: np.ndarray, w: np.ndarray, labels: np.ndarray, N: float,
             ) -> tuple[float, float, float, int, np.ndarray]:
    """(tr Σ_W, tr Σ_B, tr Σ_T, classes present, class means per sample) for weighted points."""
    mu_g = H @ w / N
    present = np.unique(labels)
    means = np.zeros((H.shape[0], labels.max() + 1))
    for k in present:
        sel = labels == k
        means[:, k] = H[:, sel] @ w[sel] / w[sel].sum()
    R = H - means[:, labels]
    sw = float(np.sum(w * np.sum(R**2, axis=0))) / N
    sb = float(np.sum((means[:, present] - mu_g[:, None]) ** 2)) / present.size
    st = float(np.sum(w * np.sum((H - mu_g[:, None]) ** 2, axis=0))) / N
    return sw, sb, st, present.size, means


def gufm_geometry(solution: Solution, tol: float = 1e-6) -> GUFMGeometry:
    """Geometry of the optimal group features of ``solution`` (see `GUFMGeometry`)."""
    if not isinstance(solution, Solution):
        raise ValueError(f"solution must be a ufm.Solution, got {type(solution).__name__}")
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    with single_thread_blas():  # small dense matrices (see ufm.threads)
        return _geometry(solution, float(tol))


def _geometry(solution: Solution, tol: float) -> GUFMGeometry:
    Hp = np.asarray(solution.H_points, dtype=np.float64)
    C = solution.points.counts
    m = solution.points.mult
    N = float(m.sum())
    P = Hp.shape[1]
    gram = Hp.T @ Hp
    norms = np.linalg.norm(Hp, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = gram / np.outer(norms, norms)
    majority = np.argmax(C, axis=0)
    scale = max(float(norms.max(initial=0.0)), 1e-300)

    sw, sb, st, present, means = _scatter(Hp, m, majority, N)
    tiny = (1e-24 * scale) ** 2
    nc1 = sw / sb if (present >= 2 and sb > tiny) else math.nan
    # all features equal up to tol·r (e.g. one shared feature, THEORY §11 case (i)): collapsed
    within = 0.0 if st <= (tol * scale) ** 2 else min(1.0, sw / st)

    # each sample labelled by its own next token: expand the points by their label counts
    j_idx, k_idx = np.nonzero(C.T)
    sw2, sb2, _, present2, _ = _scatter(Hp[:, j_idx], C.T[j_idx, k_idx], k_idx, N)
    nc1_tok = sw2 / sb2 if (present2 >= 2 and sb2 > tiny) else math.nan

    Wm = solution.W[majority]  # (P, d)
    wn = np.linalg.norm(Wm, axis=1)
    if np.all(wn > 0) and np.all(norms > 0):
        cos = np.sum(Hp.T * Wm, axis=1) / (wn * norms)
        nc3 = 1.0 - float(m @ cos) / N
    else:
        nc3 = math.nan

    Mc = means[:, majority]
    gc = Mc.T @ Mc
    ng, nc = np.linalg.norm(gram), np.linalg.norm(gc)
    gram_distance = float(np.linalg.norm(gram / ng - gc / nc)) if ng > 0 and nc > 0 else math.nan

    # nonzero eigenvalues of the G × G Gram = those of the d × d matrix Hp Hpᵀ (d ≪ G)
    s = np.linalg.eigvalsh(Hp @ Hp.T) if P else np.zeros(0)
    rank = int(np.sum(s > max(1e-6 * s.max(initial=0.0), 1e-12 * scale**2)))
    # distinct features: greedy clustering at distance tol·scale
    D2 = np.maximum(norms[:, None] ** 2 + norms[None, :] ** 2 - 2 * gram, 0.0)
    thr = (tol * scale) ** 2
    rep: list[int] = []
    for j in range(P):
        if not rep or not np.any(D2[j, rep] <= thr):
            rep.append(j)
    return GUFMGeometry(
        gram=gram, cosine=cosine, multiplicity=m.copy(), majority=majority, nc1=nc1,
        within_fraction=within, nc1_next_token=nc1_tok, nc3=nc3, gram_distance=gram_distance,
        feature_rank=rank, num_distinct=len(rep), collapsed=bool(within <= tol), tol=tol,
    )
