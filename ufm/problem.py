"""The UFM problem: parameters, validation, objective and the point (class/group) reduction.

Objective (THEORY §1, §3), samples class-major, h_i the feature of sample i:

    J(W, b, H) = (1/N) Σ_i ℓ(W h_i + b, y_i) + (λ_W/2)‖W‖_F² + (λ_H/2)‖H‖_F² + (λ_b/2)‖b‖²

with ℓ the cross-entropy or ½‖z − e_y‖² (so MSE is (1/(2N))‖Z − Y‖_F²). Features are free
(penalty λ_H) or constrained to S = {h : 1ᵀh = 0, ‖h‖ = r} ("layernorm"; plain sphere when
``centered=False``; no λ_H penalty).

Point reduction: for fixed (W, b) the objective separates over samples, so samples that carry the
same label and are not tied to other samples (by ``groups``) can share one feature without loss.
A *point* j is a set of samples that share a feature; it carries a label-count vector c_j ∈ R^K
and multiplicity m_j = Σ_k c_jk. The reduced objective is

    (1/N) Σ_j Σ_k c_jk ℓ(W h_j + b, k) + (λ_W/2)‖W‖² + (λ_H/2) Σ_j m_j ‖h_j‖² + (λ_b/2)‖b‖²,

which has the same optimal value as J. Without groups the points are the K classes.

Generalised UFM (THEORY §11, language modelling): every sample belongs to a group (a distinct
context) and group g carries next-label counts c_g ∈ N^K; `Problem.from_label_counts` builds it
from a (G, K) count matrix, and the point reduction above is then exactly the group level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeGuard

import numpy as np

LOSSES = ("ce", "mse")
BIASES = ("none", "free", "regularized")
FEATURES = ("free", "layernorm")


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def as_count_matrix(counts: object, name: str) -> np.ndarray:
    """A 2-D array of non-negative integer counts with positive row sums, as int64."""
    if hasattr(counts, "detach"):  # a torch tensor, on any device
        counts = counts.detach().cpu().numpy()
    try:
        C = np.asarray(counts)
    except Exception:  # ragged input
        raise ValueError(f"{name} must be a 2-D array of non-negative integers") from None
    if C.ndim != 2 or C.shape[0] < 1 or C.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array (groups × labels), got shape "
                         f"{C.shape}")
    if C.dtype.kind == "f":
        if not np.all(np.isfinite(C)) or np.any(C != np.round(C)):
            raise ValueError(f"{name} must hold integers, got non-integer values")
    elif C.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {C.dtype}")
    C = C.astype(np.int64)
    if np.any(C < 0):
        raise ValueError(f"{name} must be non-negative")
    empty = np.flatnonzero(C.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"{name}: every row (group) needs at least one sample; rows "
                         f"{empty[:10].tolist()} are all zero")
    return C


def ce_fit_grad(Z: np.ndarray, C: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per point Σ_k c_jk (lse(z_j) − z_jk) and its gradient m_j softmax(z_j) − c_j, both free of
    cancellation (THEORY §3).

    With k* = argmax z_j and S = Σ_{k≠k*} e^{z_jk − z_jk*}: lse − z_k = (z_k* − z_k) + log1p(S), a
    sum of non-negative terms, and the k* entry of the gradient is (m − c_k*) − m·S/(1 + S). The
    plain form zmax + log Σ e^{z − zmax} − z_y rounds to 0 once margins exceed ~37 (λ → 0).
    """
    P = Z.shape[1]
    cols = np.arange(P)
    imax = np.argmax(Z, axis=0)
    zmax = Z[imax, cols]
    E = np.exp(Z - zmax)
    E[imax, cols] = 0.0
    S = E.sum(axis=0)
    l1p = np.log1p(S)
    loss = np.sum(C * (zmax - Z), axis=0) + m * l1p
    GZ = E * (m / (1.0 + S)) - C
    GZ[imax, cols] = (m - C[imax, cols]) - m * S / (1.0 + S)
    return loss, GZ


@dataclass(frozen=True)
class Points:
    """The point reduction of a problem.

    ``counts``: (K, P) label counts c_j; ``mult``: (P,) multiplicities m_j;
    ``assignment``: (N,) index of the point each sample (class-major order) belongs to.
    """

    counts: np.ndarray
    mult: np.ndarray
    assignment: np.ndarray

    @property
    def P(self) -> int:
        return int(self.mult.size)


@dataclass(frozen=True)
class Problem:
    """A UFM instance (see module docstring for the objective; THEORY §3, §11).

    ``samples_per_class``: int ≥ 1 (balanced) or K ints ≥ 0 (an empty class still has a logit).
    ``radius`` defaults to √width (LayerNorm). ``groups``: optional disjoint lists of sample
    indices (class-major numbering, 0..N−1) whose inputs are identical and so must share one
    feature; `from_label_counts` builds them from a (groups × labels) count matrix.
    """

    loss: str
    num_classes: int
    samples_per_class: int | Sequence[int]
    width: int
    lam_W: float
    lam_H: float = 0.0
    bias: str = "none"
    lam_b: float = 0.0
    features: str = "free"
    radius: float | None = None
    centered: bool = True
    groups: Sequence[Sequence[int] | np.ndarray] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {BIASES}, got {self.bias!r}")
        if not _is_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        K = int(self.num_classes)
        spc = self.samples_per_class
        if _is_int(spc):
            if spc < 1:
                raise ValueError(f"samples_per_class must be >= 1, got {spc!r}")
            counts = (int(spc),) * K
        else:
            try:
                counts = tuple(spc)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError(
                    f"samples_per_class must be an int or a sequence of {K} ints, got {spc!r}"
                ) from None
            # a class may be empty (a vocabulary token never seen as a continuation still has a
            # logit in the softmax), but the problem needs at least one sample
            if (len(counts) != K or not all(_is_int(c) and c >= 0 for c in counts)
                    or sum(counts) < 1):
                raise ValueError(
                    f"samples_per_class must be an int >= 1 or a sequence of num_classes={K} "
                    f"ints >= 0 with a positive sum, got {spc!r}"
                )
            counts = tuple(int(c) for c in counts)
        object.__setattr__(self, "samples_per_class", spc if _is_int(spc) else counts)
        object.__setattr__(self, "_counts", counts)
        if not _is_int(self.width) or self.width < 1:
            raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        _check_positive("lam_W", self.lam_W)
        if self.features == "free":
            _check_positive("lam_H", self.lam_H)
            if self.radius is not None:
                raise ValueError("radius applies only to features='layernorm'; leave it None")
        else:
            if self.lam_H != 0:
                raise ValueError(
                    "lam_H must be 0 for features='layernorm' (features are constrained, "
                    f"not penalised), got {self.lam_H!r}"
                )
            if self.radius is not None:
                _check_positive("radius", self.radius)
            if self.centered and self.width < 2:
                raise ValueError("width must be >= 2 for centred layernorm features")
        if self.bias == "regularized":
            _check_positive("lam_b", self.lam_b)
        elif self.lam_b != 0:
            raise ValueError(f"lam_b must be 0 unless bias='regularized', got {self.lam_b!r}")
        if self.loss == "ce" and self.bias == "free" and 0 in counts:
            empty = [k for k, c in enumerate(counts) if c == 0]
            raise ValueError(
                f"loss='ce' with bias='free' has no minimiser when a class has no samples "
                f"(classes {empty}: their bias would go to −∞); use bias='none' or 'regularized'"
            )
        if not isinstance(self.centered, bool):
            raise ValueError(f"centered must be a bool, got {self.centered!r}")
        # Python floats (float64) whatever was given: a float32 λ must not make the solution's
        # value, W or H float32 (numpy keeps the narrower type of a float32 scalar times arrays)
        for name in ("lam_W", "lam_H", "lam_b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.radius is not None:
            object.__setattr__(self, "radius", float(self.radius))
        if self.groups is not None:
            object.__setattr__(self, "groups", self._validate_groups(self.groups))

    def _validate_groups(
        self, groups: Sequence[Sequence[int] | np.ndarray]
    ) -> tuple[tuple[int, ...], ...]:
        """Check indices and disjointness, vectorised (a language-model problem has N ~ 10⁵)."""
        N = self.N
        msg = "groups must be a sequence of sequences of sample indices"
        try:
            items = [g if isinstance(g, np.ndarray) else list(g) for g in groups]
        except TypeError:
            raise ValueError(msg) from None
        arrays = []
        for g in items:
            a = np.asarray(g)
            if a.ndim != 1:
                raise ValueError(msg)
            if a.size == 0:
                raise ValueError("groups must not contain an empty group")
            if a.dtype.kind not in "iu":
                bad = next((i for i in a.tolist() if not _is_int(i)), None)
                if bad is not None or a.dtype.kind == "b":
                    bad = a.tolist()[0] if bad is None else bad
                    raise ValueError(
                        f"groups: sample index must be an int in [0, {N}), got {bad!r}")
                a = a.astype(np.int64)
            out_of_range = (a < 0) | (a >= N)
            if out_of_range.any():
                bad = a[np.argmax(out_of_range)].item()
                raise ValueError(f"groups: sample index must be an int in [0, {N}), got {bad!r}")
            arrays.append(a.astype(np.int64, copy=False))
        if arrays:
            seen = np.bincount(np.concatenate(arrays), minlength=N)
            if seen.max() > 1:
                raise ValueError(
                    f"groups must be disjoint; sample {int(np.argmax(seen > 1))} appears twice"
                )
        return tuple(tuple(a.tolist()) for a in arrays)

    @classmethod
    def from_label_counts(
        cls,
        counts: object,
        width: int,
        lam_W: float,
        loss: str = "ce",
        *,
        bias: str = "none",
        lam_b: float = 0.0,
        features: str = "layernorm",
        lam_H: float = 0.0,
        radius: float | None = None,
        centered: bool = True,
    ) -> Problem:
        """The generalised UFM of THEORY §11 from a (G, K) matrix of next-label counts.

        Row g holds the counts c_g ∈ N^K of the labels (next tokens) that follow the g-th
        distinct input (context); its samples must share one feature. The objective is
        (1/N) Σ_g Σ_k c_gk ℓ(W h_g + b, k) + (λ_W/2)‖W‖² (+ (λ_b/2)‖b‖²), N = Σ_gk c_gk, with
        h_g on the LayerNorm sphere by default. Samples are numbered class-major and handed to
        the groups in row order, so ``problem.points`` has one point per row, in row order.
        A column may be all zero (a label never observed still has a logit; not with CE and a
        free bias, whose infimum is then not attained).
        """
        C = as_count_matrix(counts, "counts")
        G, K = C.shape
        if K < 2:
            raise ValueError(f"counts must have at least 2 columns (labels), got {K}")
        totals = C.sum(axis=0)
        # first sample index of group g within class k: class offset + counts of earlier groups
        starts = (np.concatenate([[0], np.cumsum(totals)[:-1]])[None, :]
                  + np.cumsum(C, axis=0) - C)
        groups = []
        for g in range(G):
            ks = np.flatnonzero(C[g])
            groups.append(np.concatenate([np.arange(starts[g, k], starts[g, k] + C[g, k])
                                          for k in ks]))
        return cls(
            loss=loss, num_classes=K, samples_per_class=[int(t) for t in totals], width=width,
            lam_W=lam_W, lam_H=lam_H, bias=bias, lam_b=lam_b, features=features, radius=radius,
            centered=centered, groups=groups,
        )

    # ----------------------------------------------------------------- derived quantities
    @property
    def K(self) -> int:
        return int(self.num_classes)

    @property
    def counts(self) -> np.ndarray:
        return np.array(self._counts, dtype=np.int64)  # type: ignore[attr-defined]

    @property
    def N(self) -> int:
        return int(sum(self._counts))  # type: ignore[attr-defined]

    @property
    def r(self) -> float:
        """Feature radius (LayerNorm); √width by default."""
        return float(self.radius) if self.radius is not None else math.sqrt(self.width)

    @property
    def balanced(self) -> bool:
        return len(set(self._counts)) == 1  # type: ignore[attr-defined]

    @property
    def d_eff(self) -> int:
        """Dimension available to the features: width − 1 for centred LayerNorm, else width."""
        return self.width - 1 if (self.features == "layernorm" and self.centered) else self.width

    @property
    def labels(self) -> np.ndarray:
        """Label of each sample, class-major."""
        return np.repeat(np.arange(self.K), self.counts)

    @property
    def groups_label_pure(self) -> bool:
        """True when no group mixes labels (then groups do not change the optimum)."""
        if not self.groups:
            return True
        y = self.labels
        return all(len(set(y[list(g)].tolist())) == 1 for g in self.groups)

    def _grouped_columns(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """One point per group: (sample → point assignment, −1 where ungrouped; label counts)."""
        assignment = np.full(self.N, -1, dtype=np.int64)
        cols: list[np.ndarray] = []
        for g in self.groups or ():
            idx = np.asarray(g)
            assignment[idx] = len(cols)
            cols.append(np.bincount(self.labels[idx], minlength=self.K).astype(float))
        return assignment, cols

    @staticmethod
    def _points(assignment: np.ndarray, cols: list[np.ndarray]) -> Points:
        counts = np.stack(cols, axis=1)
        return Points(counts=counts, mult=counts.sum(axis=0), assignment=assignment)

    @cached_property
    def points(self) -> Points:
        """Class/group-level reduction: one point per group, one per class for the rest."""
        y = self.labels
        assignment, cols = self._grouped_columns()
        for k in range(self.K):
            free = np.flatnonzero((y == k) & (assignment < 0))
            if free.size:
                assignment[free] = len(cols)
                c = np.zeros(self.K)
                c[k] = free.size
                cols.append(c)
        return self._points(assignment, cols)

    def sample_points(self) -> Points:
        """Sample-level reduction: one point per group, every other sample its own point."""
        y = self.labels
        assignment, cols = self._grouped_columns()
        for i in np.flatnonzero(assignment < 0):
            assignment[i] = len(cols)
            c = np.zeros(self.K)
            c[y[i]] = 1.0
            cols.append(c)
        return self._points(assignment, cols)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss, "num_classes": self.K,
            "samples_per_class": list(self._counts) if not self.balanced  # type: ignore[attr-defined]
            else int(self._counts[0]),  # type: ignore[attr-defined]
            "width": self.width, "lam_W": self.lam_W, "lam_H": self.lam_H, "bias": self.bias,
            "lam_b": self.lam_b, "features": self.features,
            "radius": self.r if self.features == "layernorm" else None,
            "centered": self.centered, "num_groups": len(self.groups or ()),
        }


def mse_constant(points: Points, N: int) -> float:
    """(1/(2N)) Σ_j (m_j − ‖c_j‖²/m_j): the part of the MSE fit no shared feature can remove.

    Uses Σ_k c_jk ‖z − e_k‖² = m_j ‖z − c_j/m_j‖² + m_j − ‖c_j‖²/m_j (zero for label-pure points).
    """
    C, m = points.counts, points.mult
    return float(np.sum(m - np.sum(C**2, axis=0) / m) / (2 * N))


def evaluate(
    problem: Problem, W: np.ndarray, Hp: np.ndarray, b: np.ndarray | None, points: Points
) -> tuple[float, float]:
    """(fit, penalty) of the point-level objective at W (K×d), point features Hp (d×P), b."""
    C, m, N = points.counts, points.mult, problem.N
    Z = W @ Hp
    if b is not None:
        Z = Z + b[:, None]
    if problem.loss == "ce":
        fit = float(np.sum(ce_fit_grad(Z, C, m)[0]) / N)
    else:
        Ybar = C / m
        fit = float(np.sum(m * np.sum((Z - Ybar) ** 2, axis=0)) / (2 * N))
        fit += mse_constant(points, N)
    return fit, penalty(problem, W, Hp, b, points)


def penalty(
    problem: Problem, W: np.ndarray, Hp: np.ndarray, b: np.ndarray | None, points: Points
) -> float:
    """(λ_W/2)‖W‖² (+ (λ_H/2)Σ_p m_p‖h_p‖² for free features, + (λ_b/2)‖b‖² if regularised)."""
    pen = 0.5 * problem.lam_W * float(np.sum(W**2))
    if problem.features == "free":
        pen += 0.5 * problem.lam_H * float(np.sum(points.mult * np.sum(Hp**2, axis=0)))
    if problem.bias == "regularized" and b is not None:
        pen += 0.5 * problem.lam_b * float(np.sum(b**2))
    return pen


def check_finite(problem: Problem, value: float, *arrays: np.ndarray | None) -> None:
    """Raise a clear ValueError when an optimum overflowed float64 (extreme λ or radius)."""
    if math.isfinite(value) and all(a is None or np.all(np.isfinite(a)) for a in arrays):
        return
    raise ValueError(
        f"the optimum of this problem is not representable in float64 (lam_W={problem.lam_W!r}, "
        f"lam_H={problem.lam_H!r}, lam_b={problem.lam_b!r}, radius={problem.r!r}): "
        "rescale the problem"
    )
