"""Generalised UFM (THEORY §11): contexts with several next tokens, against hand derivations."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.optimize import brentq, minimize

import ufm

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- the hand-derived case
# Two contexts over the tokens {a, b}: A is followed by "a" n_A times, B by "a" and "b" n_B/2 times
# each. CE, no bias, features on the centred sphere of radius r in width d ≥ 3. For two labels
# only v = w_a − w_b matters (margin t_g = v·h_g), and ‖w_a‖² + ‖w_b‖² ≥ ‖v‖²/2 with equality at
# w_a = −w_b = v/2. B's term ½(softplus(−t) + softplus(t)) ≥ log 2 with equality at t = 0, which
# h_B ⊥ v attains (d' = d − 1 ≥ 2); A's term decreases in t_A ≤ r‖v‖, attained by h_A = r v/‖v‖.
# So with s = ‖v‖ the optimum is min_s (n_A/N) log(1 + e^{−rs}) + (n_B/N) log 2 + (λ/4)s²:
#   (λ/2) s* = (n_A/N) r/(1 + e^{r s*}),   Gram of (h_A, h_B) = r² I,   ‖w_a‖ = ‖w_b‖ = s*/2.
# With B followed by "a" a quarter of the time instead, B's term is minimised at
# t_B = log(1/3) (value: the binary entropy H(1/4)), reachable since r s* ≥ log 3 here; s* is
# unchanged and cos(h_A, h_B) = t_B/(r s*).
D, LAM, NA, NB = 4, 0.1, 4, 4
R = math.sqrt(D)
N = NA + NB


def _s_star() -> float:
    return brentq(lambda s: LAM / 2 * s - NA / N * R / (1 + math.exp(R * s)), 0.0, 50.0,
                  xtol=1e-15, rtol=1e-15)


def _toy_corpus(b_then_a: int) -> tuple[np.ndarray, np.ndarray]:
    """Contexts as token-id pairs: A = (0, 1) → a four times; B = (2, 3) → a b_then_a times."""
    ctx = np.array([[0, 1]] * NA + [[2, 3]] * NB)
    nxt = np.array([0] * NA + [0] * b_then_a + [1] * (NB - b_then_a))
    return ctx, nxt


@pytest.fixture(scope="module")
def half_half():
    ctx, nxt = _toy_corpus(NB // 2)
    counts, group = ufm.context_counts(ctx, nxt, 2)
    problem = ufm.Problem.from_label_counts(counts, D, LAM, "ce")
    return counts, group, problem, ufm.solve(problem, seed=0)


def test_hand_case_groups_from_text(half_half):
    counts, group, problem, _ = half_half
    assert counts.tolist() == [[4, 0], [2, 2]]
    assert group.tolist() == [0] * NA + [1] * NB
    assert problem.N == N and problem.counts.tolist() == [6, 2] and problem.points.P == 2
    assert ufm.closed_form_reason(problem) is not None  # mixed, not shared: numerical


def test_hand_case_value_and_geometry(half_half):
    *_, sol = half_half
    s = _s_star()
    value = NA / N * math.log1p(math.exp(-R * s)) + NB / N * math.log(2) + LAM / 4 * s**2
    assert sol.value == pytest.approx(value, rel=1e-10)
    H = sol.H_points
    assert np.allclose(H.T @ H, R**2 * np.eye(2), atol=1e-6)
    assert np.allclose(H.sum(axis=0), 0, atol=1e-12)  # centred
    assert np.allclose(np.linalg.norm(sol.W, axis=1), s / 2, rtol=1e-6)
    assert np.allclose(sol.W[0], -sol.W[1], atol=1e-7)
    assert np.allclose(sol.W[0], s / (2 * R) * H[:, 0], atol=1e-6)  # w_a along h_A


def test_hand_case_geometry_report(half_half):
    *_, sol = half_half
    geo = ufm.gufm_geometry(sol)
    assert geo.majority.tolist() == [0, 0]  # B's tie goes to the first label
    assert math.isnan(geo.nc1)  # one majority class: no between-class scatter
    assert geo.within_fraction == pytest.approx(1.0) and not geo.collapsed
    # by hand with h_A = r e1, h_B = r e2: μ_a = r(2/3, 1/3), μ_b = r(0, 1), μ_G = r(1/2, 1/2);
    # tr Σ_W = r²/3, tr Σ_B = 5r²/18, so NC1 over the next tokens is 6/5
    assert geo.nc1_next_token == pytest.approx(1.2, rel=1e-6)
    assert geo.nc3 == pytest.approx(0.5, abs=1e-6)  # cos(h_A, w_a) = 1, cos(h_B, w_a) = 0
    assert geo.feature_rank == 2 and geo.num_distinct == 2
    assert np.allclose(geo.gram, R**2 * np.eye(2), atol=1e-6)


@pytest.mark.parametrize("method", ["sdp", "dual"])
def test_hand_case_certificate(half_half, method):
    *_, sol = half_half
    cert = ufm.certify(sol, method=method)
    assert cert.valid and cert.certified and cert.exact and cert.num_points == 2
    assert cert.lower_bound <= sol.value * (1 + 1e-9)


def test_hand_case_uneven_split():
    ctx, nxt = _toy_corpus(1)  # B → a once, b three times
    counts, _ = ufm.context_counts(ctx, nxt, 2)
    sol = ufm.solve(ufm.Problem.from_label_counts(counts, D, LAM, "ce"))
    s = _s_star()
    t_b = math.log(1 / 3)
    assert R * s >= -t_b  # the unconstrained optimum of B's margin is reachable
    h14 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    value = NA / N * math.log1p(math.exp(-R * s)) + NB / N * h14 + LAM / 4 * s**2
    assert sol.value == pytest.approx(value, rel=1e-10)
    G = sol.H_points.T @ sol.H_points
    assert G[0, 1] / R**2 == pytest.approx(t_b / (R * s), abs=1e-6)
    geo = ufm.gufm_geometry(sol)
    assert geo.majority.tolist() == [0, 1]
    assert geo.nc1 == pytest.approx(0.0, abs=1e-12) and geo.collapsed  # one group per label
    assert ufm.certify(sol).certified


# ---------------------------------------------------------------- case (i): one shared distribution
def _shared_reference(p: np.ndarray, mu: float, loss: str) -> float:
    """min_z Σ_k p_k ℓ(z, k) + (μ/2)‖z‖² by a generic quasi-Newton run (independent of ufm)."""
    def f(z):
        if loss == "ce":
            zmax = z.max()
            lse = zmax + math.log(np.exp(z - zmax).sum())
            q = np.exp(z - lse)
            return lse - p @ z + mu / 2 * z @ z, q - p + mu * z
        return 0.5 * np.sum((z - p) ** 2) + 0.5 * (1 - p @ p) + mu / 2 * z @ z, z - p + mu * z

    res = minimize(f, np.zeros(p.size), jac=True, method="BFGS", options={"gtol": 1e-13})
    return float(res.fun)


SHARED = np.array([[2, 1, 1, 0], [4, 2, 2, 0], [6, 3, 3, 0]])  # p = (1/2, 1/4, 1/4, 0)


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize(("bias", "lam_b"), [("none", 0.0), ("regularized", 0.3)])
def test_shared_distribution_closed_form(loss, bias, lam_b):
    lam, d = 0.05, 5
    prob = ufm.Problem.from_label_counts(SHARED, d, lam, loss, bias=bias, lam_b=lam_b)
    assert ufm.closed_form_reason(prob) is None
    sol = ufm.solve(prob)
    assert sol.method == "closed_form" and sol.geometry == "shared_feature"
    mu = lam / d  # λ/r²
    if bias == "regularized":
        mu = mu * lam_b / (mu + lam_b)  # the cheaper split of z between W h and b
    pvec = SHARED[0] / SHARED[0].sum()
    assert sol.value == pytest.approx(_shared_reference(pvec, mu, loss), rel=1e-9)
    assert sol.value == pytest.approx(sol.info["formula_value"], rel=1e-12)
    num = ufm.solve(prob, method="numerical", n_starts=2)
    assert num.value == pytest.approx(sol.value, rel=1e-8)
    geo = ufm.gufm_geometry(num)  # the solver also puts every group on one feature
    assert geo.num_distinct == 1 and geo.feature_rank == 1 and geo.collapsed
    assert ufm.certify(sol).certified


def test_shared_distribution_free_bias_is_the_entropy():
    counts = np.array([[3, 1, 2], [6, 2, 4]])
    for loss, value in (("ce", -sum(q * math.log(q) for q in (1 / 2, 1 / 6, 1 / 3))),
                        ("mse", 0.5 * (1 - (1 / 4 + 1 / 36 + 1 / 9)))):
        sol = ufm.solve(ufm.Problem.from_label_counts(counts, 4, 0.01, loss, bias="free"))
        assert sol.value == pytest.approx(value, rel=1e-12)
        assert np.allclose(sol.W, 0, atol=1e-12)  # the bias carries the prediction


@pytest.mark.parametrize("lam", [1e-200, 1e-30, 1e-3, 1e6, 1e20])
def test_shared_distribution_extreme_lambda(lam):
    # the CE logits solve softmax(z) + μz = p; limits: μ → 0 gives z → log p + const (labels with
    # p_k = 0 go to −∞ like log(μ log(1/μ))), μ → ∞ gives z → (p − 1/K)/μ
    prob = ufm.Problem.from_label_counts(SHARED, 5, lam, "ce")
    sol = ufm.solve(prob)
    z = sol.info["logits"]
    mu = lam / 5
    pvec = SHARED[0] / SHARED[0].sum()
    assert abs(z.sum()) <= 1e-12 * max(1.0, np.abs(z).max())
    logq = z - (z.max() + math.log(np.exp(z - z.max()).sum()))
    seen = pvec > 0
    # stationarity, written so that it holds to relative precision at every scale
    assert np.allclose(np.exp(logq[seen]), pvec[seen] - mu * z[seen], rtol=1e-12, atol=0)
    if lam >= 1:
        assert np.allclose(z * mu, pvec - 1 / 4, rtol=1e-4, atol=1e-12)
    if lam <= 1e-30:
        assert np.allclose(logq[seen], np.log(pvec[seen]), atol=1e-9)
        assert np.exp(logq[~seen]) == pytest.approx(-mu * z[~seen], rel=1e-12)
    if lam >= 1e6:
        assert sol.value == pytest.approx(math.log(4), rel=1e-5)


# ----------------------------------------------- case (ii): single continuations, balanced labels
def test_pure_groups_reduce_to_the_classic_layernorm_ufm():
    # 7 contexts, each followed by one token; label totals 6, 6, 6 (balanced)
    counts = np.array([[2, 0, 0], [4, 0, 0], [0, 1, 0], [0, 5, 0], [0, 0, 3], [0, 0, 1],
                       [0, 0, 2]])
    assert counts.sum(axis=0).tolist() == [6, 6, 6]
    for loss in ("ce", "mse"):
        prob = ufm.Problem.from_label_counts(counts, 5, 0.02, loss)
        classic = ufm.Problem(loss, 3, 6, 5, 0.02, features="layernorm")
        assert prob.groups_label_pure and ufm.closed_form_reason(prob) is None
        sol = ufm.solve(prob)
        assert sol.method == "closed_form"
        assert sol.value == pytest.approx(ufm.solve(classic).value, rel=1e-13)
        num = ufm.solve(prob, method="numerical", n_starts=2)
        assert num.value == pytest.approx(sol.value, rel=1e-8)
        geo = ufm.gufm_geometry(num)
        assert geo.nc1 < 1e-10 and geo.collapsed and geo.num_distinct == 3
        assert geo.gram_distance < 1e-6


# ------------------------------------------------------------------------------ general problems
def _random_counts(G: int, V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = np.zeros((G, V), dtype=np.int64)
    for g in range(G):
        k = rng.integers(1, 4)
        C[g, rng.choice(V, size=k, replace=False)] = rng.integers(1, 6, size=k)
    return C


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_mixed_groups_sdp_and_dual_agree(loss):
    counts = _random_counts(8, 4, seed=1)
    prob = ufm.Problem.from_label_counts(counts, 6, 0.02, loss)
    sol = ufm.solve(prob, n_starts=3)
    sdp, dual = ufm.certify(sol, method="sdp"), ufm.certify(sol, method="dual")
    assert sdp.certified and dual.certified and sdp.num_points == dual.num_points == 8
    assert dual.lower_bound == pytest.approx(sdp.lower_bound, rel=1e-6)
    # the sample-level SDP (one point per group: groups stay tied) gives the same bound
    assert ufm.certify(sol, level="sample").lower_bound == pytest.approx(sdp.lower_bound,
                                                                         rel=1e-6)
    # mixing costs at least the conditional entropy of the next token (CE)
    if loss == "ce":
        P = counts / counts.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.nansum(np.where(P > 0, P * np.log(P), 0.0), axis=1)
        assert sol.fit >= float(counts.sum(axis=1) @ ent) / counts.sum()


def test_hundreds_of_groups_scale():
    counts = _random_counts(150, 12, seed=2)
    prob = ufm.Problem.from_label_counts(counts, 16, 0.01, "ce")
    t = time.perf_counter()
    sol = ufm.solve(prob, n_starts=1)
    cert = ufm.certify(sol)  # K + P = 162 > AUTO_SDP_MAX: the dual bound
    elapsed = time.perf_counter() - t
    assert cert.solver == "DUAL" and cert.certified and cert.time_s < 1.0
    assert elapsed < 30
    assert sol.H_points.shape == (16, 150)
    geo = ufm.gufm_geometry(sol)
    assert 0 < geo.within_fraction < 1 and not geo.collapsed
    assert geo.gram.shape == (150, 150)


def test_empty_label_column_is_allowed_without_free_bias():
    counts = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 0]])  # label 2 never follows
    for bias, kw in (("none", {}), ("regularized", {"lam_b": 0.1})):
        sol = ufm.solve(ufm.Problem.from_label_counts(counts, 4, 0.02, "ce", bias=bias, **kw),
                        n_starts=2)
        assert ufm.certify(sol).certified
        # the unused label's logit is pushed below the others at every context
        Z = sol.W @ sol.H_points + (0 if sol.b is None else sol.b[:, None])
        assert np.all(Z[2] < Z[:2].max(axis=0))
    with pytest.raises(ValueError, match="no minimiser"):
        ufm.Problem.from_label_counts(counts, 4, 0.02, "ce", bias="free")


# ------------------------------------------------------------------------------------ validation
def test_context_counts_groups_by_first_occurrence():
    ctx = np.array([[5, 1], [2, 2], [5, 1], [7, 0], [2, 2], [5, 1]])
    nxt = np.array([0, 1, 2, 1, 1, 0])
    counts, group = ufm.context_counts(ctx, nxt, 3)
    assert group.tolist() == [0, 1, 0, 2, 1, 0]
    assert counts.tolist() == [[2, 0, 1], [0, 2, 0], [0, 1, 0]]
    c1, g1 = ufm.context_counts([3, 4, 3], [1, 0, 0], 2)  # one-token contexts
    assert c1.tolist() == [[1, 1], [1, 0]] and g1.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([[0.5, 1]], [0], 2), "contexts must hold integers"),
        (([[0, 1]], [0, 1], 2), r"next_tokens must have shape \(N,\)"),
        (([[0, 1]], [2], 2), r"next_tokens must lie in \[0, 2\)"),
        (([[0, 1]], [-1], 2), "next_tokens must lie"),
        (([[0, 1]], [0], 1), "num_classes must be an integer >= 2"),
        ((np.zeros((0, 2), dtype=int), np.zeros(0, dtype=int), 2), "contexts is empty"),
        ((np.zeros((2, 2, 2), dtype=int), [0, 1], 2), "contexts must have shape"),
        (([["a", "b"]], [0], 2), "contexts must hold integers"),
    ],
)
def test_context_counts_validation(args, match):
    with pytest.raises(ValueError, match=match):
        ufm.context_counts(*args)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([[1, -1]], "non-negative"),
        ([[0, 0], [1, 2]], "every row"),
        ([[1.5, 2]], "integers"),
        ([[3], [2]], "at least 2 columns"),
        ([1, 2], "2-D"),
        ([["a", "b"]], "integers"),
    ],
)
def test_from_label_counts_validation(counts, match):
    with pytest.raises(ValueError, match=match):
        ufm.Problem.from_label_counts(counts, 4, 0.01)


def test_from_label_counts_builds_the_point_reduction():
    counts = np.array([[1, 2, 0], [0, 0, 3], [2, 0, 1]])
    prob = ufm.Problem.from_label_counts(counts, 4, 0.01, "mse", bias="free")
    assert prob.K == 3 and prob.N == 9 and prob.counts.tolist() == [3, 2, 4]
    pts = prob.points
    assert pts.P == 3 and np.array_equal(pts.counts.T, counts)
    # every sample's label agrees with the counts of its group
    y = prob.labels
    for g, members in enumerate(prob.groups):
        assert np.bincount(y[list(members)], minlength=3).tolist() == counts[g].tolist()
    assert prob.to_dict()["num_groups"] == 3
