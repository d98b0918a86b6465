"""Tests of reduction.measure: saved features → every metric and the distance to the UFM optimum,
as a function and as the ``measure`` command (run through the parser it installs)."""

from __future__ import annotations

import argparse
import io
import json
import math
import re

import numpy as np
import pytest

import ufm
from deepcollapse.output import run_command
from reduction import collapse_metrics, distance_to_optimum
from reduction.measure import add_measure_arguments, measure_features, measure_npz, run_measure

pytestmark = pytest.mark.unit


def parser():
    return add_measure_arguments(argparse.ArgumentParser(prog="measure"))


def run(argv):
    """The measure command under the one error policy (deepcollapse.output.run_command)."""
    out = io.StringIO()
    code = run_command(lambda: run_measure(parser().parse_args(argv), out=out))
    return code, out.getvalue()


def near_optimum(problem, noise=0.1, seed=0):
    """LayerNorm features near the optimum (centred, on the √d sphere) and the optimal W, b."""
    sol = ufm.solve(problem)
    rng = np.random.default_rng(seed)
    H = sol.H.T + noise * rng.normal(size=sol.H.T.shape)
    H -= H.mean(axis=1, keepdims=True)
    H *= problem.r / np.linalg.norm(H, axis=1, keepdims=True)
    return sol, H, problem.labels


def same(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


CE = ufm.Problem("ce", 4, 5, 8, 0.01, features="layernorm")
MSE = ufm.Problem("mse", 4, 5, 8, 0.01, features="layernorm")


def test_measure_features_is_metrics_plus_distance_flat_and_json_able():
    sol, H, y = near_optimum(CE)
    got = measure_features(H, y, sol.W, lam=0.01)
    metrics = collapse_metrics(H, y, sol.W)
    dist = distance_to_optimum(H, y, sol.W, lam=0.01)
    for k, v in metrics.items():
        assert same(got[k], v), k
    for k, v in dist.items():
        if k != "problem":
            assert same(got[k], v), k
    assert got["ufm_loss"] == "ce" and got["ufm_bias"] == "none" and got["ufm_lam_W"] == 0.01
    assert got["num_classes"] == 4 and got["width"] == 8 and got["n_samples"] == 20
    assert got["radius"] == pytest.approx(math.sqrt(8)) and got["centered"] is True
    assert all(isinstance(v, (str, bool, int, float, type(None))) for v in got.values())
    assert json.loads(json.dumps(got)).keys() == got.keys()
    assert 0 < got["gap"] and got["feasible"]


def test_measure_npz_and_table(tmp_path):
    sol, H, y = near_optimum(CE)
    b = 0.1 * np.arange(4.0)
    path = tmp_path / "feats.npz"
    np.savez(path, features=H.astype(np.float32), labels=y, W=sol.W, b=b)
    res = measure_npz(path, lam=0.01)
    want = measure_features(H.astype(np.float32), y, sol.W, b, lam=0.01)
    assert res["file"] == str(path) and res["ufm_bias"] == "free"
    for k, v in want.items():
        assert same(res[k], v), k
    code, text = run([str(path), "--lam", "0.01", "--all"])
    assert code == 0
    lines = text.splitlines()
    assert lines[0].startswith(f"{path}: N = 20, K = 4, d = 8")
    rows = [ln for ln in lines if ln.startswith("  ") and ln.split()[0] != "value"]
    table = {ln.split()[0]: ln.split()[1] for ln in rows}
    for key in ("nc1", "nc2", "nc3", "nc4", "gap", "rel_gap", "nc2_ufm", "nc3_ufm", "feasible",
                "self_duality"):
        assert key in table, key
    assert float(table["gap"]) == pytest.approx(res["gap"], rel=1e-5)
    # aligned: every value starts in the same column
    starts = {len(ln) - len(ln.lstrip()[len(ln.split()[0]) :].lstrip()) for ln in rows}
    assert len(starts) == 1


def test_the_table_leads_with_the_headline_numbers_their_meaning_and_direction(tmp_path):
    sol, H, y = near_optimum(CE)
    path = tmp_path / "feats.npz"
    np.savez(path, features=H, labels=y, W=sol.W)
    code, text = run([str(path), "--lam", "0.01"])
    assert code == 0
    rows = [ln.split(None, 3) for ln in text.splitlines() if ln.startswith("  ")]
    head, body = rows[0], rows[1:]
    assert head == ["value", "better", "meaning"]
    # the headline, in order, each with its direction; nothing else without --all
    assert [r[0] for r in body] == ["gap", "rel_gap", "nc1", "nc2_ufm", "nc3_ufm", "nc4",
                                    "w_norm_ratio"]
    assert [r[2] for r in body] == ["lower"] * 6 + ["→"]
    res = measure_npz(path, lam=0.01)
    assert float(body[0][1]) == pytest.approx(res["gap"], rel=1e-5)
    assert "SGD" in text and "AdamW" in text and "--all" in text
    assert "procrustes_W" not in text and "procrustes_W" in run([str(path), "--lam", "0.01",
                                                                 "--all"])[1]


def test_json_output_and_the_mse_orthogonal_frame(tmp_path):
    # at the exact LayerNorm-MSE optimum (no bias): zero gap, and NC2 is 0 only against the
    # optimum's own geometry (an orthogonal frame), not against the simplex ETF
    sol, H, y = near_optimum(MSE, noise=0.0)
    path = tmp_path / "mse.npz"
    np.savez(path, features=H, labels=y, W=sol.W)
    code, text = run([str(path), "--lam", "0.01", "--loss", "mse", "--json"])
    assert code == 0
    res = json.loads(text, parse_constant=_no_constants)  # strict: NaN would raise
    assert res.pop("schema_version") == 1
    assert res == json.loads(json.dumps(measure_npz(path, lam=0.01, loss="mse")).replace(
        "NaN", "null"))
    assert res["optimum_geometry"] == "orthogonal_frame" and res["ufm_loss"] == "mse"
    assert abs(res["gap"]) < 1e-9 and res["nc2_ufm"] < 1e-8 and res["nc3_ufm"] < 1e-8
    assert res["nc2"] == pytest.approx(math.sqrt(2 - 2 * math.sqrt(3 / 4)), rel=1e-9)


def _no_constants(name):
    raise ValueError(f"not strict JSON: {name}")


def test_tiny_features_give_an_answer_not_a_math_domain_error(tmp_path):
    sol, H, y = near_optimum(CE)
    res = measure_features(H * 1e-300, y, sol.W, lam=0.01)
    # radius ~1e-300: the logits vanish, so the optimum is log K with W = 0
    assert res["optimum_value"] == pytest.approx(math.log(4), rel=1e-12)
    assert res["gap"] >= 0 and math.isfinite(res["gap"])


def _bad_files(tmp_path):
    sol, H, y = near_optimum(CE)
    files = {}

    def save(name, **arrays):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], **arrays)

    save("no_W", features=H, labels=y)
    save("no_labels_no_W", features=H)
    save("short_labels", features=H, labels=y[:-1], W=sol.W)
    save("wide_W", features=H, labels=y, W=np.hstack([sol.W, sol.W]))
    save("bad_b", features=H, labels=y, W=sol.W, b=np.zeros(3))
    save("flat_features", features=H.ravel(), labels=y, W=sol.W)
    save("text_labels", features=H, labels=np.array(["a"] * 20), W=sol.W)
    save("pickled", features=np.array([H], dtype=object), labels=y, W=sol.W)
    save("zero", features=np.zeros_like(H), labels=y, W=sol.W)
    (tmp_path / "notes.txt").write_text("not an archive")
    files["text"] = tmp_path / "notes.txt"
    np.save(tmp_path / "single.npy", H)
    files["npy"] = tmp_path / "single.npy"
    files["missing"] = tmp_path / "nothing_here.npz"
    files["folder"] = tmp_path
    return files


@pytest.mark.parametrize(
    "name,extra,message",
    [
        ("no_W", [], r"lacks the array\(s\) W"),
        ("no_labels_no_W", [], r"lacks the array\(s\) labels, W"),
        ("short_labels", [], "labels must be 1-D with N = 20"),
        ("wide_W", [], r"W must be 2-D \(K, d = 8\)"),
        ("bad_b", [], r"b must have shape \(K,\) = \(4,\)"),
        ("flat_features", [], "features must be 2-D"),
        ("text_labels", [], "array labels has dtype"),
        ("pickled", [], "cannot read its arrays"),
        ("zero", [], "all zero"),
        ("text", [], "not an .npz archive"),
        ("npy", [], r"single array \(.npy\)"),
        ("missing", [], "no such file"),
        ("folder", [], "is a folder"),
        ("no_W", ["--loss", "hinge"], "--loss must be ce or mse"),
    ],
)
def test_user_errors_print_one_line_and_return_2(tmp_path, capsys, name, extra, message):
    path = _bad_files(tmp_path)[name]
    code, text = run([str(path), "--lam", "0.01", *extra])
    err = capsys.readouterr().err
    assert code == 2 and text == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    if not extra:  # the library raises what the command prints
        with pytest.raises(ValueError, match=message):
            measure_npz(path, lam=0.01)


@pytest.mark.parametrize(
    "lam,message",
    [(None, "--lam is required"), ("abc", "positive number"), ("-1", "positive number"),
     ("nan", "positive number"), ("0", "positive number")],
)  # fmt: skip
def test_bad_lam(tmp_path, capsys, lam, message):
    sol, H, y = near_optimum(CE)
    path = tmp_path / "ok.npz"
    np.savez(path, features=H, labels=y, W=sol.W)
    code, _ = run([str(path)] + ([] if lam is None else ["--lam", lam]))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
