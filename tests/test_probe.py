"""scripts/stationarity_probe.py: its minimum-norm hull solver, and an end-to-end run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stationarity_probe.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("stationarity_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_min_norm_in_hull_known_answers(probe) -> None:
    # opposite vectors: 0 is in the hull; orthogonal unit vectors: the midpoint, norm 1/√2;
    # a hull away from 0: its nearest point (1, 0) of the segment from (1, -1) to (1, 1)
    assert probe.min_norm_in_hull(np.array([[1.0, 0.0], [-1.0, 0.0]])) < 1e-9
    assert abs(probe.min_norm_in_hull(np.eye(2)) - 2**-0.5) < 1e-9
    assert abs(probe.min_norm_in_hull(np.array([[1.0, -1.0], [1.0, 1.0], [3.0, 0.0]])) - 1) < 1e-9


@pytest.mark.slow
def test_probe_runs_on_a_finished_run(tmp_path) -> None:
    from deepnet import RunConfig, train

    cfg = RunConfig(
        arch="rn1", dataset="digits", depth=1, width=8, n_per_class=5, test_per_class=2,
        optimizer="lbfgs", epochs=5, eval_every=5, num_threads=1,
    )
    train(cfg, run_dir=tmp_path / "run", progress=False)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run"), "--eps", "1e-3", "--samples", "3"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "‖∇J‖" in out and "ε = 1e-03" in out and "ΔJ along −∇J" in out
    assert "LN blocks" in out or "LN norms" in out


@pytest.mark.slow
def test_probe_refuses_a_folder_that_is_not_a_run(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: {tmp_path} is not a finished run folder (no config.json)"


STUDY = Path(__file__).resolve().parents[1] / "scripts" / "ln_eps_study.py"


@pytest.mark.slow
def test_ln_eps_study_on_a_tiny_config(tmp_path) -> None:
    """The ε × readout study end to end on a tiny slice of the Fashion-MNIST transformer preset:
    one row per cell, ε reaches the model, and the spreads and norms are measured."""
    import csv
    import math

    pytest.importorskip("deepnet.data")
    from deepnet.data import load_dataset

    try:
        load_dataset("fashion-mnist", n_per_class=2, test_per_class=1)
    except (FileNotFoundError, ValueError) as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    cmd = [
        sys.executable, str(STUDY), "--out", str(tmp_path / "s"), "--presets", "cpu-t11-fashion",
        "--eps", "1e-2,1e-5", "--readouts", "cls,mean", "--epochs", "4", "--workers", "1",
        "--set", "n_per_class=3", "--set", "test_per_class=1", "--set", "width=8",
        "--set", "escape_lbfgs_iters=2", "--set", "escape_adam_steps=3",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "s" / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["ln_eps"], r["readout"]) for r in rows} == {
        ("0.01", "cls"), ("0.01", "mean"), ("1e-05", "cls"), ("1e-05", "mean")
    }
    for r in rows:
        assert 0 < float(r["min_spread"]) and 0 < float(r["min_norm"]) <= 1.0
        assert int(r["iterations"]) >= 1 and math.isfinite(float(r["objective"]))
    cfg = (tmp_path / "s" / "cpu-t11-fashion" / "eps0.01-cls-s0" / "config.json").read_text()
    assert '"ln_eps": 0.01' in cfg and '"readout": "cls"' in cfg
    assert "| cpu-t11-fashion | 0.01 | cls |" in (tmp_path / "s" / "study.md").read_text()
    # a second call reads the finished runs back, and a bad list is one line
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "| cpu-t11-fashion |" in again.stdout
    bad = subprocess.run([*cmd[:2], "--out", str(tmp_path / "b"), "--readouts", "middle"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "middle" in bad.stderr and "Traceback" not in bad.stderr


COMPARE = Path(__file__).resolve().parents[1] / "scripts" / "compare_sweeps.py"


@pytest.mark.slow
def test_compare_sweeps_measures_run_to_run_differences(tmp_path) -> None:
    import json
    import shutil

    from deepnet.data import load_dataset
    from reduction.presets import Preset
    from reduction.sweep import run_sweep

    preset = Preset(
        name="tiny", description="t", depths=(0, 1), seeds=(0,), budget_check=False,
        config={"arch": "rn1", "dataset": "digits", "width": 8, "n_per_class": 5,
                "test_per_class": 2, "optimizer": "lbfgs", "epochs": 5, "eval_every": 5,
                "escape_lbfgs_iters": 2, "escape_adam_steps": 3, "device": "cpu"},
    )  # fmt: skip
    data = load_dataset("digits", n_per_class=5, test_per_class=2, seed=0)
    run_sweep(preset, tmp_path / "a", progress=False, data=data, workers=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    row_file = tmp_path / "b" / "runs" / "L1-s0" / "row.json"
    row = json.loads(row_file.read_text())
    row["objective"] *= 1 + 3e-4  # as if another CPU had summed in another order
    row_file.write_text(json.dumps(row))
    out = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / "a"), str(tmp_path / "b"),
                          "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["runs_compared"] == 2 and result["converged_differs"] == []
    assert abs(result["max_rel_diff"]["objective"] - 3e-4) < 1e-9
    assert result["max_rel_diff"]["nc1"] == 0.0
    same = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / "a"), str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert same.returncode == 0 and "objective: largest relative difference 0.00e+00" in same.stdout
    bad = subprocess.run([sys.executable, str(COMPARE), str(tmp_path), str(tmp_path / "a")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
