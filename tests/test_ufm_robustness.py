"""Extreme λ, certificate ranks and progress, the command line's errors, a light import."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import ufm
from ufm.certificate import _numeric_rank
from ufm.cli import main
from ufm.closed_form import ce_layernorm_u, ce_layernorm_value
from ufm.problem import check_finite

pytestmark = pytest.mark.unit

LN = "layernorm"
EXTREME = [1e-200, 1e20]


# ------------------------------------------------------------ the LayerNorm-CE root, λ → 0, ∞
@pytest.mark.parametrize("K", [2, 3, 10, 1000])
@pytest.mark.parametrize("r", [1e-3, 1.0, 8.0, 1e3])
@pytest.mark.parametrize("lam", [1e-300, 1e-200, 1e-50, 1e-5, 0.005, 1.0, 1e5, 1e20, 1e300])
def test_ce_root_solves_its_equation_everywhere(K, r, lam):
    # u(e^u + K − 1) = ρ = K r²/((K−1)λ), checked in logs (ρ spans 1e-306..1e306 here)
    u = ce_layernorm_u(K, r, lam)
    log_rho = math.log(K) + 2 * math.log(r) - math.log(K - 1) - math.log(lam)
    lhs = math.log(u) + u + math.log1p((K - 1) * math.exp(-u))
    assert u > 0 and lhs == pytest.approx(log_rho, rel=1e-13, abs=1e-13)


def test_ce_closed_form_asymptotics():
    K, r = 10, 8.0
    # λ → ∞: s* → r/(Kλ), value = log K − r²/(2Kλ) + O(λ⁻²)
    for lam in (1e6, 1e20):
        s = (K - 1) * ce_layernorm_u(K, r, lam) / (K * r)
        assert s == pytest.approx(r / (K * lam), rel=1e-5)
        expansion = math.log(K) - r**2 / (2 * K * lam)
        assert abs(ce_layernorm_value(K, r, lam) - expansion) <= (r**2 / lam) ** 2 + 1e-15
    # λ → 0: u* = L − log L + O(log L / L) with L = log ρ, and the value → 0 like
    # λ(K−1)²u*²/(2Kr²)·(1 + O(1/u*))
    lam = 1e-200
    L = math.log(K * r**2 / ((K - 1) * lam))
    u = ce_layernorm_u(K, r, lam)
    assert abs(u - (L - math.log(L))) < 2 * math.log(L) / L
    lead = lam * (K - 1) ** 2 * u**2 / (2 * K * r**2)
    assert 1 < ce_layernorm_value(K, r, lam) / lead < 1 + 3 / u
    # the value is increasing in λ between the limits 0 and log K
    vals = [ce_layernorm_value(K, r, lam) for lam in np.logspace(-200, 20, 23)]
    assert all(a < b for a, b in itertools.pairwise(vals)) and vals[-1] <= math.log(K)


FAMILIES = [
    dict(loss="ce", features=LN),
    dict(loss="ce", features=LN, bias="regularized", lam_b=0.1),
    dict(loss="mse", features=LN),
    dict(loss="mse", features=LN, bias="free"),
    dict(loss="ce", lam_H=1e-3),
    dict(loss="mse", lam_H=1e-3, bias="free"),
]


@pytest.mark.parametrize("lam", EXTREME)
@pytest.mark.parametrize("kw", FAMILIES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_closed_form_and_solver_agree_at_extreme_lambda(kw, lam):
    p = ufm.Problem(num_classes=4, samples_per_class=3, width=6, lam_W=lam, **kw)
    cf = ufm.solve(p)
    num = ufm.solve(p, method="numerical", n_starts=2)
    assert cf.method == "closed_form" and math.isfinite(cf.value) and cf.value > 0
    assert num.value == pytest.approx(cf.value, rel=1e-9)
    assert cf.value == pytest.approx(cf.info["formula_value"], rel=1e-12)


@pytest.mark.parametrize("lam", EXTREME)
def test_limits_of_the_values(lam):
    K, r2 = 4, 6.0
    big = lam > 1
    ce = ufm.solve(ufm.Problem("ce", K, 3, 6, lam, features=LN)).value
    mse = ufm.solve(ufm.Problem("mse", K, 3, 6, lam, features=LN)).value
    free = ufm.solve(ufm.Problem("ce", K, 3, 6, lam, lam_H=1e-3)).value
    if big:  # W → 0: the fit of zero logits
        assert ce == pytest.approx(math.log(K), rel=1e-15)
        assert mse == pytest.approx(0.5, rel=1e-15)
        assert free == pytest.approx(math.log(K), rel=1e-15)
    else:  # value ∝ λ, resolved to full relative precision (not lost in a fit of ~1e-400)
        assert mse == pytest.approx(K * lam / (2 * r2), rel=1e-12)
        assert 0 < ce < 1e-190 and 0 < free < 1e-95


@pytest.mark.parametrize(
    "kw",
    [
        dict(loss="ce", features=LN, lam_W=1e-200),
        dict(loss="ce", features=LN, lam_W=1e20),
        dict(loss="mse", features=LN, lam_W=1e-200, bias="free"),
        dict(loss="ce", features=LN, lam_W=0.01, bias="regularized", lam_b=1e-200),
        dict(loss="ce", features=LN, lam_W=0.01, bias="regularized", lam_b=1e20),
        dict(loss="mse", features=LN, lam_W=0.01, bias="regularized", lam_b=1e20),
        dict(loss="ce", lam_W=1e-200, lam_H=1e-3),
        dict(loss="ce", lam_W=1e-3, lam_H=1e-200),
        dict(loss="mse", lam_W=1e20, lam_H=1e-200),
    ],
)
def test_imbalanced_problems_at_extreme_lambda_give_certified_values(kw):
    p = ufm.Problem(num_classes=3, samples_per_class=[1, 2, 4], width=4, **kw)
    sol = ufm.solve(p, n_starts=2)
    assert sol.method == "numerical" and math.isfinite(sol.value) and sol.value > 0
    cert = ufm.certify(sol)
    assert cert.valid and cert.lower_bound <= sol.value * (1 + 1e-12)
    assert cert.rel_gap <= 1e-5


def test_overflow_is_a_clear_error():
    p = ufm.Problem("ce", 3, 2, 4, 0.01, features=LN)
    with pytest.raises(ValueError, match="not representable in float64"):
        check_finite(p, math.inf)
    with pytest.raises(ValueError, match="not representable"):
        check_finite(p, 1.0, np.array([np.nan]))


# --------------------------------------------------------------------------------- certificates
def test_numeric_rank_has_an_absolute_floor():
    noise = 1e-12 * np.random.default_rng(0).standard_normal((4, 4))
    assert _numeric_rank(noise) == 4  # relative threshold alone: noise is "full rank"
    assert _numeric_rank(noise, atol=1e-6) == 0


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("solver", ["CLARABEL", "SCS"])
def test_zero_optimum_is_reported_exact(loss, solver):
    # standard UFM past its threshold (Kc ≥ 1): W = H = 0, even with width 2 < K − 1
    p = ufm.Problem(loss, 4, 1, 2, 1.0, lam_H=1.0)
    sol = ufm.solve(p)
    assert sol.geometry == "zero"
    cert = ufm.certify(sol, solver=solver)
    assert cert.certified and cert.relaxation_rank == 0 and cert.exact


def test_dual_bound_matches_the_sdp_and_rejects_a_bad_point():
    p = ufm.Problem("ce", 4, [1, 2, 3, 4], 6, 0.01, features=LN)
    good = ufm.solve(p, n_starts=2)
    sdp, dual = ufm.certify(good, method="sdp"), ufm.certify(good, method="dual")
    assert dual.solver == "DUAL" and dual.certified and dual.exact
    assert dual.lower_bound == pytest.approx(sdp.lower_bound, rel=1e-7)
    rough = ufm.solve(p, n_starts=1, max_iter=3)
    bad = ufm.certify(rough, method="dual")
    assert bad.valid and not bad.certified and bad.lower_bound <= good.value
    with pytest.raises(ValueError, match="method must be"):
        ufm.certify(good, method="newton")
    with pytest.raises(ValueError, match="solver applies to method='sdp'"):
        ufm.certify(good, method="dual", solver="SCS")


def test_certificate_progress_lines():
    sol = ufm.solve(ufm.Problem("ce", 4, 2, 6, 0.01, features=LN))
    lines: list[str] = []
    ufm.certify(sol, progress=lines.append)
    assert len(lines) == 2
    assert "12×12 PSD block" not in lines[0] and "8×8 PSD block" in lines[0]
    assert "estimated" in lines[0] and "solving" in lines[0]
    assert lines[1].startswith("certificate: done in")
    with pytest.raises(ValueError, match="progress must be"):
        ufm.certify(sol, progress="yes")
    # the estimate grows with the block: seconds for K = 300 classes via SCS
    assert ufm.estimate_seconds("SCS", 600) > 100 * ufm.estimate_seconds("SCS", 100)
    assert ufm.estimate_seconds("CLARABEL", 120) > 60


def test_large_class_count_is_certified_quickly_by_the_dual():
    sol = ufm.solve(ufm.Problem("ce", 300, 10, 301, 0.005, features=LN))
    cert = ufm.certify(sol)
    assert cert.solver == "DUAL" and cert.certified and cert.time_s < 5


# ------------------------------------------------------------------------------- command line
BASE = ["solve", "--loss", "ce", "--features", "layernorm", "--classes", "4", "--per-class", "2",
        "--width", "6"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["solve", "--loss", "ce", "--classes", "4", "--per-class", "2", "--width", "6",
          "--lam-w", "0.01"], "--lam-h is required with --features free"),
        (["solve"], "the following arguments are required"),
        (["solve", "--loss", "hinge"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        ([*BASE, "--lam-w", "-1"], "lam_W must be a positive"),
        ([*BASE, "--lam-w", "1e400"], "finite number"),
        (["solve", "--loss", "ce", "--features", "layernorm", "--width", "6", "--lam-w",
          "0.1"], "give --classes"),
        (["solve", "--loss", "ce", "--width", "6", "--lam-w", "0.1", "--label-counts",
          "/nonexistent/counts.csv"], "no such file"),
    ],
)
def test_cli_errors_are_one_line(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err and "usage" not in err


def test_cli_version(capsys):
    for args in (["--version"], ["solve", "--version"]):
        assert main(args) == 0
        assert capsys.readouterr().out.strip() == f"deepcollapse {ufm.__version__}"


@pytest.mark.parametrize("lam", ["1e20", "1e-200"])
def test_cli_extreme_lambda(lam, capsys):
    assert main([*BASE, "--lam-w", lam, "--certify", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["certificate"]["certified"] is True
    assert "estimated" in captured.err and "done in" in captured.err
    if lam == "1e20":
        assert data["solution"]["value"] == pytest.approx(math.log(4), rel=1e-15)


def test_cli_label_counts(tmp_path, capsys):
    path = tmp_path / "counts.csv"
    path.write_text("4,0\n2,2\n")
    assert main(["solve", "--loss", "ce", "--label-counts", str(path), "--width", "4",
                 "--lam-w", "0.1", "--certify", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # strict JSON: NaN (one majority label) became null
    assert data["geometry"]["nc1"] is None and data["geometry"]["num_groups"] == 2
    assert data["problem"]["features"] == "layernorm" and data["certificate"]["certified"]
    assert captured.err == ""  # --quiet
    np.save(tmp_path / "c.npy", np.array([[4, 0], [2, 2]]))
    assert main(["solve", "--loss", "ce", "--label-counts", str(tmp_path / "c.npy"),
                 "--width", "4", "--lam-w", "0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["solution"]["value"] == pytest.approx(
        data["solution"]["value"], rel=1e-12)
