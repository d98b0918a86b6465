"""Tests of reduction.distance_to_optimum against ufm.solve optima and hand computations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.special import logsumexp

import ufm
from reduction import NegativeGapError, collapse_metrics, distance_to_optimum, procrustes_distance
from reduction.distance import problem_from_features

pytestmark = pytest.mark.unit


def at_optimum(problem):
    sol = ufm.solve(problem)
    H = np.asarray(sol.H).T  # (N, width), class-major
    y = np.repeat(np.arange(problem.K), problem.counts)
    return sol, H, y


def rotation_in_centred_subspace(d, seed):
    """Orthogonal Q with Q·1 = 1: keeps features centred and on the sphere."""
    rng = np.random.default_rng(seed)
    ones = np.ones((d, 1)) / math.sqrt(d)
    U = np.linalg.qr(np.hstack([ones, rng.normal(size=(d, d - 1))]))[0][:, 1:]
    R = np.linalg.qr(rng.normal(size=(d - 1, d - 1)))[0]
    return U @ R @ U.T + ones @ ones.T


def project_layernorm(H, r):
    H = H - H.mean(axis=1, keepdims=True)
    return H / np.linalg.norm(H, axis=1, keepdims=True) * r


PROBLEMS = [
    ufm.Problem("ce", 4, 3, 8, 0.01, features="layernorm"),
    ufm.Problem("ce", 10, 5, 64, 0.005, features="layernorm"),
    ufm.Problem("mse", 4, 3, 8, 0.01, features="layernorm"),
    ufm.Problem("mse", 4, 2, 8, 0.02, features="layernorm", bias="free"),
    ufm.Problem("mse", 3, 2, 6, 0.02, features="layernorm", bias="regularized", lam_b=0.5),
    ufm.Problem("ce", 4, 3, 8, 0.01, lam_H=0.01),  # standard UFM, free features
    ufm.Problem("mse", 4, 3, 8, 0.01, lam_H=0.02, bias="free"),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"{p.loss}-{p.features}-{p.bias}")
def test_zero_gap_at_optimum_and_rotation_invariance(problem):
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, sol.b, problem, solution=sol)
    assert out["ufm_gap"] == pytest.approx(0.0, abs=1e-9)
    assert out["feasible"]
    assert out["procrustes_means"] < 1e-7 and out["procrustes_W"] < 1e-7
    assert out["procrustes_joint"] < 1e-7
    assert out["w_norm_ratio"] == pytest.approx(1.0, rel=1e-12)
    # a rotation of the whole configuration is another optimum: same gap, zero distances
    Q = rotation_in_centred_subspace(problem.width, seed=problem.K)
    rot = distance_to_optimum(H @ Q, y, sol.W @ Q, sol.b, problem, solution=sol)
    assert rot["ufm_gap"] == pytest.approx(0.0, abs=1e-9)
    assert rot["procrustes_joint"] < 1e-7


def test_objective_matches_hand_computation_and_spec_value():
    problem = PROBLEMS[1]  # THEORY §4 example: K = 10, d = 64, λ = 0.005, value ≈ 0.02276
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, None, problem)  # solves internally
    assert out["optimum_value"] == pytest.approx(0.02276, abs=5e-6)
    Z = H @ sol.W.T
    fit = np.mean(logsumexp(Z, axis=1) - Z[np.arange(len(y)), y])
    assert out["fit"] == pytest.approx(fit, rel=1e-12)
    assert out["classifier_penalty"] == pytest.approx(0.0025 * np.sum(sol.W**2), rel=1e-12)
    assert out["gap"] == pytest.approx(0.0, abs=1e-9)
    assert out["feature_penalty"] == 0.0


def test_mse_hand_computation_with_bias():
    problem = PROBLEMS[4]
    sol, H, y = at_optimum(problem)
    rng = np.random.default_rng(0)
    W = sol.W + 0.1 * rng.normal(size=sol.W.shape)
    b = sol.b + 0.1
    out = distance_to_optimum(H, y, W, b, problem, solution=sol)
    Z = H @ W.T + b
    Y = np.eye(problem.K)[y]
    want = np.sum((Z - Y) ** 2) / (2 * len(y)) + 0.01 * np.sum(W**2) + 0.25 * np.sum(b**2)
    assert out["classifier_objective"] == pytest.approx(want, rel=1e-12)
    assert out["gap"] > 0


@pytest.mark.parametrize("problem", PROBLEMS[:5], ids=lambda p: f"{p.loss}-{p.bias}")
def test_positive_gap_at_perturbed_points(problem):
    sol, H, y = at_optimum(problem)
    rng = np.random.default_rng(1)
    for eps in (1e-2, 1e-1, 0.5):
        Hp = project_layernorm(H + eps * problem.r * rng.normal(size=H.shape), problem.r)
        out = distance_to_optimum(Hp, y, sol.W, sol.b, problem, solution=sol)
        assert out["feasible"] and out["gap"] > 1e-8, (eps, out["gap"])
        assert out["procrustes_means"] > 0
        Wp = sol.W * (1 + eps)
        out = distance_to_optimum(H, y, Wp, sol.b, problem, solution=sol)
        assert out["gap"] > 1e-8 and out["w_norm_ratio"] == pytest.approx(1 + eps)
        assert out["procrustes_W"] < 1e-7  # a pure rescaling keeps the normalised shape


def test_negative_gap_raises_or_warns():
    problem = PROBLEMS[0]
    sol, H, y = at_optimum(problem)
    fake = dataclasses.replace(sol, value=sol.value + 1e-3)  # claims a worse "optimum"
    with pytest.raises(NegativeGapError, match="below the claimed optimum"):
        distance_to_optimum(H, y, sol.W, None, problem, solution=fake)
    with pytest.warns(RuntimeWarning, match="not optimal"):
        out = distance_to_optimum(H, y, sol.W, None, problem, solution=fake, on_negative_gap="warn")
    assert out["gap"] == pytest.approx(-1e-3, rel=1e-6)
    # off the sphere the bound does not apply: no error, flagged as infeasible
    out = distance_to_optimum(2 * H, y, sol.W, None, problem, solution=fake)
    assert not out["feasible"] and out["feasibility_violation"] == pytest.approx(1.0)


def test_torch_inputs_and_proportional_counts():
    problem = ufm.Problem("ce", 4, 3, 8, 0.01, features="layernorm")
    sol, H, y = at_optimum(problem)
    a = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    t = distance_to_optimum(
        torch.from_numpy(H).float(), torch.from_numpy(y), torch.from_numpy(sol.W), None, problem
    )
    assert t["gap"] == pytest.approx(a["gap"], abs=1e-5)  # float32 features
    # LayerNorm value depends on proportions only: duplicating every sample is allowed
    d = distance_to_optimum(np.vstack([H, H]), np.r_[y, y], sol.W, None, problem, solution=sol)
    assert d["gap"] == pytest.approx(a["gap"], abs=1e-12)


def test_bad_input():
    problem = PROBLEMS[0]
    sol, H, y = at_optimum(problem)
    with pytest.raises(ValueError, match="do not match"):
        distance_to_optimum(H[1:], y[1:], sol.W, None, problem, solution=sol)
    with pytest.raises(ValueError, match="shape"):
        distance_to_optimum(H[:, :-1], y, sol.W, None, problem, solution=sol)
    with pytest.raises(ValueError, match="labels"):
        distance_to_optimum(H, y[:-1], sol.W, None, problem, solution=sol)
    with pytest.raises(ValueError, match="bias='none'"):
        distance_to_optimum(H, y, sol.W, np.ones(4), problem, solution=sol)
    bad = H.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        distance_to_optimum(bad, y, sol.W, None, problem, solution=sol)
    with pytest.raises(ValueError, match=r"ufm\.Problem"):
        distance_to_optimum(H, y, sol.W, None, "ce", solution=sol)


def test_procrustes_distance_values():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(5, 7))
    Q = np.linalg.qr(rng.normal(size=(7, 7)))[0]
    assert procrustes_distance(A, 3 * A @ Q) < 1e-12
    # a single point each: best rotation aligns them exactly
    assert procrustes_distance(A[:1], rng.normal(size=(1, 7))) < 1e-12
    # two orthonormal points vs one point doubled: min_R ‖A R − B‖ = √(2 − √2) by hand
    A2 = np.array([[1.0, 0.0], [0.0, 1.0]]) / math.sqrt(2)
    B2 = np.array([[1.0, 0.0], [1.0, 0.0]]) / math.sqrt(2)
    assert procrustes_distance(A2, B2) == pytest.approx(math.sqrt(2 - math.sqrt(2)), rel=1e-12)
    assert math.isnan(procrustes_distance(np.zeros((2, 2)), B2))
    # d ≫ K takes the reduced (joint-span) path: must equal the full d-dimensional solution
    A, B = rng.normal(size=(4, 40)), rng.normal(size=(4, 40))
    An, Bn = A / np.linalg.norm(A), B / np.linalg.norm(B)
    R, _ = orthogonal_procrustes(An, Bn)
    assert procrustes_distance(A, B) == pytest.approx(np.linalg.norm(An @ R - Bn), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# NC2 / NC3 against the optimum's own geometry


def etf_gap(K):
    """‖I/√K − P_K/√(K−1)‖_F: the ETF-based nc2 of an exact orthogonal frame."""
    return math.sqrt(2 - 2 * math.sqrt((K - 1) / K))


@pytest.mark.parametrize("K,d", [(4, 8), (5, 6), (10, 16)])
def test_mse_orthogonal_frame_optimum_has_zero_nc2_ufm(K, d):
    # LayerNorm MSE without bias (d' ≥ K): the optimum is an orthogonal frame, not an ETF
    problem = ufm.Problem("mse", K, 3, d, 0.01, features="layernorm")
    sol, H, y = at_optimum(problem)
    assert sol.geometry == "orthogonal_frame"
    out = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    etf_based = collapse_metrics(H, y, sol.W)
    assert out["nc2_ufm"] <= 1e-8 and out["nc2_means_ufm"] <= 1e-8
    assert out["nc3_ufm"] <= 1e-8 and out["nc3_ufm_opt"] <= 1e-8
    # the simplex-ETF target cannot show this collapse: 0.518 (K = 4), 0.320 (K = 10)
    assert etf_based["nc2"] == pytest.approx(etf_gap(K), rel=1e-9)
    assert etf_based["nc2"] > 0.3
    # away from the optimum the UFM target is the orthogonal frame, i.e. nc2_ortho
    rng = np.random.default_rng(K)
    Wp = sol.W + 0.3 * rng.normal(size=sol.W.shape)
    out = distance_to_optimum(H, y, Wp, None, problem, solution=sol)
    assert out["nc2_ufm"] == pytest.approx(collapse_metrics(H, y, Wp)["nc2_ortho"], rel=1e-9)
    assert out["nc2_ufm"] > 0.01


def test_ce_optimum_nc2_ufm_equals_the_etf_nc2():
    problem = PROBLEMS[1]  # CE, K = 10: simplex ETF
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    assert out["nc2_ufm"] <= 1e-8 and collapse_metrics(H, y, sol.W)["nc2"] <= 1e-8
    rng = np.random.default_rng(3)
    Wp = sol.W + 0.05 * rng.normal(size=sol.W.shape)
    Hp = project_layernorm(H + 0.3 * rng.normal(size=H.shape), problem.r)
    out = distance_to_optimum(Hp, y, Wp, None, problem, solution=sol)
    m = collapse_metrics(Hp, y, Wp)
    assert out["nc2_ufm"] == pytest.approx(m["nc2"], rel=1e-9) and out["nc2_ufm"] > 1e-3
    assert out["nc2_means_ufm"] == pytest.approx(m["nc2_means"], rel=1e-9)


IMBALANCED = [
    ufm.Problem("ce", 4, [2, 3, 6, 9], 8, 0.01, features="layernorm"),
    ufm.Problem("mse", 4, [2, 3, 6, 9], 8, 0.01, features="layernorm"),
]


@pytest.mark.parametrize(
    "problem", PROBLEMS + IMBALANCED, ids=lambda p: f"{p.loss}-{p.features}-{p.bias}-{p.balanced}"
)
def test_nc3_ufm_is_zero_at_every_optimum_and_rotation_invariant(problem):
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, sol.b, problem, solution=sol)
    assert out["nc3_ufm"] <= 1e-8 and out["nc3_ufm_opt"] <= 1e-8
    assert out["nc2_ufm"] <= 1e-7 and out["nc2_means_ufm"] <= 1e-7
    Q = rotation_in_centred_subspace(problem.width, seed=7)
    rot = distance_to_optimum(H @ Q, y, sol.W @ Q, sol.b, problem, solution=sol)
    assert rot["nc3_ufm"] <= 1e-8 and rot["nc2_ufm"] <= 1e-7
    rng = np.random.default_rng(4)
    Hp = H + 0.3 * problem.r * rng.normal(size=H.shape)
    if problem.features == "layernorm":
        Hp = project_layernorm(Hp, problem.r)
    assert distance_to_optimum(Hp, y, sol.W, sol.b, problem, solution=sol)["nc3_ufm"] > 1e-3


def test_nc3_ufm_sees_minority_collapse_geometry():
    # imbalanced CE: the optimal classifier rows are not parallel to the class means, so the
    # ETF-style nc3 stays > 0 at the optimum while nc3_ufm is 0
    problem = IMBALANCED[0]
    sol, H, y = at_optimum(problem)
    assert collapse_metrics(H, y, sol.W)["nc3"] > 1e-3
    assert distance_to_optimum(H, y, sol.W, None, problem, solution=sol)["nc3_ufm"] < 1e-8


def test_nc3_ufm_for_an_etf_optimum_is_the_cosine_to_the_centred_classifier():
    # A = M* W*⁺ ∝ P_K for the ETF, so the target of class k is w_k − w̄: check by hand
    problem = PROBLEMS[0]
    sol, H, y = at_optimum(problem)
    rng = np.random.default_rng(5)
    Hp = project_layernorm(H + 2 * rng.normal(size=H.shape), problem.r)
    Wp = rng.normal(size=sol.W.shape)
    out = distance_to_optimum(Hp, y, Wp, None, problem, solution=sol)
    T = Wp - Wp.mean(axis=0)
    cos = [Hp[i] @ T[y[i]] / np.linalg.norm(Hp[i]) / np.linalg.norm(T[y[i]]) for i in range(len(y))]
    assert out["nc3_ufm"] == pytest.approx(1 - np.mean(cos), rel=1e-10)


# ------------------------------------------------------------------------------------------------
# one-sided feasibility: the ball gives the same bound as the sphere


def random_ball_points(rng, N, d, r, centred=True):
    H = rng.normal(size=(N, d))
    if centred:
        H -= H.mean(axis=1, keepdims=True)
    return H / np.linalg.norm(H, axis=1, keepdims=True) * r * rng.uniform(0.05, 1.0, (N, 1))


@pytest.mark.parametrize("problem", PROBLEMS[:5], ids=lambda p: f"{p.loss}-{p.bias}")
def test_points_inside_the_ball_are_feasible_and_bounded(problem):
    sol, H, y = at_optimum(problem)
    rng = np.random.default_rng(6)
    out = distance_to_optimum(0.5 * H, y, sol.W, sol.b, problem, solution=sol)
    assert out["feasible"] and out["ball_bound"] and out["feasibility_violation"] < 1e-12
    assert out["sphere_violation"] == pytest.approx(0.5)
    assert out["gap"] >= 0
    # the lower bound (THEORY §3) at many random points inside the ball, with random classifiers
    for _ in range(20):
        Hb = random_ball_points(rng, len(y), problem.width, problem.r)
        Wb = sol.W * rng.uniform(0.3, 3) + 0.3 * rng.normal(size=sol.W.shape)
        bb = None if sol.b is None else sol.b + 0.3 * rng.normal(size=problem.K)
        out = distance_to_optimum(Hb, y, Wb, bb, problem, solution=sol)
        assert out["feasible"] and out["gap"] >= 0
    # the check is live inside the ball: a "better" claimed optimum is caught there
    fake = dataclasses.replace(sol, value=sol.value + 10.0)
    with pytest.raises(NegativeGapError):
        distance_to_optimum(0.9 * H, y, sol.W, sol.b, problem, solution=fake)


def test_norms_above_the_radius_or_uncentred_features_are_infeasible():
    problem = PROBLEMS[0]
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(1.01 * H, y, sol.W, None, problem, solution=sol)
    assert not out["feasible"] and out["feasibility_violation"] == pytest.approx(0.01)
    # off-centre but on the sphere: infeasible for the centred problem
    Hs = H + 0.1
    Hs *= problem.r / np.linalg.norm(Hs, axis=1, keepdims=True)
    out = distance_to_optimum(Hs, y, sol.W, None, problem, solution=sol)
    assert not out["feasible"] and out["feasibility_violation"] > 1e-2
    # within tolerance: still feasible, and the longer features beat UFM* by no more than the
    # exact allowance (λ/2)‖W‖²((1+e)² − 1) of the rescaled point, which widens gap_tol
    e = 5e-5
    out = distance_to_optimum((1 + e) * H, y, sol.W, None, problem, solution=sol)
    allowance = 0.005 * np.sum(sol.W**2) * ((1 + e) ** 2 - 1)
    assert out["feasible"] and -allowance <= out["gap"] < -1e-6
    assert out["gap_tol"] >= allowance


def test_two_sided_check_where_the_ball_argument_does_not_apply():
    # MSE, d' = 4 < K = 5 and a full-rank W: no direction to lift along, so only the sphere counts
    problem = ufm.Problem("mse", 5, 1, 5, 0.01, features="layernorm")
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    assert out["feasible"] and not out["ball_bound"]
    out = distance_to_optimum(0.5 * H, y, sol.W, None, problem, solution=sol)
    assert not out["feasible"] and out["feasibility_violation"] == pytest.approx(0.5)
    # CE with d' ≥ K is covered even with a full-rank W (the ball optimum has 1ᵀW = 0)
    problem = ufm.Problem("ce", 4, 2, 5, 0.01, features="layernorm")
    sol, H, y = at_optimum(problem)
    # add a direction outside the row space of W* (and ⊥ 1) to one row: rank 4 = d'
    v = np.linalg.svd(np.vstack([sol.W, np.ones(5)]))[2][-1]
    W = sol.W + np.outer(np.eye(4)[0], v)
    assert np.linalg.matrix_rank(W - W.mean(axis=1, keepdims=True)) == 4
    out = distance_to_optimum(0.5 * H, y, W, None, problem, solution=sol)
    assert out["feasible"] and out["ball_bound"] and out["gap"] >= 0


# ------------------------------------------------------------------------------------------------
# the UFM built from the data (no ufm.Problem)


def test_problem_from_layernorm_features_is_the_sweep_problem():
    problem = PROBLEMS[1]
    sol, H, y = at_optimum(problem)
    H32 = torch.nn.functional.layer_norm(torch.from_numpy(H), (64,)).float()  # LN ε: |h| < √d
    built = problem_from_features(H32, y, sol.W, lam=0.005)
    assert built == problem  # radius √d (snapped), centred, bias "none", counts from labels
    a = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    b = distance_to_optimum(H, y, sol.W, lam=0.005)  # same positional order, no problem
    for key in ("optimum_value", "gap", "nc2_ufm", "nc3_ufm", "procrustes_joint"):
        assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-14), key
    assert b["problem"] == problem.to_dict() and b["radius"] == 8.0 and b["centered"]
    c = distance_to_optimum(H, y, sol.W, np.zeros(10), lam=0.005, loss="ce")
    assert c["problem"]["bias"] == "free"


def test_problem_from_generic_features_uses_the_largest_norm_and_no_centring():
    # e.g. ReLU features of a CNN: not centred, norms vary; radius = the largest norm, so every
    # feature lies in the ball and the lower bound holds
    rng = np.random.default_rng(8)
    K, n, d = 3, 6, 10
    y = np.repeat(np.arange(K), n)
    H = np.maximum(rng.normal(size=(K, d))[y] + 0.5 * rng.normal(size=(K * n, d)), 0) * 3.0
    W = rng.normal(size=(K, d))
    for loss in ("ce", "mse"):
        out = distance_to_optimum(H, y, W, None, lam=0.01, loss=loss)
        assert out["radius"] == pytest.approx(np.linalg.norm(H, axis=1).max(), rel=1e-12)
        assert out["centered"] is False and out["problem"]["loss"] == loss
        assert out["feasible"] and out["gap"] >= 0
        assert out["feasibility_violation"] == 0.0


def test_problem_from_features_bad_input():
    problem = PROBLEMS[0]
    sol, H, y = at_optimum(problem)
    for lam in (None, 0.0, -1.0, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="lam"):
            distance_to_optimum(H, y, sol.W, lam=lam)
    with pytest.raises(ValueError, match="either problem or lam"):
        distance_to_optimum(H, y, sol.W, None, problem, lam=0.01)
    with pytest.raises(ValueError, match="loss"):
        distance_to_optimum(H, y, sol.W, None, problem, loss="mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        distance_to_optimum(H, y, sol.W, lam=0.01, loss="hinge")
    with pytest.raises(ValueError, match="all zero"):
        distance_to_optimum(np.zeros_like(H), y, sol.W, lam=0.01)
    with pytest.raises(ValueError, match="2-D"):
        distance_to_optimum(H, y, sol.W[0], lam=0.01)
    with pytest.raises(ValueError, match="no samples"):
        distance_to_optimum(H[y != 1], y[y != 1], sol.W, lam=0.01)
    other = ufm.solve(ufm.Problem("ce", 4, 3, 8, 0.02, features="layernorm"))
    with pytest.raises(ValueError, match="solution is not"):
        distance_to_optimum(H, y, sol.W, lam=0.01, solution=other)
    out = distance_to_optimum(H, y, sol.W, lam=0.01, solution=sol)  # the matching one is reused
    assert out["gap"] == pytest.approx(0.0, abs=1e-9)


def test_nc3_ufm_opt_with_tied_inputs_across_labels():
    # samples 0 (class 0) and 2 (class 1) share an input, hence one feature: the optimum cannot
    # align that feature with both classes, so nc3_ufm_opt > 0 and equals the per-sample value
    problem = ufm.Problem("ce", 3, 2, 6, 0.01, features="layernorm", groups=[[0, 2]])
    sol, H, y = at_optimum(problem)
    out = distance_to_optimum(H, y, sol.W, None, problem, solution=sol)
    assert out["nc3_ufm_opt"] > 1e-3
    assert out["nc3_ufm"] == pytest.approx(out["nc3_ufm_opt"], rel=1e-9)
    assert out["gap"] == pytest.approx(0.0, abs=1e-9)
