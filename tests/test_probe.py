"""scripts/stationarity_probe.py: its minimum-norm hull solver, and an end-to-end run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_probe_refuses_a_folder_that_is_not_a_run(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: {tmp_path} is not a finished run folder (no config.json)"

