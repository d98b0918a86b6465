"""Sweeps on every core and on Ray: same numbers as one process, resumable after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reduction.sweep import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def serial(tmp_path_factory, digits, tiny_preset):
    return run_sweep(
        tiny_preset, tmp_path_factory.mktemp("serial"), progress=False, data=digits, workers=1
    )


def _table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path / "results.csv") as f:
        return {(r["depth"], r["seed"]): r for r in csv.DictReader(f)}


NUMBERS = ("objective", "fit", "body_penalty", "nc1", "nc3", "grad_norm", "objective_gap")


def test_two_workers_give_the_same_results(tmp_path, serial, digits, tiny_preset):
    par = run_sweep(tiny_preset, tmp_path, progress=False, data=digits, workers=2)
    assert par.trained == 6
    a, b = _table(serial.out_dir), _table(tmp_path)
    assert a.keys() == b.keys() and len(a) == 6
    for key in a:
        for col in NUMBERS:
            assert a[key][col] == b[key][col], (key, col)  # bitwise: same single-threaded work


def test_ray_backend_gives_the_same_results(tmp_path, serial, digits, tiny_preset):
    pytest.importorskip("ray")
    res = run_sweep(tiny_preset, tmp_path, progress=False, data=digits, workers=2, backend="ray")
    assert res.trained == 6
    a, b = _table(serial.out_dir), _table(tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        for col in NUMBERS:
            assert a[key][col] == b[key][col], (key, col)
    # the driver wrote every file the workers produced, relative continuation paths included
    for run in (tmp_path / "runs").iterdir():
        assert {"row.json", "checkpoint.pt", "config.json", "metrics.json"} <= {
            p.name for p in run.iterdir()
        }


def test_bad_backend_settings_are_one_clear_error(tmp_path, digits, tiny_preset):
    with pytest.raises(ValueError, match="workers must be ≥ 1"):
        run_sweep(tiny_preset, tmp_path, data=digits, workers=0, progress=False)
    with pytest.raises(ValueError, match="backend"):
        run_sweep(tiny_preset, tmp_path, data=digits, backend="slurm", progress=False)
    pytest.importorskip("ray")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="no Ray cluster answers"):
        run_sweep(
            tiny_preset, tmp_path, data=digits, backend="ray", address="127.0.0.1:1",
            progress=False,
        )
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "sweep.json").exists()  # rejected before anything was written


def test_killed_parallel_sweep_resumes_and_loses_nothing(tmp_path):
    """SIGKILL the driver of a 2-worker sweep mid-run: its workers die with it (no orphan keeps
    writing), and the restarted sweep finishes every unit exactly once."""
    out = tmp_path / "k"
    cmd = [
        sys.executable,
        "-m",
        "reduction",
        "sweep",
        "--preset",
        "cpu-rn1-mnist1d",
        "--out",
        str(out),
        "--depths",
        "0,1,2,3",
        "--seeds",
        "0,1",
        "--set",
        "epochs=150",
        "--set",
        "width=16",
        "--set",
        "n_per_class=20",
        "--set",
        "device=cpu",
        "--workers",
        "2",
        "--no-budget-check",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("runs/*/row.json"))) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # no worker of the killed driver is still alive (they die with it; multiprocessing's
    # resource tracker exits once it has cleaned up)
    for _ in range(100):
        alive = subprocess.run(["pgrep", "-a", "-s", str(proc.pid)], capture_output=True, text=True)
        if not alive.stdout.strip():
            break
        time.sleep(0.1)
    assert alive.stdout.strip() == "", alive.stdout
    done_before = len(list(out.glob("runs/*/row.json")))
    assert 2 <= done_before < 8
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["depth"], r["seed"]) for r in rows) == sorted(
        (str(d), str(s)) for d in (0, 1, 2, 3) for s in (0, 1)
    )
    assert all(r["status"] == "ok" for r in rows)


def test_batched_seeds_match_separate_runs(tmp_path, digits, tiny_preset):
    from dataclasses import replace

    adam = replace(
        tiny_preset,
        # float64: batched and single matmuls round differently, which float32 would amplify
        config={
            **tiny_preset.config,
            "optimizer": "adam",
            "lr": 3e-3,
            "lr_schedule": "constant",
            "dtype": "float64",
        },
    )
    one = run_sweep(adam, tmp_path / "one", progress=False, data=digits, workers=1)
    bat = run_sweep(
        adam, tmp_path / "bat", progress=False, data=digits, batch_seeds=True, budget_check=True
    )
    assert bat.trained == 6
    a = {(r["depth"], r["seed"]): r for r in one.rows}
    b = {(r["depth"], r["seed"]): r for r in bat.rows}
    assert a.keys() == b.keys()
    for key in a:
        for col in NUMBERS:
            assert b[key][col] == pytest.approx(a[key][col], rel=1e-8, abs=1e-12), (key, col)
    assert {c["depth"] for c in bat.budget_checks} == {1, 3}
    with pytest.raises(ValueError, match="line search per seed"):
        run_sweep(tiny_preset, tmp_path / "lbfgs", data=digits, batch_seeds=True, progress=False)
