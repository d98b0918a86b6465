"""Tests of reduction.metrics against independent computations written here."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import calinski_harabasz_score

from reduction import CollapseAccumulator, collapse_metrics, stream_collapse_metrics

pytestmark = pytest.mark.unit

KEYS = [
    "nc1", "nc1_papyan", "cdnv", "nc2", "nc2_ortho", "nc2_means", "nc2_means_ortho",
    "equinorm_W", "equinorm_means", "equiangularity_W", "equiangularity_means", "nc3",
    "nc3_papyan", "nc4", "nc4_agreement", "tr_sigma_w", "tr_sigma_b",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# an independent, deliberately naive reference (loops over samples and classes, eigh, no streaming)


def reference(H, y, W, b=None, global_mean="sample"):
    H = np.asarray(H, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    K, d = W.shape
    N = H.shape[0]
    mu = np.stack([H[y == k].mean(axis=0) for k in range(K)])
    mu_g = H.mean(axis=0) if global_mean == "sample" else mu.mean(axis=0)
    Mb = mu - mu_g
    Sw = np.zeros((d, d))
    for i in range(N):
        v = H[i] - mu[y[i]]
        Sw += np.outer(v, v)
    Sw /= N
    Sb = sum(np.outer(m, m) for m in Mb) / K
    evals, evecs = np.linalg.eigh(Sb)
    order = np.argsort(evals)[::-1][: K - 1]
    lam, V = evals[order], evecs[:, order]
    keep = lam > lam[0] * 1e-12
    Sb_pinv = (V[:, keep] / lam[keep]) @ V[:, keep].T
    out = {"tr_sigma_w": np.trace(Sw), "tr_sigma_b": np.trace(Sb)}
    out["nc1"] = np.trace(Sw) / np.trace(Sb)
    out["nc1_papyan"] = np.trace(Sw @ Sb_pinv) / K
    var = [np.mean(np.sum((H[y == k] - mu[k]) ** 2, axis=1)) for k in range(K)]
    pairs = [(k, m) for k in range(K) for m in range(k + 1, K)]
    out["cdnv"] = np.mean(
        [(var[k] + var[m]) / (2 * np.sum((mu[k] - mu[m]) ** 2)) for k, m in pairs]
    )

    def dist(X, T):
        G = X @ X.T
        return np.linalg.norm(G / np.linalg.norm(G) - T / np.linalg.norm(T))

    P = np.eye(K) - 1.0 / K
    out["nc2"], out["nc2_ortho"] = dist(W, P), dist(W, np.eye(K))
    out["nc2_means"], out["nc2_means_ortho"] = dist(Mb, P), dist(mu, np.eye(K))

    def eqn(X):
        nr = np.linalg.norm(X, axis=1)
        return np.std(nr) / np.mean(nr)

    def eqa(X):
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        return np.mean([abs(U[k] @ U[m] + 1 / (K - 1)) for k, m in pairs])

    out["equinorm_W"], out["equinorm_means"] = eqn(W), eqn(Mb)
    out["equiangularity_W"], out["equiangularity_means"] = eqa(W), eqa(Mb)
    cos = [H[i] @ W[y[i]] / (np.linalg.norm(H[i]) * np.linalg.norm(W[y[i]])) for i in range(N)]
    out["nc3"] = 1 - np.mean(cos)
    out["nc3_papyan"] = np.linalg.norm(W.T / np.linalg.norm(W) - Mb.T / np.linalg.norm(Mb)) ** 2
    bb = np.zeros(K) if b is None else np.asarray(b, dtype=np.float64)
    agree = 0
    for i in range(N):
        pred = np.argmax(W @ H[i] + bb)
        ncm = np.argmin([np.sum((H[i] - mu[k]) ** 2) for k in range(K)])
        agree += pred == ncm
    out["nc4_agreement"] = agree / N
    out["nc4"] = 1 - agree / N
    return out


def assert_metrics_close(got, want, rtol=1e-10, atol=1e-12, keys=KEYS):
    for k in keys:
        assert got[k] == pytest.approx(want[k], rel=rtol, abs=atol), (k, got[k], want[k])


def random_problem(rng, K=4, d=6, n=(5, 7, 3, 9), offset=0.0):
    y = np.concatenate([np.full(c, k) for k, c in enumerate(n)])
    rng.shuffle(y)
    centres = rng.normal(size=(K, d)) * 2 + offset
    H = centres[y] + rng.normal(size=(len(y), d))
    W = rng.normal(size=(K, d))
    b = rng.normal(size=K)
    return H, y, W, b


def etf(K, d, r=1.0):
    """Simplex ETF rows (K, d) of norm r, embedded in the first K coordinates (d ≥ K)."""
    P = np.eye(K) - 1.0 / K
    M = np.zeros((K, d))
    M[:, :K] = P / np.linalg.norm(P[0]) * r
    return M


# ------------------------------------------------------------------------------------------------
# metric values


@pytest.mark.parametrize("global_mean", ["sample", "class"])
def test_matches_naive_reference(global_mean):
    rng = np.random.default_rng(1)
    H, y, W, b = random_problem(rng)
    got = collapse_metrics(H, y, W, b, global_mean=global_mean)
    assert_metrics_close(got, reference(H, y, W, b, global_mean), rtol=1e-9)
    assert got["n_samples"] == len(y)
    assert all(isinstance(v, float) for v in got.values())


def test_global_mean_option_changes_imbalanced_result():
    rng = np.random.default_rng(2)
    H, y, W, b = random_problem(rng, n=(2, 20, 3, 9))
    a = collapse_metrics(H, y, W, b, global_mean="sample")
    c = collapse_metrics(H, y, W, b, global_mean="class")
    assert a["nc1"] != pytest.approx(c["nc1"], rel=1e-6)
    with pytest.raises(ValueError, match="global_mean"):
        collapse_metrics(H, y, W, b, global_mean="median")


@pytest.mark.parametrize("K,d", [(3, 3), (5, 8), (10, 16)])
def test_exact_etf_collapse_gives_zero(K, d):
    n = 4
    r = math.sqrt(d)
    M = etf(K, d, r)
    Q, _ = np.linalg.qr(np.random.default_rng(K).normal(size=(d, d)))  # arbitrary rotation
    M = M @ Q
    y = np.repeat(np.arange(K), n)
    H = M[y]
    W = 0.37 * M  # classifier ∝ class means (self-duality), b = 0
    got = collapse_metrics(H, y, W)
    for k in KEYS:
        if k in ("tr_sigma_b", "tr_sigma_w", "nc2_ortho", "nc2_means_ortho", "nc4_agreement"):
            continue
        assert abs(got[k]) < 1e-10, (k, got[k])
    assert got["nc4_agreement"] == 1.0
    # tr Σ_B = (1/K) Σ‖μ_k‖² = r² for a centred ETF of radius r
    assert got["tr_sigma_b"] == pytest.approx(r**2, rel=1e-12)


@pytest.mark.parametrize("K", [3, 6])
def test_orthogonal_frame_analytic_values(K):
    d, r, n = K + 2, 2.5, 3
    F = np.zeros((K, d))
    F[:, :K] = np.eye(K) * r
    y = np.tile(np.arange(K), n)
    H = F[y]
    W = F / r
    got = collapse_metrics(H, y, W)
    expected = math.sqrt(2 - 2 * math.sqrt((K - 1) / K))  # ‖I/√K − P/√(K−1)‖_F
    assert got["nc2_ortho"] < 1e-12
    assert got["nc2_means_ortho"] < 1e-12  # uncentred means are the orthogonal frame
    assert got["nc2"] == pytest.approx(expected, rel=1e-12)
    assert got["nc2_means"] < 1e-12  # a centred orthogonal frame is a simplex ETF
    assert got["equiangularity_W"] == pytest.approx(1 / (K - 1), rel=1e-12)  # cos = 0
    assert got["equinorm_W"] < 1e-12
    assert got["nc3_papyan"] == pytest.approx(expected**2, rel=1e-10)
    assert got["nc1"] < 1e-20 and got["nc3"] < 1e-12 and got["nc4"] == 0.0


def test_two_class_analytic():
    # class 0 at −1 ± s, class 1 at +1 ± s on the first axis: Σ_W = s², Σ_B = 1 there
    s = 0.3
    H = np.zeros((8, 3))
    H[:, 0] = [-1 - s, -1 + s, -1 - s, -1 + s, 1 - s, 1 + s, 1 - s, 1 + s]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    W = np.array([[-1.0, 0, 0], [1.0, 0, 0]])
    got = collapse_metrics(H, y, W)
    assert got["nc1"] == pytest.approx(s**2, rel=1e-12)
    assert got["nc1_papyan"] == pytest.approx(s**2 / 2, rel=1e-12)  # (1/K) s²/1
    assert got["cdnv"] == pytest.approx(s**2 / 4, rel=1e-12)  # (s² + s²)/(2·2²)
    assert got["nc2"] < 1e-12  # ±e1 is the 2-class simplex
    assert got["nc3"] == pytest.approx(0.0, abs=1e-15)  # all samples on the right side of 0
    assert got["nc4"] == 0.0


def test_nc3_known_angle():
    # every sample at 60° from its class row: nc3 = 1 − cos 60° = 0.5
    K, d = 3, 6
    W = np.zeros((K, d))
    W[:, :K] = np.eye(K)
    H = np.zeros((K, d))
    H[:, :K] = np.eye(K) * math.cos(math.pi / 3)
    H[:, K:] = np.eye(K) * math.sin(math.pi / 3)
    got = collapse_metrics(H, np.arange(K), W)
    assert got["nc3"] == pytest.approx(0.5, rel=1e-12)


def test_nc4_known_disagreement():
    # a bias moves the classifier boundary to x = 0.5 while the nearest-mean boundary is at
    # −0.04: the samples with x ∈ (−0.04, 0.5) disagree (3 of 8)
    x = np.array([-1.2, -0.8, -0.1, 0.1, 0.2, 0.4, 0.8, 1.6])
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    # class means: (−0.7, 0.62); nearest-mean boundary at −0.04
    H = np.stack([x, np.zeros_like(x)], axis=1)
    W = np.array([[-1.0, 0.0], [1.0, 0.0]])
    b = np.array([0.5, -0.5])  # predicts 1 iff 2x − 1 > 0 ⇔ x > 0.5
    got = collapse_metrics(H, y, W, b)
    mu0, mu1 = x[y == 0].mean(), x[y == 1].mean()
    ncm = (np.abs(x - mu1) < np.abs(x - mu0)).astype(int)
    pred = (x > 0.5).astype(int)
    assert got["nc4"] == pytest.approx(np.mean(ncm != pred))
    assert got["nc4"] == pytest.approx(3 / 8)


def test_trace_ratio_matches_calinski_harabasz():
    rng = np.random.default_rng(3)
    K, n, d = 5, 40, 7
    y = np.repeat(np.arange(K), n)
    H = rng.normal(size=(K, d))[y] * 1.5 + rng.normal(size=(K * n, d))
    W = rng.normal(size=(K, d))
    N = K * n
    ch = calinski_harabasz_score(H, y)
    got = collapse_metrics(H, y, W)
    assert got["nc1"] == pytest.approx((N - K) / ((K - 1) * ch), rel=1e-10)


@settings(max_examples=60, deadline=None)
@given(
    K=st.integers(2, 6),
    d=st.integers(1, 8),
    n=st.integers(1, 4),
    scale=st.sampled_from([1e-6, 1.0, 1e4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_nc1_papyan_never_negative(K, d, n, scale, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n)
    H = rng.normal(size=(K * n, d)) * scale + rng.normal() * 10 * scale
    W = rng.normal(size=(K, d))
    got = collapse_metrics(H, y, W)
    assert got["nc1_papyan"] >= 0.0
    assert got["nc1"] >= 0.0 and got["cdnv"] >= 0.0
    assert np.isfinite(got["nc1_papyan"])


def test_rank_aware_inverse_beats_plain_pinv():
    # d ≫ K with tiny within-class noise: the rank-(K−1) inverse matches the eigh reference, while
    # Σ_B's K-th (null, rounding-noise) eigenpair must not enter
    rng = np.random.default_rng(4)
    K, n, d = 4, 5, 30
    y = np.repeat(np.arange(K), n)
    H = rng.normal(size=(K, d))[y] * 3 + 1e-3 * rng.normal(size=(K * n, d)) + 50.0
    W = rng.normal(size=(K, d))
    got = collapse_metrics(H, y, W)
    assert got["nc1_papyan"] == pytest.approx(reference(H, y, W)["nc1_papyan"], rel=1e-8)


# ------------------------------------------------------------------------------------------------
# accumulator


def _batches(H, y, rng, n_batches):
    cuts = np.sort(rng.choice(np.arange(1, len(y)), size=n_batches - 1, replace=False))
    return list(zip(np.split(H, cuts), np.split(y, cuts)))


def test_batch_order_and_split_do_not_matter():
    rng = np.random.default_rng(5)
    H, y, W, b = random_problem(rng, K=5, d=7, n=(30, 11, 25, 4, 17), offset=3.0)
    full = collapse_metrics(H, y, W, b)
    for trial in range(4):
        parts = _batches(H, y, rng, n_batches=2 + 3 * trial)
        order = rng.permutation(len(parts))
        acc = CollapseAccumulator(5, 7, W=W, b=b)
        for i in order:
            acc.update(*parts[i])
        acc.set_class_means()
        for i in rng.permutation(len(parts)):
            acc.update_ncm(*parts[i])
        assert_metrics_close(acc.compute(), full)


def test_failed_update_leaves_accumulator_unchanged():
    rng = np.random.default_rng(15)
    H, y, W, b = random_problem(rng)
    acc = CollapseAccumulator(4, 6, W=W, b=b, chunk_rows=5).update(H[:10], y[:10])
    bad = H[10:].copy()
    bad[-1, 0] = np.inf  # in the last chunk, after good chunks were processed
    with pytest.raises(ValueError, match="NaN or inf"):
        acc.update(bad, y[10:])
    acc.update(H[10:], y[10:]).set_class_means().update_ncm(H, y)
    assert_metrics_close(acc.compute(), collapse_metrics(H, y, W, b))


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_internal_chunking_does_not_matter(chunk_rows):
    rng = np.random.default_rng(14)
    H, y, W, b = random_problem(rng, K=5, d=7, n=(30, 11, 25, 4, 17), offset=3.0)
    acc = CollapseAccumulator(5, 7, W=W, b=b, chunk_rows=chunk_rows).update(H, y)
    acc.set_class_means().update_ncm(H, y)
    assert_metrics_close(acc.compute(), collapse_metrics(H, y, W, b))


def test_single_sample_batches_and_missing_classes():
    rng = np.random.default_rng(6)
    H, y, W, b = random_problem(rng, K=3, d=4, n=(4, 3, 5))
    got = stream_collapse_metrics(lambda: zip(H[:, None, :], y[:, None]), 3, 4, W, b)
    assert_metrics_close(got, collapse_metrics(H, y, W, b))


def test_merge_equals_one_pass_and_crosses_processes():
    rng = np.random.default_rng(7)
    H, y, W, b = random_problem(rng, K=4, d=5, n=(20, 15, 9, 30), offset=-2.0)
    one = collapse_metrics(H, y, W, b)
    parts = _batches(H, y, rng, n_batches=3)
    # pass 1 on three "processes", states shipped as pickled dicts
    accs = [CollapseAccumulator(4, 5, W=W, b=b).update(h, t) for h, t in parts]
    shipped = [
        CollapseAccumulator.from_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
        for a in accs
    ]
    revived = pickle.loads(pickle.dumps(accs[0]))  # the object itself pickles too
    assert revived._buf is None and torch.equal(revived.scatter, accs[0].scatter)
    total = CollapseAccumulator(4, 5, W=W, b=b)
    for a in shipped:
        total.merge(a)
    moments_only = {k: v for k, v in total.compute().items() if k not in ("nc4", "nc4_agreement")}
    assert_metrics_close(moments_only, one, keys=[k for k in KEYS if not k.startswith("nc4")])
    assert math.isnan(total.compute()["nc4"])  # no nearest-mean pass yet
    # pass 2 on each process with the merged means, then merge the pass-2 counts
    means = total.class_means()
    for a, (h, t) in zip(accs, parts):
        a.set_class_means(means).update_ncm(h, t)
    final = CollapseAccumulator(4, 5, W=W, b=b)
    for a in accs:
        final.merge(a)
    assert_metrics_close(final.compute(), one)


def test_float32_input_accumulates_in_float64():
    rng = np.random.default_rng(8)
    K, n, d = 3, 2000, 4
    y = np.repeat(np.arange(K), n)
    # large common offset + small spread: float32 sums of squares would lose most digits
    H32 = 1000.0 + rng.normal(size=(K, d))[y] * 1e-2 + 1e-3 * rng.normal(size=(K * n, d))
    H32 = H32.astype(np.float32)
    W = rng.normal(size=(K, d)).astype(np.float32)
    acc = CollapseAccumulator(K, d, W=W)
    for h, t in _batches(H32, y, rng, 7):
        acc.update(torch.from_numpy(h), torch.from_numpy(t))
    assert acc.scatter.dtype == torch.float64 and acc.sums.dtype == torch.float64
    ref = reference(H32.astype(np.float64), y, W.astype(np.float64))
    got = acc.compute()
    for k in ("nc1", "nc1_papyan", "cdnv", "nc3", "tr_sigma_w"):
        assert got[k] == pytest.approx(ref[k], rel=1e-9), k


@pytest.mark.parametrize("sort", [True, False])
def test_update_never_modifies_caller_data(sort):
    rng = np.random.default_rng(13)
    H, y, W, _ = random_problem(rng)
    if sort:  # already-sorted labels take the no-permutation path (in-place centring)
        order = np.argsort(y, kind="stable")
        H, y = H[order], y[order]
    Ht, keep_np = torch.from_numpy(H.copy()), H.copy()
    CollapseAccumulator(4, 6, W=W).update(Ht, y).update(H, y)
    np.testing.assert_array_equal(Ht.numpy(), keep_np)
    np.testing.assert_array_equal(H, keep_np)


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(9)
    H, y, W, b = random_problem(rng)
    a = collapse_metrics(H, y, W, b)
    t = collapse_metrics(torch.from_numpy(H), torch.from_numpy(y), torch.from_numpy(W), b)
    assert_metrics_close(t, a, rtol=1e-13, atol=1e-15)
    c = collapse_metrics(H.tolist(), y.tolist(), W.tolist(), b.tolist())
    assert_metrics_close(c, a, rtol=1e-13, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(10)
    H, y, W, b = random_problem(rng, K=4, d=6, n=(50, 40, 30, 20))
    cpu = collapse_metrics(H, y, W, b)
    Hc = torch.from_numpy(H).float().cuda()
    gpu = collapse_metrics(Hc, torch.from_numpy(y).cuda(), W, b)
    ref = collapse_metrics(H.astype(np.float32), y, W, b)
    assert_metrics_close(gpu, ref, rtol=1e-9, atol=1e-12)
    assert gpu["nc1"] == pytest.approx(cpu["nc1"], rel=1e-5)
    acc = CollapseAccumulator(4, 6, W=W, b=b)
    acc.update(Hc, torch.from_numpy(y).cuda())
    assert acc.device.type == "cuda" and acc.scatter.device.type == "cuda"


def test_compute_requires_consistent_classifier():
    rng = np.random.default_rng(11)
    H, y, W, b = random_problem(rng)
    acc = CollapseAccumulator(4, 6).update(H, y)
    with pytest.raises(ValueError, match="needs the classifier"):
        acc.compute()
    got = acc.compute(W, b)
    assert math.isnan(got["nc3"]) and math.isnan(got["nc4"])  # documented: per-sample needs W
    ref = collapse_metrics(H, y, W, b)
    assert got["nc1"] == pytest.approx(ref["nc1"], rel=1e-12)
    acc2 = CollapseAccumulator(4, 6, W=W, b=b).update(H, y)
    with pytest.raises(ValueError, match="differs"):
        acc2.compute(W * 2, b)
    with pytest.raises(ValueError, match="set_class_means"):
        acc2.update_ncm(H, y)
    acc2.set_class_means(np.zeros((4, 6))).update_ncm(H, y)
    with pytest.raises(ValueError, match="differ"):
        acc2.compute()
    acc2.set_class_means().update_ncm(H[:5], y[:5])
    with pytest.raises(ValueError, match="saw"):
        acc2.compute()


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_messages():
    rng = np.random.default_rng(12)
    H, y, W, b = random_problem(rng)
    with pytest.raises(ValueError, match="labels have length"):
        collapse_metrics(H, y[:-1], W)
    with pytest.raises(ValueError, match="dimension"):
        collapse_metrics(H[:, :-1], y, W)
    with pytest.raises(ValueError, match="2-D"):
        collapse_metrics(H[:, 0], y, W)
    bad = H.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        collapse_metrics(bad, y, W)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        collapse_metrics(bad, y, W)
    Wn = W.copy()
    Wn[0, 0] = np.nan
    with pytest.raises(ValueError, match="W contains"):
        collapse_metrics(H, y, Wn)
    with pytest.raises(ValueError, match=r"no samples"):
        collapse_metrics(H[y != 2], y[y != 2], W)
    y_out = y.copy()
    y_out[0] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        collapse_metrics(H, y_out, W)
    y_out[0] = -1
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        collapse_metrics(H, y_out, W)
    with pytest.raises(ValueError, match="integers"):
        collapse_metrics(H, y + 0.5, W)
    with pytest.raises(ValueError, match="more classes"):
        collapse_metrics(H[:3], np.arange(3), W)
    with pytest.raises(ValueError, match="at least 2 classes"):
        collapse_metrics(H, np.zeros(len(y), dtype=int), W[:1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        CollapseAccumulator(1, 6)
    with pytest.raises(ValueError, match=r"W must have shape \(K, d\) = \(4, 7\)"):
        CollapseAccumulator(4, 7, W=W)  # checked at construction, not at the first update
    with pytest.raises(ValueError, match="b given without W"):
        CollapseAccumulator(4, 6, b=b)
    with pytest.raises(ValueError, match="num_classes"):
        collapse_metrics(H, y, W, num_classes=5)
    with pytest.raises(ValueError, match=r"b must have shape"):
        collapse_metrics(H, y, W, b[:2])
    with pytest.raises(ValueError, match="merge"):
        CollapseAccumulator(4, 6).merge(CollapseAccumulator(3, 6))


# ------------------------------------------------------------------------------------------------
# feature scale (internal normalisation)

SCALE_FREE = [k for k in KEYS if k not in ("tr_sigma_w", "tr_sigma_b")]


@pytest.mark.parametrize("c", [1e160, 1e-160, 1e300, 1e-300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_extreme_feature_scales_give_the_same_metrics(c, with_bias):
    # h ↦ c·h (with b ↦ c·b, so the classifier's decisions are unchanged) leaves every NC metric
    # unchanged; before the internal normalisation 1e160 overflowed (nc1 = NaN, wrong nc4) and
    # 1e-160 underflowed
    rng = np.random.default_rng(20)
    H, y, W, b = random_problem(rng, K=5, d=7, n=(30, 11, 25, 4, 17), offset=3.0)
    b = b if with_bias else None
    ref = collapse_metrics(H, y, W, b)
    got = collapse_metrics(H * c, y, W, None if b is None else b * c)
    assert_metrics_close(got, ref, rtol=1e-12, atol=1e-14, keys=SCALE_FREE)
    assert 0 < ref["nc4"] < 1 and got["nc4"] == ref["nc4"]  # a nontrivial decision count
    assert all(math.isfinite(got[k]) for k in SCALE_FREE)
    # the traces are reported in the input's units: c²·tr, or inf/0 where that leaves float64
    # (c = 1e-160 lands among the subnormals, which hold only a few digits)
    want = ref["tr_sigma_w"] * c * c
    if want in (0.0, math.inf):
        assert got["tr_sigma_w"] == want
    else:
        assert got["tr_sigma_w"] == pytest.approx(want, rel=1e-2, abs=0.0)
    # a classifier at an extreme scale too (decisions again unchanged with b ↦ c·w·b)
    w = 1e-150 if c > 1 else 1e150
    got2 = collapse_metrics(H * c, y, W * w, None if b is None else b * c * w)
    assert_metrics_close(got2, ref, rtol=1e-12, atol=1e-14, keys=SCALE_FREE)


def test_power_of_two_scale_is_bitwise_identical():
    # the internal scale is a power of two, so dividing by it is exact: 2^k·H gives the very same
    # floating-point results (traces exactly 4^k times larger)
    rng = np.random.default_rng(21)
    H, y, W, b = random_problem(rng)
    ref = collapse_metrics(H, y, W, b)
    for k in (-600, 300):
        got = collapse_metrics(H * 2.0**k, y, W, b * 2.0**k)
        for key in SCALE_FREE:
            assert got[key] == ref[key], key
        assert got["tr_sigma_b"] == ref["tr_sigma_b"] * 4.0**k


def test_streaming_scale_grows_and_merges_across_scales():
    # batches arrive in increasing magnitude (the internal scale is raised, and the statistics
    # rescaled, several times); partial accumulators with different scales are merged; a state
    # dict keeps the scale
    rng = np.random.default_rng(22)
    H, y, W, b = random_problem(rng, K=4, d=5, n=(20, 15, 9, 30))
    H = H * np.exp(rng.uniform(-30, 30, size=(len(y), 1)))  # rows spread over 26 decades
    c = 1e150
    ref = collapse_metrics(H, y, W, b)
    order = np.argsort(np.abs(H).max(axis=1))
    acc = CollapseAccumulator(4, 5, W=W, b=b * c)
    for idx in np.array_split(order, 6):
        acc.update(H[idx] * c, y[idx])
    acc.set_class_means().update_ncm(H * c, y)
    assert_metrics_close(acc.compute(), ref, rtol=1e-9, atol=1e-12, keys=SCALE_FREE)
    np.testing.assert_allclose(
        acc.class_means() / c,
        np.stack([H[y == k].mean(axis=0) for k in range(4)]),
        rtol=1e-9,
        atol=1e-300,
    )
    small, large = order[: len(y) // 2], order[len(y) // 2 :]
    parts = [CollapseAccumulator(4, 5, W=W, b=b * c).update(H[i] * c, y[i]) for i in (small, large)]
    assert parts[0].scale < parts[1].scale
    revived = CollapseAccumulator.from_state_dict(pickle.loads(pickle.dumps(parts[0].state_dict())))
    assert revived.scale == parts[0].scale
    total = revived.merge(parts[1])
    total.set_class_means().update_ncm(H * c, y)
    assert_metrics_close(total.compute(), ref, rtol=1e-9, atol=1e-12, keys=SCALE_FREE)


def test_zero_batches_then_tiny_features():
    # an all-zero first batch must not pin the scale at 1 (1e-200 features would underflow)
    rng = np.random.default_rng(23)
    H, y, W, _ = random_problem(rng)
    Z = np.zeros((3, 6))
    Hz, yz = np.vstack([Z, H]), np.r_[y[:3], y]
    ref = collapse_metrics(Hz, yz, W)
    acc = CollapseAccumulator(4, 6, W=W).update(Z, y[:3]).update(H * 1e-200, y)
    acc.set_class_means().update_ncm(Hz * 1e-200, yz)
    assert_metrics_close(acc.compute(), ref, rtol=1e-12, atol=1e-14, keys=SCALE_FREE)
