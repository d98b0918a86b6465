"""Problem validation, the point reduction and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ufm
from ufm.cli import main

pytestmark = pytest.mark.unit

BASE = dict(loss="ce", num_classes=3, samples_per_class=2, width=4, lam_W=0.01, lam_H=0.01)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"samples_per_class": 0}, "samples_per_class must be >= 1"),
        ({"samples_per_class": [1, 2]}, "sequence of num_classes=3"),
        ({"samples_per_class": [1, -1, 2]}, "samples_per_class"),
        ({"samples_per_class": [0, 0, 0]}, "positive sum"),
        ({"bias": "free", "samples_per_class": [1, 0, 2]}, "no minimiser when a class has no"),
        ({"samples_per_class": "abc"}, "samples_per_class"),
        ({"width": 0}, "width must be an integer >= 1"),
        ({"lam_W": 0.0}, "lam_W must be a positive finite number"),
        ({"lam_W": -1.0}, "lam_W"),
        ({"lam_W": math.nan}, "lam_W"),
        ({"lam_W": math.inf}, "lam_W"),
        ({"lam_H": 0.0}, "lam_H must be a positive"),
        ({"lam_H": math.nan}, "lam_H"),
        ({"features": "batchnorm"}, "features must be one of"),
        ({"features": "layernorm"}, "lam_H must be 0 for features='layernorm'"),
        ({"radius": 2.0}, "radius applies only"),
        ({"features": "layernorm", "lam_H": 0.0, "radius": -1.0}, "radius must be a positive"),
        ({"features": "layernorm", "lam_H": 0.0, "width": 1}, "width must be >= 2"),
        ({"bias": "learned"}, "bias must be one of"),
        ({"bias": "regularized"}, "lam_b must be a positive"),
        ({"lam_b": 0.1}, "lam_b must be 0 unless bias='regularized'"),
        ({"groups": [[0, 1], [1, 2]]}, "disjoint"),
        ({"groups": [[0, 6]]}, r"in \[0, 6\)"),
        ({"groups": [[]]}, "empty group"),
        ({"groups": 5}, "sequence of sequences"),
        ({"centered": "yes"}, "centered must be a bool"),
    ],
)
def test_validation_errors_name_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        ufm.Problem(**{**BASE, **change})


def test_problem_properties_and_points():
    p = ufm.Problem("mse", 3, [1, 2, 3], 5, 0.1, features="layernorm", groups=[[1, 3], [4, 5]])
    assert p.K == 3 and p.N == 6 and p.r == pytest.approx(math.sqrt(5)) and p.d_eff == 4
    assert np.array_equal(p.counts, [1, 2, 3]) and not p.balanced
    pts = p.points
    # labels: 0 | 1 1 | 2 2 2 ; groups {1 (class 1), 3 (class 2)} and {4, 5} (class 2)
    assert pts.P == 4
    assert np.array_equal(pts.mult, [2, 2, 1, 1])
    assert np.array_equal(pts.counts[:, 0], [0, 1, 1]) and np.array_equal(pts.counts[:, 1],
                                                                          [0, 0, 2])
    assert pts.assignment[1] == pts.assignment[3] == 0 and pts.assignment[4] == 1
    assert pts.counts.sum() == p.N
    q = ufm.Problem("ce", 2, 3, 4, 0.1, features="layernorm", radius=2.0, centered=False)
    assert q.r == 2.0 and q.d_eff == 4 and q.balanced and q.points.P == 2


def test_problem_is_frozen():
    p = ufm.Problem(**BASE)
    with pytest.raises(AttributeError):
        p.width = 5  # type: ignore[misc]


def test_cli_table_and_certificate(capsys):
    rc = main(["solve", "--loss", "ce", "--features", "layernorm", "--classes", "10",
               "--per-class", "100", "--width", "64", "--lam-w", "0.005", "--certify"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "simplex_etf" in out and "0.0227593674" in out and "lower_bound" in out
    assert "closed_form" in out and "fit" in out and "penalty" in out


def test_cli_json_numerical(capsys):
    rc = main(["solve", "--loss", "mse", "--classes", "3", "--per-class", "1,2,3", "--width",
               "4", "--lam-w", "0.01", "--lam-h", "0.01", "--bias", "free", "--json",
               "--certify", "--starts", "2"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["solution"]["method"] == "numerical"
    sol = data["solution"]
    assert sol["value"] == pytest.approx(sol["fit"] + sol["penalty"], rel=1e-12)
    assert data["certificate"]["certified"] is True
    assert data["problem"]["samples_per_class"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--lam-w", "0"], "lam_W must be a positive"),
        (["--lam-w", "nan"], "finite number"),
        (["--lam-w", "0.01", "--lam-h", "1"], "lam_H must be 0"),
        (["--lam-w", "0.01", "--per-class", "1,x"], "--per-class"),
        (["--lam-w", "0.01", "--width", "2", "--method", "closed_form"], "no closed form"),
        (["--lam-w", "0.01", "--starts", "0"], "--starts"),
        (["--lam-w", "0.01", "--per-class", "200", "--certify", "--level", "sample"],
         "level='sample' has 800 points"),
    ],
)
def test_cli_bad_input_exits_2(args, match, capsys):
    base = ["solve", "--loss", "ce", "--features", "layernorm", "--classes", "4",
            "--per-class", "2", "--width", "6"]
    # later occurrences of an option override the earlier ones
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("error: ") and err.count("\n") == 1


def test_module_entry_point():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "ufm", "solve", "--loss", "mse", "--classes", "4", "--per-class",
         "5", "--width", "8", "--lam-w", "0.01", "--lam-h", "0.01", "--json"],
        capture_output=True, text=True, check=True,
    )
    data = json.loads(out.stdout)
    assert data["schema_version"] == 1 and data["solution"]["status"] == "closed_form"
    value = data["solution"]["value"]
    c = math.sqrt(5 * 0.01 * 0.01)
    assert value == pytest.approx(4 * c * (1 - 4 * c / 2), rel=1e-12)
