"""Neural-collapse metrics (docs/THEORY.md §6): a streaming, mergeable accumulator and functions.

Notation: features h_i ∈ R^d (rows of an (N, d) array), labels y_i ∈ {0..K−1}, class counts n_k,
class means μ_k, global mean μ_G (sample mean by default, or the mean of the class means),
M̄ = [μ_k − μ_G] ∈ R^{K×d}, Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, Σ_B = (1/K) M̄ᵀM̄.

Accumulator design (why it is exact and stable):

* Statistics are kept per class as counts n_k, sums s_k and within-class squared distances
  q_k = Σ_{i∈k} ‖h_i − μ_k‖², plus the pooled within-class scatter S_W = Σ_i (h_i − μ_{y_i})(·)ᵀ
  (d×d), all in float64. A batch is cut into row chunks (cast into a reusable float64 buffer, so
  float32 input never needs a full float64 copy); a chunk is centred in place on its *own* class
  means and its scatter is one matmul (h − μ^chunk_y)ᵀ(h − μ^chunk_y); chunks, batches and
  accumulators are combined with Chan's parallel
  formula S = S_a + S_b + Σ_k (n_a n_b / n) δ_k δ_kᵀ, δ_k = μ_k^b − μ_k^a. This never forms the
  uncentred Σ h hᵀ − N μ μᵀ difference, so tiny within-class scatter (deep collapse) does not
  drown in cancellation, and merging is exact algebra (order changes only the rounding).
  Only the pooled scatter is stored (not one d×d matrix per class): every metric needs only Σ_W and
  the per-class traces q_k, which keeps memory at d² + O(Kd) for any K.
* Per-sample quantities cannot be recovered from moments: nc3 needs cos(h_i, w_{y_i}) and nc4
  compares argmax_k (W h_i + b)_k with argmin_k ‖h_i − μ_k‖², which is not a function of any
  moments of the data. So W (and b) may be given at construction and nc3 is accumulated in the same
  pass; nc4 needs the final class means and therefore a second pass: call
  :meth:`CollapseAccumulator.set_class_means` after the first pass (or pass the means merged across
  processes), then :meth:`CollapseAccumulator.update_ncm` over the same data. Without W at
  construction nc3 is NaN; without the second pass nc4 is NaN (both documented in ``compute``).
  :func:`collapse_metrics` does both passes on in-memory data.
* Scale: every metric except tr Σ_W and tr Σ_B is invariant to h ↦ c·h (c > 0), so the statistics
  are kept for h/s with s a power of two ≥ max|h| seen so far (chosen from the data, raised, and
  the stored statistics rescaled, when a larger batch arrives; merges align the two scales). Sums
  of squares then neither overflow (features ~1e160) nor underflow (~1e-160), and since dividing by
  a power of two is exact, H and 2^k·H give identical metrics. The nearest-mean pass rescales each
  batch by its own power of two, and the classifier is kept pre-divided by one for the cosines and
  logits. tr_sigma_w / tr_sigma_b are reported in the input's units (s² times the scaled traces:
  ±inf or 0 only when the true value is outside the float64 range).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from deepcollapse.output import missing_extra

try:
    import torch
except ImportError:  # the [torch] extra is not installed: one line naming it
    raise missing_extra("torch", "torch", "reduction's collapse metrics") from None
from scipy.spatial.distance import pdist

from .formulas import (
    _pow2_at_least,
    _unit_scale,
    equiangularity,
    equinorm,
    etf_target,
    nc1_papyan,
    nc2_distance,
    self_duality,
)

__all__ = [
    "CollapseAccumulator",
    "collapse_metrics",
    "etf_target",
    "nc2_distance",
    "stream_collapse_metrics",
]

GlobalMean = Literal["sample", "class"]
_F64 = torch.float64
_INTS = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------
# input handling


def _as_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """numpy / torch / sequence → torch tensor (no copy where possible), on ``device`` if given."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = x if isinstance(x, np.ndarray) else np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot convert {type(x).__name__} to an array") from exc
        if arr.dtype.kind not in "biuf":
            raise ValueError(_not_numbers(name, arr))
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if device is not None and t.device != device:
        t = t.to(device)
    return t


def _not_numbers(name: str, arr: np.ndarray) -> str:
    """The one-line message for an array of strings or objects where numbers are expected."""
    what = "strings" if arr.dtype.kind in "US" else f"dtype {arr.dtype}"
    if name == "labels":
        return (f"labels must be integers 0..K−1, got {what}; map them first, e.g. "
                "np.unique(labels, return_inverse=True)[1]")
    return f"{name} must be numbers, got {what}"


def _differ(mine: torch.Tensor | None, theirs: torch.Tensor | None, dev: Any) -> bool:
    """Whether two optional tensors differ: one given and not the other, or unequal values
    (``theirs`` moved to ``dev`` first, unless None)."""
    if mine is None or theirs is None:
        return (mine is None) != (theirs is None)
    return not torch.equal(mine, theirs if dev is None else theirs.to(dev))


def _features(x: Any, dim: int, device: torch.device | None, cast: bool = True) -> torch.Tensor:
    """Validate an (N, d) feature batch; return it on ``device`` (as float64 if ``cast``).

    NaN/inf are detected on the float64 column sums (any NaN or ±inf reaches them), which costs
    O(d) extra instead of a full O(Nd) isfinite pass; ``update`` does the same on its class sums.
    """
    t = _as_tensor(x, "features", device)
    if t.ndim != 2:
        raise ValueError(
            f"features must be 2-D (N, d) with samples as rows, got shape {tuple(t.shape)}"
        )
    if t.shape[1] != dim:
        raise ValueError(f"features have dimension {t.shape[1]}, expected d = {dim}")
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INTS):
        raise ValueError(f"features must be real numbers, got dtype {t.dtype}")
    if cast:
        t = t.to(_F64)  # reductions in float64 whatever the input precision (float32/16 features)
        _check_finite(t.sum(dim=0), "features")
    return t


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or inf")


def _max_abs(t: torch.Tensor) -> float:
    """max_i |t_i| as a Python float (0 for an empty tensor; NaN if t holds NaN or ±inf).

    One min/max reduction in the input dtype: no |t| copy of a large batch.
    """
    if t.numel() == 0:
        return 0.0
    lo_t, hi_t = torch.aminmax(t)
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan
    return max(-lo, hi)


def _labels(y: Any, n: int, num_classes: int, device: torch.device | None) -> torch.Tensor:
    """Validate integer labels in [0, K) with one label per feature row; return int64 on device."""
    t = _as_tensor(y, "labels", device)
    if t.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise ValueError(f"labels have length {t.shape[0]} but features have {n} rows")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError("labels must be integers")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"labels must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def _classifier(
    W: Any, b: Any, num_classes: int, dim: int, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate W (K, d) and optional b (K,); return float64 tensors on device."""
    Wt = _as_tensor(W, "W", device)
    if Wt.ndim != 2 or tuple(Wt.shape) != (num_classes, dim):
        raise ValueError(
            f"W must have shape (K, d) = ({num_classes}, {dim}), got {tuple(Wt.shape)}"
        )
    Wt = Wt.to(_F64)
    if not bool(torch.isfinite(Wt).all()):
        raise ValueError("W contains NaN or inf")
    bt = None
    if b is not None:
        bt = _as_tensor(b, "b", device).to(_F64).reshape(-1)
        if bt.shape[0] != num_classes:
            raise ValueError(f"b must have shape ({num_classes},), got {tuple(bt.shape)}")
        if not bool(torch.isfinite(bt).all()):
            raise ValueError("b contains NaN or inf")
    return Wt, bt


# --------------------------------------------------------------------------------------------------
# the accumulator


class CollapseAccumulator:
    """Streaming, mergeable collapse statistics (float64; CPU or any torch device).

    Parameters
    ----------
    num_classes, dim:
        K ≥ 2 and the feature width d.
    device:
        where the statistics live (``None``: the device of the first batch; numpy → CPU).
    W, b:
        optional classifier (K, d) and bias (K,). Needed *during the pass* for the per-sample nc3
        and for nc4; may also be given only to :meth:`compute` for the moment-based metrics.
    global_mean:
        μ_G = sample mean ``"sample"`` (default, THEORY §6) or mean of class means ``"class"``.
    chunk_rows:
        rows per internal chunk (default 2²²/d, i.e. 32 MiB float64 buffers); results do not
        depend on it beyond rounding.

    Usage (data that does not fit in memory, or spread over processes)::

        acc = CollapseAccumulator(K, d, W=W, b=b)
        for x, y in loader: acc.update(features(x), y)   # pass 1 (merge partial accumulators here)
        acc.set_class_means()                            # freeze μ_k for the nearest-mean rule
        for x, y in loader: acc.update_ncm(features(x), y)   # pass 2, only for nc4
        metrics = acc.compute()
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        device: torch.device | str | None = None,
        *,
        W: Any = None,
        b: Any = None,
        global_mean: GlobalMean = "sample",
        chunk_rows: int | None = None,
    ) -> None:
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"need at least 2 classes, got num_classes = {num_classes}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        if global_mean not in ("sample", "class"):
            raise ValueError(f"global_mean must be 'sample' or 'class', got {global_mean!r}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.global_mean: GlobalMean = global_mean
        self.device: torch.device | None = torch.device(device) if device is not None else None
        if b is not None and W is None:
            raise ValueError("b given without W")
        self.W: torch.Tensor | None = None
        self.b: torch.Tensor | None = None
        self._Wu: torch.Tensor | None = None  # W / u and b / u, u = power of two ≥ max|W|
        self._bu: torch.Tensor | None = None
        if W is not None:  # validate now; moved to the statistics' device in _allocate
            self._set_classifier(*_classifier(W, b, self.num_classes, self.dim, None))
        self._allocated = False
        # rows per internal chunk: two float64 (chunk_rows, d) buffers of 32 MiB each by default
        self.chunk_rows = int(chunk_rows) if chunk_rows is not None else max(1, 2**22 // self.dim)
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        self._buf: tuple[torch.Tensor, ...] | None = None
        if self.device is not None:
            self._allocate(self.device)

    # -- state -------------------------------------------------------------------------------------
    def _set_classifier(self, W: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Store W, b and their copies pre-divided by a power of two u ≥ max|W|: per-sample cosines
        and argmax logits are scale-free, and this keeps them finite for any scale of W."""
        self.W, self.b = W, b
        if W is None:
            self._Wu = self._bu = None
            return
        m = float(W.abs().max()) if W.numel() else 0.0
        u = _pow2_at_least(m) if m > 0 else 1.0
        self._Wu = W / u
        self._bu = None if b is None else b / u

    def _allocate(self, device: torch.device) -> None:
        K, d = self.num_classes, self.dim
        self.device = device
        self.counts = torch.zeros(K, dtype=_F64, device=device)  # n_k (float64: exact below 2^53)
        self.sums = torch.zeros(K, d, dtype=_F64, device=device)  # s_k = Σ_{i∈k} h_i
        self.within_sq = torch.zeros(K, dtype=_F64, device=device)  # q_k = Σ_{i∈k} ‖h_i − μ_k‖²
        self.scatter = torch.zeros(d, d, dtype=_F64, device=device)  # S_W (pooled, centred)
        self.cos_sum = torch.zeros((), dtype=_F64, device=device)  # Σ_i cos(h_i, w_{y_i})
        self.cos_count = 0  # samples that contributed to cos_sum (all of them, if W was given)
        self.ncm_means: torch.Tensor | None = None  # μ_k reference for nc4 (set_class_means)
        self.ncm_agree = 0  # #{i : argmax(W h_i + b) = argmin_k ‖h_i − μ_k‖}
        self.ncm_count = 0
        # sums, within_sq and scatter are kept for h/scale (see the module docstring);
        # seen_max = max|h| so far (0: every statistic is an exact zero, any scale represents it)
        self.scale = 1.0
        self.seen_max = 0.0
        if self.W is not None:
            self._set_classifier(self.W.to(device), None if self.b is None else self.b.to(device))
        self._allocated = True

    def _rescale(self, new_scale: float) -> None:
        """Re-express the stored statistics for h/new_scale (exact: the factor is 2^k)."""
        if self.seen_max > 0.0 and new_scale != self.scale:
            f = self.scale / new_scale
            self.sums *= f
            self.within_sq *= f * f
            self.scatter *= f * f
        self.scale = new_scale

    def _grow_scale(self, m: float) -> None:
        """Make the scale cover a batch whose max|h| is m (finite)."""
        if m == 0.0:
            return
        new = _pow2_at_least(m)
        if self.seen_max == 0.0 or new > self.scale:
            self._rescale(new)
        self.seen_max = max(self.seen_max, m)

    @property
    def n_samples(self) -> int:
        return int(self.counts.sum().item()) if self._allocated else 0

    def class_means(self) -> np.ndarray:
        """μ_k = s_k / n_k as a float64 (K, d) numpy array; ValueError if a class is empty."""
        self._check_nonempty()
        return (self.sums / self.counts[:, None]).cpu().numpy() * self.scale

    def _check_nonempty(self) -> None:
        if not self._allocated or self.n_samples == 0:
            raise ValueError("no samples accumulated")
        empty = torch.nonzero(self.counts == 0).flatten().tolist()
        if empty:
            raise ValueError(f"class(es) {empty} have no samples")

    # -- pass 1 ------------------------------------------------------------------------------------
    def update(self, features: Any, labels: Any) -> CollapseAccumulator:
        """Add a batch: features (B, d) as rows, labels (B,) in [0, K). Returns self.

        The batch is processed in row chunks through two reusable float64 buffers (cast in,
        centre in place, one (d×c)(c×d) matmul each; chunks merged with Chan's formula), so a
        float32 batch never gets a full float64 copy and the caller's data is never modified.
        """
        if not self._allocated:
            dev = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
            self._allocate(dev)
        x = _features(features, self.dim, self.device, cast=False)
        y = _labels(labels, x.shape[0], self.num_classes, self.device)
        m = _max_abs(x)
        if not math.isfinite(m):  # checked before anything changes: the update is all-or-nothing
            raise ValueError("features contain NaN or inf")
        self._grow_scale(m)
        step = self.chunk_rows
        names = ("counts", "sums", "within_sq", "scatter", "cos_sum")
        saved = {k: getattr(self, k).clone() for k in names} if x.shape[0] > step else None
        saved_cos_count = self.cos_count
        try:
            for i in range(0, x.shape[0], step):
                self._update_chunk(x[i : i + step], y[i : i + step])
        except ValueError:
            # a bad chunk (NaN/inf) after good ones: roll back so an update is all-or-nothing
            if saved is not None:
                for k, v in saved.items():
                    setattr(self, k, v)
                self.cos_count = saved_cos_count
            raise
        return self

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._buf is None or self._buf[0].device != self.device:
            shape = (self.chunk_rows, self.dim)
            self._buf = tuple(torch.empty(shape, dtype=_F64, device=self.device) for _ in "ab")
        return self._buf[0][:rows], self._buf[1][:rows]

    def _update_chunk(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One chunk, shifted by a per-class reference r_k close to the class mean.

        r_k = the running mean μ_k^a where class k was seen, else its first row in this chunk
        (one sample is within the class spread of its mean, so no between-class offset survives
        the shift). With h'_i = h_i − r_{y_i} (computed in the float64 buffer), s'_k = Σ h'_i,
        m'_k = s'_k/n_b and γ_k = n_b²/(n_a + n_b), the exact update is
          S ← S + Σ h'h'ᵀ − Σ_k γ_k m'_k m'_kᵀ,   q_k ← q_k + Σ_{i∈k} ‖h'_i‖² − γ_k ‖m'_k‖²,
        i.e. Chan's formula with δ_k = m'_k (r_k = μ_k^a exactly: same float expression). The
        subtracted terms are O(n_b × within-class variance / n_b): no cancellation.
        """
        c = x.shape[0]
        if c == 0:
            return
        K, d, dev, s = self.num_classes, self.dim, self.device, self.scale
        h, g = self._buffers(c)
        cnt = torch.bincount(y, minlength=K).to(_F64)
        ref = self.sums / self.counts.clamp(min=1.0)[:, None]
        unseen = (self.counts == 0) & (cnt > 0)
        if bool(unseen.any()):
            first = torch.full((K,), c, dtype=torch.int64, device=dev).scatter_reduce_(
                0, y, torch.arange(c, device=dev), reduce="amin"
            )
            idx = torch.nonzero(unseen).flatten()
            ref[idx] = x[first[idx]].to(_F64) / s
        torch.index_select(ref, 0, y, out=g)
        # h' = h/s − r_y in float64 (copy_ then sub_: torch's mixed-dtype sub is ~4x slower)
        h.copy_(x)
        if s != 1.0:
            h.div_(s)  # exact: s is a power of two
        h.sub_(g)
        s1 = torch.zeros(K, d, dtype=_F64, device=dev).index_add_(0, y, h)
        _check_finite(s1, "features")  # NaN/±inf anywhere in the chunk reaches a class sum
        sq = torch.linalg.vector_norm(h, dim=1).square_()
        q1 = torch.zeros(K, dtype=_F64, device=dev).index_add_(0, y, sq)
        m1 = s1 / cnt.clamp(min=1.0)[:, None]
        gamma = cnt * cnt / (self.counts + cnt).clamp(min=1.0)
        if h.device.type == "cpu":
            # numpy's BLAS (OpenBLAS) ran this float64 Gram ~2x faster than torch's CPU BLAS
            # (MKL) on the development machine; both are zero-copy views of the same memory
            S = self.scatter.numpy()
            hn = h.numpy()
            S += hn.T @ hn
        else:
            self.scatter.addmm_(h.T, h)
        self.scatter.addmm_((m1 * gamma[:, None]).T, m1, alpha=-1.0)
        # the true increment is q_b + coef‖δ‖² ≥ 0: clip rounding below zero
        self.within_sq += (q1 - gamma * (m1 * m1).sum(dim=1)).clamp(min=0.0)
        self.sums += s1 + cnt[:, None] * ref
        self.counts += cnt
        if self._Wu is not None:  # cos(h_i, w_{y_i}) for nc3 on the unshifted rows
            # g = h/s from the input itself (cosines depend neither on s nor on u): rebuilding it
            # as r_y + h' would lose every digit of a row much shorter than its class reference
            g.copy_(x)
            if s != 1.0:
                g.div_(s)
            torch.index_select(self._Wu, 0, y, out=h)  # h is free now: the scatter is done
            denom = torch.linalg.vector_norm(g, dim=1) * torch.linalg.vector_norm(h, dim=1)
            dots = h.mul_(g).sum(dim=1)
            # cos := 0 where a vector is zero (undefined direction)
            cos = torch.where(denom > 0, dots / torch.where(denom > 0, denom, 1.0), 0.0)
            self.cos_sum += cos.sum()
            self.cos_count += c

    def _combine(
        self, cnt: torch.Tensor, sums: torch.Tensor, wsq: torch.Tensor, scatter: torch.Tensor
    ) -> None:
        """Chan's parallel update: S = S_a + S_b + Σ_k (n_a n_b/n) δ_k δ_kᵀ, δ_k = μ_b − μ_a,
        with S_b = ``scatter``."""
        na, nb = self.counts, cnt
        n = na + nb
        both = (na > 0) & (nb > 0)
        coef = torch.where(both, na * nb / n.clamp(min=1.0), 0.0)
        delta = sums / nb.clamp(min=1.0)[:, None] - self.sums / na.clamp(min=1.0)[:, None]
        delta = delta * both[:, None]  # a class missing on one side contributes no correction
        self.scatter += scatter
        self.scatter.addmm_((delta * coef[:, None]).T, delta)
        self.within_sq += wsq + coef * (delta * delta).sum(dim=1)
        self.counts += nb
        self.sums += sums

    def merge(self, other: CollapseAccumulator) -> CollapseAccumulator:
        """Fold ``other`` (same K, d, classifier, NCM reference) into self exactly; → self."""
        if not isinstance(other, CollapseAccumulator):
            raise ValueError(f"can only merge a CollapseAccumulator, got {type(other).__name__}")
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge accumulators of (K, d) = {(other.num_classes, other.dim)} into "
                f"{(self.num_classes, self.dim)}"
            )
        if other.global_mean != self.global_mean:
            raise ValueError("cannot merge accumulators with different global_mean options")
        if not other._allocated:
            return self
        if not self._allocated:
            assert other.device is not None  # an allocated accumulator has its device
            self._allocate(other.device)
        dev = self.device
        if self.n_samples == 0 and self.W is None and self.cos_count == 0 and other.W is not None:
            # an empty accumulator adopts the classifier of the first one merged into it
            self._set_classifier(other.W.to(dev), None if other.b is None else other.b.to(dev))
        if self.ncm_means is None and self.ncm_count == 0 and other.ncm_means is not None:
            self.ncm_means = other.ncm_means.to(dev)  # likewise the nearest-class-mean reference
        if other.ncm_means is None and other.ncm_count == 0 and self.ncm_means is not None:
            pass  # other carries no pass-2 counts; nothing to reconcile
        elif _differ(self.ncm_means, other.ncm_means, dev):
            raise ValueError("cannot merge accumulators with different nearest-mean references")
        for name, mine, theirs in (("W", self.W, other.W), ("b", self.b, other.b)):
            if _differ(mine, theirs, dev):
                raise ValueError(f"cannot merge accumulators built with different {name}")
        # bring both to the larger scale (power-of-two factors: exact)
        f = 1.0
        if other.seen_max > 0.0:
            if self.seen_max == 0.0 or other.scale > self.scale:
                self._rescale(other.scale)
            f = other.scale / self.scale
            self.seen_max = max(self.seen_max, other.seen_max)
        self._combine(
            other.counts.to(dev),
            other.sums.to(dev) * f,
            other.within_sq.to(dev) * (f * f),
            scatter=other.scatter.to(dev) * (f * f),
        )
        self.cos_sum += other.cos_sum.to(dev)
        self.cos_count += other.cos_count
        self.ncm_agree += other.ncm_agree
        self.ncm_count += other.ncm_count
        return self

    # -- pass 2 (nc4) ------------------------------------------------------------------------------
    def set_class_means(self, means: Any = None) -> CollapseAccumulator:
        """Fix the class means used by the nearest-class-mean rule of nc4.

        ``None``: this accumulator's own means (call after the full first pass). When the first
        pass was split over processes, pass the means of the merged accumulator to each one.
        """
        if means is None:
            means = self.class_means()
        if not self._allocated:
            dev = means.device if isinstance(means, torch.Tensor) else torch.device("cpu")
            self._allocate(dev)
        m = _as_tensor(means, "means", self.device).to(_F64)
        if tuple(m.shape) != (self.num_classes, self.dim):
            raise ValueError(
                f"means must have shape ({self.num_classes}, {self.dim}), got {tuple(m.shape)}"
            )
        if not bool(torch.isfinite(m).all()):
            raise ValueError("means contain NaN or inf")
        self.ncm_means = m.clone()
        self.ncm_agree = 0
        self.ncm_count = 0
        return self

    def update_ncm(self, features: Any, labels: Any) -> CollapseAccumulator:
        """Second pass: count argmax_k(W h + b)_k == argmin_k ‖h − μ_k‖² (ties → lowest index)."""
        if self.ncm_means is None:
            raise ValueError("call set_class_means() after the first pass before update_ncm()")
        if self.W is None:
            raise ValueError("nc4 needs the classifier: construct the accumulator with W (and b)")
        x = _features(features, self.dim, self.device, cast=False)
        _labels(labels, x.shape[0], self.num_classes, self.device)  # validates the batch
        m = _max_abs(x)
        if not math.isfinite(m):
            raise ValueError("features contain NaN or inf")
        # both rules are invariant to h, μ ↦ h/t, μ/t and (W, b) ↦ (W/u, b/u) (t, u > 0): take t a
        # power of two ≥ max(|h|, |μ|) so that the squares below stay in range at any scale
        m = max(m, float(self.ncm_means.abs().max()))
        t = _pow2_at_least(m) if m > 0 else 1.0
        K, mu = self.num_classes, self.ncm_means / t
        # argmin ‖h − μ_k‖² = argmax (h·μ_k − ½‖μ_k‖²): logits and scores from one matmul
        assert self._Wu is not None  # set with W (checked above)
        Wmu = torch.cat([self._Wu, mu]).T.contiguous()
        half_sq = 0.5 * (mu * mu).sum(dim=1)
        bias = None if self._bu is None else self._bu / t
        agree = torch.zeros((), dtype=torch.int64, device=self.device)
        for i in range(0, x.shape[0], self.chunk_rows):
            h, _ = self._buffers(min(self.chunk_rows, x.shape[0] - i))
            h.copy_(x[i : i + self.chunk_rows])  # float64, chunk by chunk like update()
            if t != 1.0:
                h.div_(t)
            if h.device.type == "cpu":  # numpy's BLAS: faster here, see _update_chunk
                both = torch.from_numpy(h.numpy() @ Wmu.numpy())
            else:
                both = h @ Wmu
            logits, score = both[:, :K], both[:, K:] - half_sq
            if bias is not None:
                logits = logits + bias
            agree += (logits.argmax(dim=1) == score.argmax(dim=1)).sum()
        self.ncm_agree += int(agree.item())
        self.ncm_count += x.shape[0]
        return self

    # -- metrics -----------------------------------------------------------------------------------
    def compute(self, W: Any = None, b: Any = None) -> dict[str, float]:
        """All metrics as floats (THEORY §6).

        W, b: the classifier; if the accumulator was built with W, omit them (or pass the same).
        nc3 is NaN unless W was given at construction (per-sample cosines are summed in the pass);
        nc4 is NaN unless the nearest-class-mean pass (``set_class_means`` + ``update_ncm``) ran,
        and ValueError if it covered a different number of samples than pass 1 or used other means.

        Keys: nc1 = tr Σ_W / tr Σ_B; nc1_papyan = (1/K) tr(Σ_W Σ_B⁺) with Σ_B⁺ from the top K−1
        eigenpairs of Σ_B; cdnv = mean_{k<l} (σ_k² + σ_l²)/(2‖μ_k − μ_l‖²), σ_k² = q_k/n_k;
        nc2 / nc2_ortho = nc2_distance(W, P_K / I_K); nc2_means = nc2_distance(M̄, P_K);
        nc2_means_ortho = nc2_distance([μ_k] uncentred, I_K); equinorm(_W/_means) = std/mean of
        row norms; equiangularity(_W/_means) = mean |cos + 1/(K−1)|;
        nc3 = 1 − (1/N) Σ cos(h_i, w_{y_i});
        nc3_papyan = ‖Wᵀ/‖W‖_F − M̄ᵀ/‖M̄‖_F‖_F²; self_duality = ‖W M̄ᵀ/‖W M̄ᵀ‖_F − P_K/√(K−1)‖_F;
        nc4 = 1 − nc4_agreement (fraction of samples whose
        classifier argmax equals the nearest class mean); tr_sigma_w, tr_sigma_b, n_samples.
        """
        self._check_nonempty()
        K, d = self.num_classes, self.dim
        if W is None:
            if self.W is None:
                raise ValueError("compute needs the classifier W (give it here or at construction)")
            Wt, bt = self.W, self.b
        else:
            Wt, bt = _classifier(W, b, K, d, self.device)
            if self.W is not None and (not torch.equal(Wt, self.W) or _differ(bt, self.b, None)):
                raise ValueError("compute(W, b) differs from the classifier given at construction")
        n = self.counts.cpu().numpy()
        N = float(n.sum())
        if K > N:
            raise ValueError(f"more classes (K = {K}) than samples (N = {int(N)})")
        # everything below is in units of self.scale (h/s), and W is divided by a power of two:
        # each metric is a scale-free ratio, only the two traces are converted back
        s = self.scale
        mu = (self.sums / self.counts[:, None]).cpu().numpy()
        mu_g = (n @ mu) / N if self.global_mean == "sample" else mu.mean(axis=0)
        Mbar = mu - mu_g
        Sw = self.scatter.cpu().numpy() / N
        q = self.within_sq.cpu().numpy()
        W_np = _unit_scale(Wt.cpu().numpy())

        tr_w = float(q.sum() / N)  # = tr Σ_W, from the per-class traces (exact, non-negative)
        tr_b = float((Mbar * Mbar).sum() / K)
        out: dict[str, float] = {
            "n_samples": N,
            "tr_sigma_w": tr_w * s * s,  # in the input's units (inf/0 only if out of range)
            "tr_sigma_b": tr_b * s * s,
        }
        out["nc1"] = tr_w / tr_b if tr_b > 0 else math.inf
        out["nc1_papyan"] = nc1_papyan(Sw, Mbar, K)

        # CDNV over all class pairs k<l; pdist forms the differences directly (no Gram
        # cancellation) and returns them in the same order as triu_indices
        var = q / n
        dist2 = pdist(mu, "sqeuclidean")
        iu = np.triu_indices(K, k=1)
        num = var[iu[0]] + var[iu[1]]
        ratio = np.full_like(dist2, np.inf)
        np.divide(num, 2.0 * dist2, out=ratio, where=dist2 > 0)
        out["cdnv"] = float(ratio.mean())

        P, I = etf_target(K), np.eye(K)
        out["nc2"] = nc2_distance(W_np, P)
        out["nc2_ortho"] = nc2_distance(W_np, I)
        out["nc2_means"] = nc2_distance(Mbar, P)
        out["nc2_means_ortho"] = nc2_distance(mu, I)
        out["equinorm_W"] = equinorm(W_np)
        out["equinorm_means"] = equinorm(Mbar)
        out["equiangularity_W"] = equiangularity(W_np)
        out["equiangularity_means"] = equiangularity(Mbar)

        if self.W is not None and self.cos_count == N:
            out["nc3"] = 1.0 - float(self.cos_sum.item()) / N
        else:
            out["nc3"] = math.nan
        out["self_duality"] = self_duality(W_np, Mbar)
        wn, mn = np.linalg.norm(W_np), np.linalg.norm(Mbar)
        out["nc3_papyan"] = (
            float(np.linalg.norm(W_np.T / wn - Mbar.T / mn) ** 2) if wn > 0 and mn > 0 else math.nan
        )

        if self.ncm_means is None or self.ncm_count == 0:
            out["nc4_agreement"] = math.nan
        else:
            if self.ncm_count != N:
                raise ValueError(
                    f"the nearest-class-mean pass saw {self.ncm_count} samples, pass 1 saw {int(N)}"
                )
            ref = self.ncm_means.cpu().numpy() / s
            # |h/s| ≤ 1: an absolute 1e-9 is 1e-9 of the largest feature entry, at any scale
            if not np.allclose(ref, mu, rtol=0.0, atol=1e-9):
                raise ValueError("nc4 was measured against class means that differ from the data's")
            out["nc4_agreement"] = self.ncm_agree / N
        out["nc4"] = 1.0 - out["nc4_agreement"]
        return out

    # -- serialisation (for merging across processes) ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_buf"] = None  # scratch buffers are not state (and are tens of MiB)
        return state

    def state_dict(self) -> dict[str, Any]:
        """CPU numpy state, picklable; rebuild with :meth:`from_state_dict` and :meth:`merge`."""
        if not self._allocated:
            raise ValueError("empty accumulator has no state")
        st: dict[str, Any] = {
            "num_classes": self.num_classes,
            "dim": self.dim,
            "global_mean": self.global_mean,
            "counts": self.counts.cpu().numpy(),
            "sums": self.sums.cpu().numpy(),
            "within_sq": self.within_sq.cpu().numpy(),
            "scatter": self.scatter.cpu().numpy(),
            "cos_sum": float(self.cos_sum.item()),
            "cos_count": self.cos_count,
            "ncm_agree": self.ncm_agree,
            "ncm_count": self.ncm_count,
            "scale": self.scale,  # sums, within_sq and scatter are for h / scale
            "seen_max": self.seen_max,
        }
        for key, val in (("W", self.W), ("b", self.b), ("ncm_means", self.ncm_means)):
            st[key] = None if val is None else val.cpu().numpy()
        return st

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None):
        """Inverse of :meth:`state_dict` (on CPU unless ``device`` is given)."""
        acc = cls(
            state["num_classes"],
            state["dim"],
            device or "cpu",
            W=state["W"],
            b=state["b"],
            global_mean=state["global_mean"],
        )
        dev = acc.device
        acc.counts = torch.as_tensor(state["counts"], dtype=_F64, device=dev)
        acc.sums = torch.as_tensor(state["sums"], dtype=_F64, device=dev)
        acc.within_sq = torch.as_tensor(state["within_sq"], dtype=_F64, device=dev)
        acc.scatter = torch.as_tensor(state["scatter"], dtype=_F64, device=dev)
        acc.cos_sum = torch.tensor(state["cos_sum"], dtype=_F64, device=dev)
        acc.cos_count = int(state["cos_count"])
        if state["ncm_means"] is not None:
            acc.ncm_means = torch.as_tensor(state["ncm_means"], dtype=_F64, device=dev)
        acc.ncm_agree, acc.ncm_count = int(state["ncm_agree"]), int(state["ncm_count"])
        acc.scale = float(state["scale"])
        acc.seen_max = float(state["seen_max"])
        return acc


# --------------------------------------------------------------------------------------------------
# plain functions


def collapse_metrics(
    features: Any,
    labels: Any,
    W: Any,
    b: Any = None,
    num_classes: int | None = None,
    *,
    global_mean: GlobalMean = "sample",
) -> dict[str, float]:
    """Collapse metrics of in-memory data (rows of ``features`` are samples; numpy or torch).

    Runs on the device of a torch ``features`` tensor, reduces in float64, and returns the keys of
    :meth:`CollapseAccumulator.compute` (nc3 and nc4 included: both passes are done here).
    K = W.shape[0]; ``num_classes``, if given, must agree.
    """
    Wt = _as_tensor(W, "W")
    if Wt.ndim != 2:
        raise ValueError(f"W must be 2-D (K, d), got shape {tuple(Wt.shape)}")
    K = Wt.shape[0]
    if num_classes is not None and num_classes != K:
        raise ValueError(f"num_classes = {num_classes} but W has {K} rows")
    h = _as_tensor(features, "features")
    if h.ndim != 2:
        raise ValueError(
            f"features must be 2-D (N, d) with samples as rows, got shape {tuple(h.shape)}"
        )
    if h.shape[1] != Wt.shape[1]:
        raise ValueError(f"features have dimension {h.shape[1]} but W has {Wt.shape[1]} columns")
    if K < 2:
        raise ValueError(f"need at least 2 classes, got K = {K}")
    if K > h.shape[0]:
        raise ValueError(f"more classes (K = {K}) than samples (N = {h.shape[0]})")
    acc = CollapseAccumulator(K, h.shape[1], h.device, W=W, b=b, global_mean=global_mean)
    acc.update(h, labels)
    acc.set_class_means()
    acc.update_ncm(h, labels)
    return acc.compute()


def stream_collapse_metrics(
    batches: Callable[[], Iterable[tuple[Any, Any]]],
    num_classes: int,
    dim: int,
    W: Any,
    b: Any = None,
    *,
    device: torch.device | str | None = None,
    global_mean: GlobalMean = "sample",
) -> dict[str, float]:
    """Two streaming passes over ``batches()`` (a callable returning a fresh iterable of
    (features, labels) batches each time): statistics + nc3, then the nc4 nearest-mean pass."""
    acc = CollapseAccumulator(num_classes, dim, device, W=W, b=b, global_mean=global_mean)
    for h, y in batches():
        acc.update(h, y)
    acc.set_class_means()
    for h, y in batches():
        acc.update_ncm(h, y)
    return acc.compute()
