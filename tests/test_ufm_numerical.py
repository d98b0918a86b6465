"""Numerical solver and certificates where THEORY §4 has no closed form."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import ufm
from ufm.solver import _Objective

pytestmark = pytest.mark.unit

LN = "layernorm"


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize(("features", "centered"), [("free", True), (LN, True), (LN, False)])
@pytest.mark.parametrize("bias", ["none", "free", "regularized"])
def test_gradient_matches_finite_differences(loss, features, bias, centered):
    kw = {"lam_H": 0.03} if features == "free" else {"centered": centered}
    p = ufm.Problem(loss, 3, [2, 1, 3], 4, 0.05, bias=bias, features=features,
                    lam_b=0.2 if bias == "regularized" else 0.0,
                    groups=[[0, 2], [4, 5]], **kw)
    obj = _Objective(p, p.points)
    x = obj.init(np.random.default_rng(1))
    _, g = obj(x)
    rng = np.random.default_rng(2)
    for _ in range(4):
        v = rng.standard_normal(x.size)
        h = 1e-6
        fd = (obj(x + h * v)[0] - obj(x - h * v)[0]) / (2 * h)
        assert fd == pytest.approx(g @ v, rel=1e-6, abs=1e-9)


def test_solver_is_deterministic_float64_and_multistart():
    p = ufm.Problem("ce", 4, [1, 2, 3, 4], 5, 0.01, features=LN)
    a = ufm.solve(p, seed=7, n_starts=3)
    b = ufm.solve(p, seed=7, n_starts=3)
    assert a.W.dtype == np.float64 and a.H.dtype == np.float64
    assert np.array_equal(a.W, b.W) and np.array_equal(a.H, b.H) and a.value == b.value
    assert len(a.info["start_values"]) == 3
    c = ufm.solve(p, seed=8, n_starts=3)
    assert c.value == pytest.approx(a.value, rel=1e-10)
    assert not np.array_equal(c.W, a.W)  # another seed, another (rotated) optimum


def test_mse_eliminates_classifier():
    p = ufm.Problem("mse", 3, [2, 3, 4], 4, 0.01, features=LN, bias="free")
    sol = ufm.solve(p, n_starts=2)
    assert sol.info["variables"] == "features"
    obj = _Objective(p, p.points)
    assert obj.init(np.random.default_rng(0)).size == p.width * p.points.P


IMBALANCED = [
    dict(loss="ce", features=LN, num_classes=4, samples_per_class=[1, 2, 4, 8], width=6,
         lam_W=0.01),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=[1, 2, 4, 8], width=6,
         lam_W=0.01, bias="free"),
    dict(loss="ce", num_classes=4, samples_per_class=[2, 3, 5, 10], width=5, lam_W=0.01,
         lam_H=0.01, bias="regularized", lam_b=0.1),
    dict(loss="mse", num_classes=3, samples_per_class=[1, 4, 9], width=4, lam_W=0.02,
         lam_H=0.02),
    dict(loss="mse", num_classes=3, samples_per_class=[2, 2, 2], width=4, lam_W=0.02,
         lam_H=0.02, bias="regularized", lam_b=0.3),  # balanced, no closed form
]


@pytest.mark.parametrize("kw", IMBALANCED)
def test_no_closed_form_cases_are_certified(kw):
    p = ufm.Problem(**kw)
    assert ufm.closed_form_reason(p) is not None
    sol = ufm.solve(p, n_starts=3)
    assert sol.method == "numerical"
    cert = ufm.certify(sol)
    assert cert.certified and cert.exact and cert.rel_gap >= -1e-9
    sample = ufm.certify(sol, level="sample")
    assert sample.num_points == p.N and sample.certified
    assert sample.lower_bound == pytest.approx(cert.lower_bound, rel=1e-6)


def test_groups_label_pure_change_nothing_and_mixed_groups_are_certified():
    base = ufm.Problem("ce", 3, 4, 5, 0.01, features=LN)
    pure = ufm.Problem("ce", 3, 4, 5, 0.01, features=LN, groups=[[0, 1], [4, 5, 6]])
    assert ufm.closed_form_reason(pure) is None
    assert ufm.solve(pure).value == pytest.approx(ufm.solve(base).value, rel=1e-14)
    assert ufm.solve(pure, method="numerical", n_starts=2).value == pytest.approx(
        ufm.solve(base).value, rel=1e-8)
    # identical inputs with different labels: one shared feature for samples 0 (class 0) and 4
    # (class 1), and for 8, 9 (class 2) with 1 (class 0)
    mixed = ufm.Problem("ce", 3, 4, 5, 0.01, features=LN, groups=[[0, 4], [1, 8, 9]])
    assert mixed.points.P == 5 and "different labels" in ufm.closed_form_reason(mixed)
    sol = ufm.solve(mixed, n_starts=3)
    H = sol.H
    assert np.allclose(H[:, 0], H[:, 4]) and np.allclose(H[:, 1], H[:, 9])
    assert sol.value > ufm.solve(base).value
    cert = ufm.certify(sol)
    assert cert.certified and cert.exact
    assert ufm.certify(sol, level="sample").lower_bound == pytest.approx(cert.lower_bound,
                                                                         rel=1e-6)
    msol = ufm.solve(ufm.Problem("mse", 3, 4, 5, 0.01, lam_H=0.01, bias="free",
                                 groups=[[0, 4], [1, 8, 9]]), n_starts=3)
    assert ufm.certify(msol).certified


def test_small_width_free_mse_matches_truncated_soft_threshold():
    # Balanced, no bias, width d < K: the best rank-d logit matrix keeps d singular values
    # 1 − Kc of the class-level problem (1/(2K))‖Z − I‖² + c‖Z‖_*, so the value is
    # d·c(1 − Kc/2) + (K − d)/(2K) (derived for this test).
    K, n, d, lw, lh = 5, 2, 2, 0.01, 0.02
    c = math.sqrt(n * lw * lh)
    p = ufm.Problem("mse", K, n, d, lw, lam_H=lh)
    sol = ufm.solve(p, n_starts=3)
    assert sol.value == pytest.approx(d * c * (1 - K * c / 2) + (K - d) / (2 * K), rel=1e-9)
    cert = ufm.certify(sol)  # the nuclear-norm relaxation ignores the rank bound: not tight
    assert cert.valid and not cert.exact and cert.lower_bound < sol.value


def test_small_width_layernorm_ce_lower_bound_is_valid():
    p = ufm.Problem("ce", 5, 2, 3, 0.01, features=LN)  # d' = 2 < K − 1
    sols = [ufm.solve(p, seed=s, n_starts=3) for s in (0, 1)]
    assert sols[0].value == pytest.approx(sols[1].value, rel=1e-8)
    cert = ufm.certify(sols[0])
    assert cert.valid and cert.lower_bound <= sols[0].value
    assert not cert.exact  # the SDP optimum needs rank K−1 > d'


def test_large_n_is_cheap_through_the_class_reduction():
    p = ufm.Problem("ce", 10, [10_000 + 1000 * k for k in range(10)], 16, 0.005, features=LN)
    t = time.perf_counter()
    sol = ufm.solve(p, n_starts=2)
    cert = ufm.certify(sol)
    assert time.perf_counter() - t < 20
    assert cert.certified and cert.time_s < 2.0
    assert sol.H_points.shape == (16, 10) and sol.H.shape == (16, p.N)


def test_zero_solution_is_found_past_the_threshold_imbalanced():
    # Kc ≫ 1: W = H = 0 and, with a free bias, b = log class priors (up to a constant)
    counts = np.array([1, 2, 3, 6])
    p = ufm.Problem("ce", 4, counts.tolist(), 3, 1.0, lam_H=1.0, bias="free")
    sol = ufm.solve(p, n_starts=2)
    prior = counts / counts.sum()
    assert sol.geometry == "zero"
    assert sol.value == pytest.approx(-np.sum(prior * np.log(prior)), rel=1e-9)
    assert ufm.certify(sol).certified


def test_certificate_rejects_a_suboptimal_point():
    p = ufm.Problem("ce", 4, [1, 2, 3, 4], 6, 0.01, features=LN)
    rough = ufm.solve(p, n_starts=1, max_iter=3)
    good = ufm.solve(p, n_starts=2)
    cert = ufm.certify(rough)
    assert rough.value > good.value * (1 + 1e-4)
    assert cert.valid and not cert.certified and cert.rel_gap > 1e-4
    assert cert.lower_bound == pytest.approx(ufm.certify(good).lower_bound, rel=1e-7)


@pytest.mark.parametrize("features", ["free", LN])
def test_scs_route_agrees_with_clarabel(features):
    kw = {"lam_H": 0.02} if features == "free" else {}
    p = ufm.Problem("ce", 3, [2, 3, 4], 5, 0.02, features=features, **kw)
    sol = ufm.solve(p, n_starts=2)
    scs = ufm.certify(sol, solver="SCS")
    assert scs.solver == "SCS" and scs.certified
    assert scs.lower_bound <= sol.value
    with pytest.raises(ValueError, match="solver must be"):
        ufm.certify(sol, solver="MOSEK")
    with pytest.raises(ValueError, match="level must be"):
        ufm.certify(sol, level="group")
