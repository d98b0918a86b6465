"""Reliability: a sweep survives every failure, and every user error is one clear line."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deepnet import RunConfig, TrainingDivergedError, build_model, train
from deepnet.data import load_dataset
from reduction.sweep import run_sweep, sweep_lock
from tests.test_sweep import TINY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(1)
    return load_dataset("digits", n_per_class=8, test_per_class=5, seed=0)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- sweep isolation


def test_rejected_sweep_writes_nothing(tmp_path, digits):
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="epochs"):
        run_sweep(TINY, out, overrides={"epochs": 0}, data=digits, workers=1, progress=False)
    assert not (out / "sweep.json").exists()
    res = run_sweep(TINY, out, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False)
    assert res.trained == 1


def test_a_failing_unit_is_recorded_and_the_sweep_goes_on(tmp_path, digits):
    def flaky(config, **kw):
        if config.depth == 1 and config.seed == 0:
            raise TrainingDivergedError("objective is nan at epoch 7")
        if config.depth == 1 and config.seed == 1:
            raise RuntimeError("disk on fire")
        return train(config, **kw)

    res = run_sweep(TINY, tmp_path, data=digits, trainer=flaky, workers=1, progress=False)
    status = {(r["depth"], r["seed"]): r["status"] for r in res.rows}
    assert status[(1, 0)] == "diverged" and status[(1, 1)] == "failed"
    assert sum(s == "ok" for s in status.values()) == 4  # depth 3 continued from depth 0
    failed = {(r["depth"], r["seed"]): r for r in res.rows if r["status"] != "ok"}
    assert "disk on fire" in failed[(1, 1)]["error"]
    cfg3 = next(r for r in res.rows if r["depth"] == 3 and r["seed"] == 0)["config"]
    assert cfg3["init"] == "default"  # no finished shallower run with blocks: a fresh start
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert {(f["depth"], f["seed"]) for f in saved["failed"]} == {(1, 0), (1, 1)}
    # a restart retries the failed unit (not the deterministic divergence)
    again = run_sweep(TINY, tmp_path, data=digits, workers=1, progress=False)
    status = {(r["depth"], r["seed"]): r["status"] for r in again.rows}
    assert status[(1, 1)] == "ok" and status[(1, 0)] == "diverged"


def test_corrupt_checkpoint_is_moved_aside_and_the_unit_restarts(tmp_path, digits):
    run_sweep(TINY, tmp_path, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False)
    run = tmp_path / "runs" / "L1-s0"
    (run / "row.json").unlink()
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    res = run_sweep(TINY, tmp_path, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False)
    assert res.rows[0]["status"] == "ok" and res.trained == 1
    kept = list(run.glob("checkpoint.pt.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 100


def test_results_are_rebuilt_from_run_folders(tmp_path, digits):
    run_sweep(TINY, tmp_path, depths=(0, 1), seeds=(0,), data=digits, workers=1, progress=False)
    calls = {"n": 0}

    def killed(config, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return train(config, **kw)

    with pytest.raises(KeyboardInterrupt):  # extend the finished sweep, then kill it
        run_sweep(
            TINY,
            tmp_path,
            depths=(0, 1, 2, 3),
            seeds=(0,),
            data=digits,
            trainer=killed,
            workers=1,
            progress=False,
        )
    assert sorted(int(r["depth"]) for r in _rows(tmp_path)) == [0, 1, 2]
    # duplicated depths train once; a row.json of {} is not a row
    (tmp_path / "runs" / "L2-s0" / "row.json").write_text("{}")
    res = run_sweep(
        TINY, tmp_path, depths=(0, 1, 2, 2, 3), seeds=(0,), data=digits, workers=1, progress=False
    )
    depths = [int(r["depth"]) for r in _rows(tmp_path)]
    assert depths == [0, 1, 2, 3] and res.trained == 2
    assert all(r["objective"] for r in _rows(tmp_path))


def test_two_sweeps_cannot_write_one_folder(tmp_path, digits):
    with sweep_lock(tmp_path):
        with pytest.raises(ValueError, match=f"in use by another sweep \\(pid {os.getpid()}\\)"):
            run_sweep(TINY, tmp_path, data=digits, workers=1, progress=False)


# -------------------------------------------------------------------------------- defaults


@pytest.mark.parametrize("dataset", ["digits", "mnist1d", "bbc"])
def test_default_config_works_on_every_small_offline_dataset(dataset):
    cfg = RunConfig(dataset=dataset, arch="t11")
    from deepnet import load_run_data

    data = load_run_data(cfg)
    model = build_model(cfg, data)  # patch size chosen to divide the input
    x = torch.as_tensor(data.x_train[:4])
    assert model(x).shape == (4, data.num_classes)


# ----------------------------------------------------------------------------- CLI errors


def test_cli_errors_are_one_line(tmp_path):
    ok = _cli(
        "-m", "deepnet", "train", "--dataset", "digits", "--epochs", "5", "--width", "8",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    _one_line_error(_cli("-m", "deepnet", "train", "--seed", "-1"), 2, "seed")
    _one_line_error(
        _cli("-m", "deepnet", "train", "--dataset", "cifar10", "--no-progress"), 2, "error:"
    )
    _one_line_error(_cli("-m", "deepnet", "train", "--epochs", "1.5"), 2, "error:")
    _one_line_error(
        _cli("-m", "reduction", "sweep", "--preset", "cpu-rn1-mnist1d", "--set", "lr=abc"),
        2,
        "lr must be a number",
    )
    _one_line_error(_cli("-m", "reduction", "sweep", "--preset", "nope"), 2, "unknown preset")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the check is only meaningful for users
            _one_line_error(
                _cli("-m", "reduction", "sweep", "--preset", "cpu-rn1-mnist1d", "--out",
                     str(ro / "x"), "--depths", "0", "--seeds", "0"),
                2,
                "error:",
            )  # fmt: skip
    finally:
        ro.chmod(0o700)
    run = tmp_path / "run"
    base = ["-m", "deepnet", "train", "--dataset", "digits", "--epochs", "3", "--width", "8",
            "--device", "cpu", "--no-progress", "--out", str(run)]  # fmt: skip
    assert _cli(*base).returncode == 0
    _one_line_error(_cli(*base[:-2], "--lr", "0.5", "--out", str(run)), 2, "different config")
    diverge = ["-m", "deepnet", "train", "--dataset", "digits", "--epochs", "50", "--width", "8",
               "--device", "cpu", "--no-progress", "--optimizer", "sgd", "--lr", "1e4",
               "--momentum", "0", "--lr-schedule", "constant"]  # fmt: skip
    _one_line_error(_cli(*diverge), 3, "diverged")


@pytest.mark.parametrize("module", ["deepnet", "reduction", "ufm"])
def test_version_on_every_command(module):
    proc = _cli("-m", module, "--version")
    assert proc.returncode == 0 and "deepcollapse" in proc.stdout


def test_a_divergence_before_any_checkpoint_says_so(tmp_path):
    data = load_dataset("digits", n_per_class=5, test_per_class=2)
    cfg = RunConfig(
        dataset="digits", width=8, epochs=50, optimizer="sgd", lr=1e4, momentum=0.0,
        lr_schedule="constant", device="cpu", checkpoint_every=1000,
    )  # fmt: skip
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet"):
        train(cfg, data=data, run_dir=tmp_path, progress=False)
    cfg2 = replace(cfg, checkpoint_every=1, eval_every=1)
    with pytest.raises(TrainingDivergedError, match="last good checkpoint is kept"):
        train(cfg2, data=data, run_dir=tmp_path / "b", progress=False)


def test_ln_affine_sweep_is_refused_before_anything_is_written(tmp_path, digits):
    """An affine LN leaves the sphere and its undecayed scale lets (λ/2)‖W‖² vanish: no UFM
    applies, so the sweep refuses with one clear error instead of reporting gaps."""
    with pytest.raises(ValueError, match="parameter-free LayerNorm"):
        run_sweep(TINY, tmp_path, overrides={"ln_affine": True}, data=digits, workers=1)
    assert not (tmp_path / "sweep.json").exists()
