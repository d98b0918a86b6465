"""Shared fixtures (the digits data, the tiny sweep preset and its finished sweep, synthetic data
and small configs, subprocess helpers) and the test markers.

Every test is ``unit`` (no training, no subprocess that trains) or ``integration`` (trains
networks, runs sweeps or commands); ``slow`` marks the integration tests that take seconds each
(end-to-end commands, killed workers, Ray, the notebooks). ``make test-fast`` runs
``-m "not slow"``; ``make test`` runs everything (the gate CI runs). A test without ``unit`` or
``integration`` fails collection.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the environment of the commands the tests run: no display, one thread, this source tree
ENV = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if not (item.get_closest_marker("unit") or item.get_closest_marker("integration"))
    ]
    if unmarked:
        raise pytest.UsageError(
            f"tests without a unit or integration marker: {unmarked[:5]} "
            f"({len(unmarked)} in all); mark them (tests/conftest.py)"
        )


# ----------------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def digits() -> Any:
    """scikit-learn's 8×8 digits, 8 training and 5 test images per class (the tiny sweeps')."""
    import torch

    from deepnet.data import load_dataset

    torch.set_num_threads(1)
    return load_dataset("digits", n_per_class=8, test_per_class=5, seed=0)


def make_synthetic(kind: str = "image", n_per_class: int = 8, seed: int = 0) -> Any:
    """Separable synthetic data with K = 3: class-dependent mean plus noise (image, vector), or
    token sequences with a class token (text)."""
    from deepnet.data import Dataset

    K = 3
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    rng.shuffle(y)
    if kind == "text":
        x = rng.integers(2, 12, size=(len(y), 6)).astype(np.int64)
        x[:, 0] = 20 + y  # a class token
        x[::3, 4:] = 0
        return Dataset(
            "syn", "text", x, y, x[:6], y[:6], K, ["a", "b", "c"],
            vocab=[f"t{i}" for i in range(23)], info={"max_len": 6},
        )  # fmt: skip
    means = rng.normal(size=(K, 64)) * 2
    x = (means[y] + rng.normal(size=(len(y), 64))).astype(np.float32)
    x = x.reshape(-1, 1, 8, 8) if kind == "image" else x
    return Dataset("syn", kind, x, y, x[:6], y[:6], K, ["a", "b", "c"])


@pytest.fixture(scope="session")
def synthetic_data() -> Callable[..., Any]:
    """:func:`make_synthetic`: ``synthetic_data(kind, n_per_class, seed)``."""
    return make_synthetic


def make_small_config(**kw: Any) -> Any:
    """A small, fast RunConfig (rn1, depth 2, width 8, Adam, 40 epochs on the CPU), with ``kw``
    changed."""
    from deepnet import RunConfig

    base: dict[str, Any] = dict(
        arch="rn1", depth=2, width=8, epochs=40, lr=1e-2, eval_every=5, checkpoint_every=10,
        patch_size=4, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="session")
def small_config() -> Callable[..., Any]:
    """:func:`make_small_config`: ``small_config(**changes)``."""
    return make_small_config


def write_tiny_cifar(root: Path) -> dict:
    """5 train batches of 10 images (one per class) + a test batch of 20, Python-2 style keys.
    Batch 2 repeats an image of batch 1 with the same label (duplicate); batches 3 and 4 share an
    image under two labels (conflict); the test batch repeats a training image (overlap)."""
    rng = np.random.default_rng(5)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for _ in range(5):
        batches.append((rng.integers(0, 256, (10, 3072), dtype=np.uint8), list(range(10))))
    batches[1][0][0] = batches[0][0][0]  # duplicate: label 0 both times
    batches[3][0][4] = batches[2][0][3]  # conflict: label 3 vs label 4
    for i, (data, labels) in enumerate(batches, start=1):
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
    test = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    test[7] = batches[4][0][7]  # overlap with the training split
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({b"data": test, b"labels": [i % 10 for i in range(20)]}, f)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return {"batches": batches, "test": test}


@pytest.fixture(scope="session")
def tiny_cifar() -> Callable[[Path], dict]:
    """:func:`write_tiny_cifar`: ``tiny_cifar(root)`` writes a tiny CIFAR-10 folder."""
    return write_tiny_cifar


# --------------------------------------------------------------------------------- sweeps


def make_tiny_preset() -> Any:
    """L-RN1 on digits, depths 0, 1, 3, seeds 0, 1, 30 L-BFGS iterations with continuation and
    loose criteria: the sweep tests check the plumbing, not the optimiser."""
    from reduction.presets import Preset

    return Preset(
        name="tiny-rn1-digits",
        description="test sweep",
        config={
            "arch": "rn1",
            "dataset": "digits",
            "width": 16,
            "n_per_class": 8,
            "test_per_class": 5,
            "lam": 0.005,
            "optimizer": "lbfgs",
            "init": "continuation",
            "epochs": 30,
            "device": "cpu",
            "checkpoint_every": 10,
            "eval_every": 10,
            "grad_tol": 1.0,
            "rel_tol": 1.0,
            "escape_tol": 1.0,
            "escape_lbfgs_iters": 5,
            "escape_adam_steps": 10,
        },
        depths=(0, 1, 3),
        seeds=(0, 1),
        budget_check=False,
    )


@pytest.fixture(scope="session")
def tiny_preset() -> Any:
    return make_tiny_preset()


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_preset: Any, digits: Any) -> Any:
    """The tiny preset's finished sweep (one worker), run once per session: its SweepResult."""
    from reduction.sweep import run_sweep

    out = tmp_path_factory.mktemp("tiny-sweep")
    return run_sweep(tiny_preset, out, progress=False, data=digits, workers=1)


@pytest.fixture(scope="session")
def tiny_sweep_dir(tiny_sweep: Any) -> Path:
    """The folder of :func:`tiny_sweep` (tests that only read a sweep folder)."""
    return Path(tiny_sweep.out_dir)


# ---------------------------------------------------------------------------- subprocesses


@pytest.fixture(scope="session")
def command_env() -> dict[str, str]:
    """The environment of the commands the tests run (:data:`ENV`)."""
    return dict(ENV)


def _run(argv: list[str], cwd: Path | None, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd or ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def run_py() -> Callable[..., subprocess.CompletedProcess]:
    """``run_py(code, cwd=None, timeout=300)``: ``python -c code`` in :data:`ENV`."""
    return lambda code, cwd=None, timeout=300: _run([sys.executable, "-c", code], cwd, timeout)


@pytest.fixture(scope="session")
def run_python() -> Callable[..., subprocess.CompletedProcess]:
    """``run_python(*args, cwd=None, timeout=300)``: ``python *args`` in :data:`ENV`."""
    return lambda *args, cwd=None, timeout=300: _run([sys.executable, *args], cwd, timeout)


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*args, cwd=None, timeout=300)``: ``python -m deepcollapse *args``."""
    return lambda *args, cwd=None, timeout=300: _run(
        [sys.executable, "-m", "deepcollapse", *args], cwd, timeout
    )
