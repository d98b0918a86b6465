"""Shared fixtures: one tiny finished sweep for the tests that only read a sweep folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sweep_dir(tmp_path_factory) -> Path:
    """tests.test_sweep.TINY (L-RN1 on digits, depths 0, 1, 3, seeds 0, 1, 30 L-BFGS
    iterations), run once per session, one worker."""
    import torch

    from deepnet.data import load_dataset
    from reduction.sweep import run_sweep
    from tests.test_sweep import TINY

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-sweep")
    data = load_dataset("digits", n_per_class=8, test_per_class=5, seed=0)
    run_sweep(TINY, out, progress=False, data=data, workers=1)
    return out
