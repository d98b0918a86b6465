"""The same small sweep with 1 and with 2 workers, timed in one run (target: ≥ 1.7× on 2 cores).

The sweep is the main job shrunk: L-RN1 on MNIST-1D, depths 0, 2, 3, 5, 8, seeds 0 and 1
(two continuation chains), 300 L-BFGS iterations per run, no 2×-budget rerun. Each run is
single-threaded in both settings, so the ratio measures running units side by side.

Usage: ``python benchmarks/bench_sweep.py [--iters 300]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reduction.sweep import run_sweep


def timed(workers: int, out: Path, iters: int) -> float:
    t = time.perf_counter()
    run_sweep(
        "cpu-rn1-mnist1d",
        out,
        depths=(0, 2, 3, 5, 8),
        seeds=(0, 1),
        overrides={"epochs": iters},
        budget_check=False,
        progress=False,
        workers=workers,
    )
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = timed(1, Path(tmp) / "w1", args.iters)
        two = timed(2, Path(tmp) / "w2", args.iters)
    print(
        f"1 worker: {one:.1f} s; 2 workers: {two:.1f} s; speed-up {one / two:.2f}× (target ≥ 1.7×)"
    )


if __name__ == "__main__":
    main()
