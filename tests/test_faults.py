"""Reliability: a sweep survives every failure, and every user error is one clear line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deepnet import RunConfig, TrainingDivergedError, build_model, check_threads, train
from deepnet.config import fingerprint
from deepnet.data import load_dataset
from reduction.aggregate import report
from reduction.folder import sweep_lock
from reduction.plan import Sweep
from reduction.presets import Preset
from reduction.sweep import run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _one_line_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- sweep isolation


def test_rejected_sweep_writes_nothing(tmp_path, digits, tiny_preset):
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="epochs"):
        run_sweep(tiny_preset, out, overrides={"epochs": 0}, data=digits, workers=1, progress=False)
    assert not (out / "sweep.json").exists()
    res = run_sweep(
        tiny_preset, out, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False
    )
    assert res.trained == 1


def test_a_failing_unit_is_recorded_and_the_sweep_goes_on(tmp_path, digits, tiny_preset):
    def flaky(config, **kw):
        if config.depth == 1 and config.seed == 0:
            raise TrainingDivergedError("objective is nan at epoch 7")
        if config.depth == 1 and config.seed == 1:
            raise RuntimeError("disk on fire")
        return train(config, **kw)

    res = run_sweep(tiny_preset, tmp_path, data=digits, trainer=flaky, workers=1, progress=False)
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
    again = run_sweep(tiny_preset, tmp_path, data=digits, workers=1, progress=False)
    status = {(r["depth"], r["seed"]): r["status"] for r in again.rows}
    assert status[(1, 1)] == "ok" and status[(1, 0)] == "diverged"


def test_corrupt_checkpoint_is_moved_aside_and_the_unit_restarts(tmp_path, digits, tiny_preset):
    run_sweep(
        tiny_preset, tmp_path, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False
    )
    run = tmp_path / "runs" / "L1-s0"
    (run / "row.json").unlink()
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    res = run_sweep(
        tiny_preset, tmp_path, depths=(1,), seeds=(0,), data=digits, workers=1, progress=False
    )
    assert res.rows[0]["status"] == "ok" and res.trained == 1
    kept = list(run.glob("checkpoint.pt.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 100


def test_results_are_rebuilt_from_run_folders(tmp_path, digits, tiny_preset):
    run_sweep(
        tiny_preset, tmp_path, depths=(0, 1), seeds=(0,), data=digits, workers=1, progress=False
    )
    calls = {"n": 0}

    def killed(config, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return train(config, **kw)

    with pytest.raises(KeyboardInterrupt):  # extend the finished sweep, then kill it
        run_sweep(
            tiny_preset,
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
        tiny_preset, tmp_path, depths=(0, 1, 2, 2, 3), seeds=(0,), data=digits, workers=1,
        progress=False,
    )
    depths = [int(r["depth"]) for r in _rows(tmp_path)]
    assert depths == [0, 1, 2, 3] and res.trained == 2
    assert all(r["objective"] for r in _rows(tmp_path))


def test_two_sweeps_cannot_write_one_folder(tmp_path, digits, tiny_preset):
    with sweep_lock(tmp_path):
        with pytest.raises(ValueError, match=f"in use by another sweep \\(pid {os.getpid()}\\)"):
            run_sweep(tiny_preset, tmp_path, data=digits, workers=1, progress=False)


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


def test_cli_errors_are_one_line(tmp_path, run_python):
    ok = run_python(
        "-m", "deepnet", "train", "--dataset", "digits", "--epochs", "5", "--width", "8",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    _one_line_error(run_python("-m", "deepnet", "train", "--seed", "-1"), 2, "seed")
    _one_line_error(
        run_python("-m", "deepnet", "train", "--dataset", "cifar10", "--no-progress"), 2, "error:"
    )
    _one_line_error(run_python("-m", "deepnet", "train", "--epochs", "1.5"), 2, "error:")
    _one_line_error(
        run_python("-m", "reduction", "sweep", "--preset", "cpu-rn1-mnist1d", "--set", "lr=abc"),
        2,
        "lr must be a number",
    )
    _one_line_error(run_python("-m", "reduction", "sweep", "--preset", "nope"), 2, "unknown preset")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the check is only meaningful for users
            _one_line_error(
                run_python("-m", "reduction", "sweep", "--preset", "cpu-rn1-mnist1d", "--out",
                     str(ro / "x"), "--depths", "0", "--seeds", "0"),
                2,
                "error:",
            )  # fmt: skip
    finally:
        ro.chmod(0o700)
    run = tmp_path / "run"
    base = ["-m", "deepnet", "train", "--dataset", "digits", "--epochs", "3", "--width", "8",
            "--device", "cpu", "--no-progress", "--out", str(run)]  # fmt: skip
    assert run_python(*base).returncode == 0
    _one_line_error(run_python(*base[:-2], "--lr", "0.5", "--out", str(run)), 2, "different config")
    diverge = ["-m", "deepnet", "train", "--dataset", "digits", "--epochs", "50", "--width", "8",
               "--device", "cpu", "--no-progress", "--optimizer", "sgd", "--lr", "1e4",
               "--momentum", "0", "--lr-schedule", "constant"]  # fmt: skip
    _one_line_error(run_python(*diverge), 3, "diverged")


@pytest.mark.parametrize("module", ["deepnet", "reduction", "ufm"])
def test_version_on_every_command(module, run_python):
    proc = run_python("-m", module, "--version")
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


def test_ln_affine_sweep_is_refused_before_anything_is_written(tmp_path, digits, tiny_preset):
    """An affine LN leaves the sphere and its undecayed scale lets (λ/2)‖W‖² vanish: no UFM
    applies, so the sweep refuses with one clear error instead of reporting gaps."""
    with pytest.raises(ValueError, match="parameter-free LayerNorm"):
        run_sweep(tiny_preset, tmp_path, overrides={"ln_affine": True}, data=digits, workers=1)
    assert not (tmp_path / "sweep.json").exists()


# ------------------------------------------------------------- folders that cannot lie (issue 23)
# Each probe is a tiny mnist1d sweep (width 8, 6 samples per class, 20 L-BFGS iterations).

MNIST1D = Preset(
    name="tiny-rn1-mnist1d",
    description="fault probes",
    config={
        "arch": "rn1",
        "dataset": "mnist1d",
        "width": 8,
        "n_per_class": 6,
        "test_per_class": 3,
        "lam": 0.005,
        "optimizer": "lbfgs",
        "init": "continuation",
        "epochs": 20,
        "device": "cpu",
        "checkpoint_every": 10,
        "eval_every": 10,
        "grad_tol": 1.0,
        "rel_tol": 1.0,
        "data_seed": 0,
    },
    depths=(0, 1, 2),
    seeds=(0,),
    budget_check=False,
)


@pytest.fixture(scope="module")
def mnist1d():
    torch.set_num_threads(1)
    return load_dataset("mnist1d", n_per_class=6, test_per_class=3, seed=0)


def _sweep(out: Path, data, **kw):
    kw = {"workers": 1, "progress": False, **kw}
    return run_sweep(MNIST1D, out, data=data, **kw)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns); the lock file,
    which any sweep that takes it rewrites with its pid, is not the folder's content."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_every_row_and_run_folder_carries_the_sweep_fingerprint(tmp_path, mnist1d):
    res = _sweep(tmp_path, mnist1d)
    fp = json.loads((tmp_path / "sweep.json").read_text())["fingerprint"]
    assert len(fp) == 16 and res.fingerprint == fp
    assert json.loads((tmp_path / "summary.json").read_text())["fingerprint"] == fp
    assert {r["fingerprint"] for r in _rows(tmp_path)} == {fp}
    for run in (tmp_path / "runs").iterdir():
        assert json.loads((run / "row.json").read_text())["fingerprint"] == fp
        # config.json carries it too: computed from what it says (it holds only RunConfig fields)
        written = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
        assert fingerprint(written, continuation=True) == fp
    # what does not define the runs leaves it alone; what does changes it
    same = replace(MNIST1D, config={**MNIST1D.config, "eval_every": 5, "num_threads": 1})
    assert Sweep(same, {}).identity.fingerprint == fp
    assert Sweep(MNIST1D, {"epochs": 10}).identity.fingerprint != fp


def test_other_settings_are_refused_with_or_without_sweep_json(tmp_path, mnist1d, caplog):
    _sweep(tmp_path, mnist1d, depths=(0, 1))
    (tmp_path / "sweep.json").unlink()  # deleted: the run folders still say what they hold
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"runs/L0-s0: .*epochs: 20 there, 10 here") as err:
        _sweep(tmp_path, mnist1d, depths=(0, 1, 2), overrides={"epochs": 10})
    assert "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before  # refused: nothing written, no run added
    # a garbage sweep.json is not rewritten over runs of other settings ...
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"sweep\.json is unreadable and runs/L0-s0"):
        _sweep(tmp_path, mnist1d, overrides={"epochs": 10})
    assert (tmp_path / "sweep.json").read_text() == "{not json"
    # ... and is rewritten, with a notice, when the runs agree with the sweep (garbage kept)
    with caplog.at_level("WARNING", logger="deepcollapse"):
        res = _sweep(tmp_path, mnist1d)
    assert "unreadable" in caplog.text and res.trained == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["fingerprint"] == res.fingerprint
    assert [p.read_text() for p in tmp_path.glob("sweep.json.corrupt-*")] == ["{not json"]
    assert {r["epochs"] for r in _rows(tmp_path)} == {"20"}


def test_results_csv_is_rebuilt_from_matching_rows_only(tmp_path, mnist1d):
    a, b = tmp_path / "a", tmp_path / "b"
    _sweep(a, mnist1d, depths=(0, 1))
    _sweep(b, mnist1d, depths=(2,), overrides={"epochs": 10})
    shutil.copytree(b / "runs" / "L2-s0", a / "runs" / "L2-s0")  # a run of other settings
    res = report(a)
    assert [r["depth"] for r in res.rows] == [0, 1]
    assert sorted(int(r["depth"]) for r in _rows(a)) == [0, 1]
    excluded = json.loads((a / "summary.json").read_text())["excluded"]
    assert [(e["run_dir"], "epochs: 10 there, 20 here" in e["why"]) for e in excluded] == [
        ("runs/L2-s0", True)
    ]
    with pytest.raises(ValueError, match=r"runs/L2-s0: holds a run made with other settings"):
        _sweep(a, mnist1d)


def test_continuation_reads_the_checkpoint_not_an_edited_config_json(tmp_path, mnist1d):
    _sweep(tmp_path, mnist1d, depths=(1, 2))
    run2 = tmp_path / "runs" / "L2-s0"
    cfg = json.loads((run2 / "config.json").read_text())
    (run2 / "config.json").write_text(json.dumps({**cfg, "depth": 1}))  # the edit of the probe
    before = _snapshot(tmp_path)
    # the resumed sweep reuses the finished L2 run: the edit is detected, not trusted
    with pytest.raises(ValueError, match=r"runs/L2-s0: config.json disagrees with row.json "
                       r"\(depth: 1 in config.json, 2 in row.json\)"):  # fmt: skip
        _sweep(tmp_path, mnist1d, depths=(1, 2, 3))
    assert _snapshot(tmp_path) == before
    # continuing from it directly reads the depth from the checkpoint and refuses the mismatch
    deeper = RunConfig.from_dict({**cfg, "depth": 3, "init_from": str(run2)})
    with pytest.raises(ValueError, match=r"disagrees with the checkpoint beside it \(depth: 1"):
        train(deeper, data=mnist1d, run_dir=tmp_path / "x", progress=False)
    # with config.json restored, L3 continues from the trained depth-2 model: it starts at J_2
    (run2 / "config.json").write_text(json.dumps(cfg))
    res = _sweep(tmp_path, mnist1d, depths=(1, 2, 3))
    assert res.trained == 1
    j2 = next(r for r in res.rows if r["depth"] == 2)["objective"]
    start = json.loads((tmp_path / "runs" / "L3-s0" / "metrics.json").read_text())["history"][0]
    assert start["objective"] == pytest.approx(j2, rel=1e-3)


def test_data_errors_are_refused_before_anything_is_written(tmp_path, mnist1d):
    out = tmp_path / "s"
    for bad, says in (
        ({"dataset": "nope"}, "unknown dataset 'nope'"),
        ({"n_per_class": 100000}, "n_per_class=100000 is too large"),
        ({"data_options": {"bogus": 1}}, r"unknown option\(s\) \['bogus'\]"),
    ):
        with pytest.raises(ValueError, match=says):
            run_sweep(MNIST1D, out, overrides=bad, workers=1, progress=False)
        assert not out.exists(), bad
    res = run_sweep(MNIST1D, out, depths=(0, 1), workers=1, progress=False)  # corrected
    assert [r["status"] for r in res.rows] == ["ok", "ok"]


def test_the_readme_cifar_example_without_data_root_leaves_nothing_behind(
    tmp_path, run_python, tiny_cifar
):

    out, root = tmp_path / "cifar", tmp_path / "data"
    tiny_cifar(root)
    base = ["-m", "reduction", "sweep", "--preset", "paper-fig1-rn1-cifar10", "--out", str(out),
            "--depths", "0,1", "--seeds", "0", "--epochs", "3", "--set", "width=8",
            "--set", "n_per_class=3", "--set", "test_per_class=1", "--set", "device=cpu",
            "--workers", "1", "--quiet"]  # fmt: skip
    _one_line_error(run_python(*base), 2, "CIFAR-10 needs root=")
    assert not out.exists()
    ok = run_python(*base, "--data-root", str(root), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["n_runs"] == 2


class Killer:
    """A trainer whose worker process is killed (SIGKILL, as by the out-of-memory killer) every
    time it trains the unit ``(depth, seed)``."""

    def __init__(self, depth: int, seed: int) -> None:
        self.unit = (depth, seed)

    def __call__(self, config, **kw):
        if (config.depth, config.seed) == self.unit:
            os.kill(os.getpid(), signal.SIGKILL)
        return train(config, **kw)


def _must_not_train(config, **kw):
    raise AssertionError(f"L{config.depth}-s{config.seed} was trained again")


def test_a_killed_worker_is_a_failed_row_and_the_sweep_goes_on(tmp_path, mnist1d):
    out = tmp_path / "s"
    res = _sweep(out, mnist1d, seeds=(0, 1), workers=2, trainer=Killer(1, 1))
    status = {(r["depth"], r["seed"]): r for r in res.rows}
    assert [status[(d, 0)]["status"] for d in (0, 1, 2)] == ["ok", "ok", "ok"]
    dead = status[(1, 1)]  # killed, retried once, killed again: failed for good, with the cause
    assert dead["status"] == "failed" and dead["worker_deaths"] == 2
    assert "killed by SIGKILL" in dead["error"] and "not retried" in dead["error"]
    assert status[(2, 1)]["status"] == "ok"  # the chain went on past it (a fresh start)
    deaths = json.loads((out / "runs" / "L1-s1" / "worker_deaths.json").read_text())
    assert deaths["count"] == 2 and len(deaths["causes"]) == 2
    # a unit that killed its worker twice is not retried on the next run
    again = _sweep(out, mnist1d, seeds=(0, 1), trainer=_must_not_train)
    assert again.trained == 0
    assert json.loads((out / "runs" / "L1-s1" / "worker_deaths.json").read_text())["count"] == 2


def test_ray_refuses_an_address_that_is_not_ray_within_seconds(tmp_path, mnist1d, monkeypatch):
    pytest.importorskip("ray")
    from reduction import execute

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.setattr(execute, "RAY_CONNECT_TIMEOUT_S", 2.0)
    t0 = time.perf_counter()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    with pytest.raises(ValueError, match="accepts connections but does not answer as a Ray"):
        _sweep(tmp_path / "s", mnist1d, backend="ray", address=address)
    assert time.perf_counter() - t0 < 10 and accepted
    assert not (tmp_path / "s").exists()
    server.close()


def test_ray_refuses_resources_the_cluster_lacks_and_data_it_cannot_load(tmp_path, mnist1d):
    ray = pytest.importorskip("ray")
    with pytest.raises(ValueError, match=r"lacks .*1000 GPU per unit, the cluster has \d"):
        _sweep(tmp_path / "s", mnist1d, backend="ray", gpus_per_unit=1000)
    assert not ray.is_initialized()  # the cluster it started was shut down
    # the data are checked where the units load them: on a worker
    with pytest.raises(ValueError, match="data cannot be loaded: unknown dataset 'nope'"):
        _sweep(tmp_path / "s", None, backend="ray", overrides={"dataset": "nope"})
    assert not ray.is_initialized()
    assert not (tmp_path / "s").exists()


def test_when_every_unit_fails_the_causes_are_printed(tmp_path, mnist1d, run_python):
    def broken(config, **kw):
        raise RuntimeError(f"disk on fire at depth {config.depth}")

    res = _sweep(tmp_path, mnist1d, trainer=broken)
    assert res.verdict["verdict"] == "no finished runs"
    assert "disk on fire at depth 0" in res.verdict["reason"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert [f["error"] for f in saved["failed"]] == [
        f"RuntimeError: disk on fire at depth {d}" for d in (0, 1, 2)
    ]
    text = run_python("-m", "reduction", "report", str(tmp_path))
    assert text.returncode == 0 and "disk on fire at depth 0" in text.stdout, text.stderr
    js = run_python("-m", "reduction", "report", str(tmp_path), "--json")
    assert js.returncode == 0, js.stderr
    errors = [f["error"] for f in json.loads(js.stdout)["verdict"]["failed"]]
    assert len(errors) == 3 and "disk on fire at depth 2" in errors[2]


def test_a_run_folder_that_cannot_be_written_is_that_units_error(tmp_path, mnist1d):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "L1-s0").write_text("")  # a file where the folder goes: even root fails
    res = _sweep(tmp_path, mnist1d)
    status = {r["depth"]: r for r in res.rows}
    assert status[0]["status"] == "ok" and status[2]["status"] == "ok"
    assert status[1]["status"] == "failed" and "row.json cannot be written" in status[1]["error"]
    assert [r["status"] for r in _rows(tmp_path)] == ["ok", "failed", "ok"]


def test_a_corrupt_shallower_checkpoint_is_moved_aside_and_redone(tmp_path, mnist1d):
    first = _sweep(tmp_path, mnist1d, depths=(1,))
    run1 = tmp_path / "runs" / "L1-s0"
    ckpt = run1 / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # the finished run's checkpoint is damaged
    res = _sweep(tmp_path, mnist1d, depths=(1, 2))
    assert [r["status"] for r in res.rows] == ["ok", "ok"] and res.trained == 2
    assert res.rows[0]["objective"] == first.rows[0]["objective"]  # redone, bitwise the same
    assert len(list(run1.glob("checkpoint.pt.corrupt-*"))) == 1
    assert len(list(run1.glob("row.json.corrupt-*"))) == 1
    cfg2 = json.loads((tmp_path / "runs" / "L2-s0" / "config.json").read_text())
    assert cfg2["init"] == "continuation" and cfg2["init_from"] == "../L1-s0"
    assert _sweep(tmp_path, mnist1d, depths=(1, 2)).trained == 0


def test_an_incomplete_row_is_unfinished_and_redone(tmp_path, mnist1d):
    _sweep(tmp_path, mnist1d, depths=(0, 1))
    path = tmp_path / "runs" / "L1-s0" / "row.json"
    row = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in row.items() if k != "objective"}))
    res = _sweep(tmp_path, mnist1d, depths=(0, 1))
    assert res.trained == 1  # redone (from its finished checkpoint): no KeyError
    assert res.rows[1]["objective"] == row["objective"]


def test_report_on_a_read_only_folder_writes_nothing(
    tmp_path, mnist1d, monkeypatch, caplog, run_python
):
    from reduction import aggregate

    _sweep(tmp_path / "s", mnist1d, depths=(0, 1))
    out = tmp_path / "s"
    before = _snapshot(out)
    res = report(out, write=False)
    assert [r["status"] for r in res.rows] == ["ok", "ok"] and not res.written
    elsewhere = report(out, dest=tmp_path / "elsewhere")
    assert elsewhere.paths["results"] == tmp_path / "elsewhere" / "results.csv"
    assert {"results.csv", "summary.json", "figure.png"} <= {
        p.name for p in (tmp_path / "elsewhere").iterdir()
    }
    monkeypatch.setattr(aggregate, "_writable", lambda folder: False)  # what a read-only mount says
    with caplog.at_level("WARNING", logger="deepcollapse"):
        assert report(out).rows == res.rows
    assert "read-only" in caplog.text
    assert _snapshot(out) == before
    if os.geteuid() != 0:  # a user's read-only folder, through the command (root writes anyway)
        for p in [out, *out.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            proc = run_python("-m", "reduction", "report", str(out), "--json")
            assert proc.returncode == 0 and json.loads(proc.stdout)["n_runs"] == 2, proc.stderr
        finally:
            for p in [out, *out.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_absurd_values_are_one_line(tmp_path, run_python):
    out = tmp_path / "s"
    base = ["-m", "reduction", "sweep", "--preset", "cpu-rn1-mnist1d", "--out", str(out),
            "--seeds", "0", "--quiet"]  # fmt: skip
    _one_line_error(
        run_python(*base, "--depths", "0,1000000", timeout=60), 2, "depths must be ≤ 10,000"
    )
    _one_line_error(
        run_python(*base, "--depths", "0", "--set", "num_threads=100000", timeout=60),
        2,
        "num_threads=100000 is more than the",
    )
    assert not out.exists()
    with pytest.raises(ValueError, match="more than the"):
        check_threads(100000)


def test_cli_sweep_where_every_run_fails_exits_1(
    tmp_path, digits, tiny_preset, monkeypatch, capsys
):
    import reduction.sweep as sweep_module
    from reduction.cli import main

    real = sweep_module.run_sweep

    def broken(config, **kw):
        raise RuntimeError("disk on fire")

    def tiny(preset, out, **kw):
        return real(tiny_preset, out, depths=(0, 1), seeds=(0,), data=digits, trainer=broken,
                    workers=1, progress=False, budget_check=False)  # fmt: skip

    monkeypatch.setattr(sweep_module, "run_sweep", tiny)
    code = main(["sweep", "--preset", "cpu-rn1-mnist1d", "--out", str(tmp_path / "s"), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1
    assert len(err) == 1 and "all 2 runs failed" in err[0] and "disk on fire" in err[0]
    assert (tmp_path / "s" / "results.csv").exists()  # nothing lost: the failures are recorded
