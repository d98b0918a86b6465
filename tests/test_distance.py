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
from reduction import NegativeGapError, distance_to_optimum, procrustes_distance


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
    problem = PROBLEMS[1]  # SPEC §4 example: K = 10, d = 64, λ = 0.005, value ≈ 0.02276
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
