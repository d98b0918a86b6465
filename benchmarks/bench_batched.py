"""Seeds batched (``deepnet.batched.train_batched``) against the same seeds one after another.

Both sides train the same S runs (L-RN1, width 64, depth 8, Adam, full batch, MNIST-1D with
100 training samples per class, N = 1,000) on one CPU thread, timed in the same process; the
batched side is checked to reproduce the separate runs' final objectives.

Usage: ``.venv/bin/python benchmarks/bench_batched.py [--seeds 5] [--epochs 200] [--depth 8]``
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from deepnet import RunConfig, load_run_data, train
from deepnet.batched import train_batched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)

    data = load_run_data(RunConfig(dataset="mnist1d", n_per_class=100, test_per_class=50))
    configs = [
        RunConfig(
            arch="rn1",
            depth=args.depth,
            width=args.width,
            dataset="mnist1d",
            n_per_class=100,
            test_per_class=50,
            data_seed=0,
            optimizer="adam",
            lr=1e-3,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=s,
            device=args.device,
        )
        for s in range(args.seeds)
    ]
    print(
        f"rn1 width {args.width} depth {args.depth}, N = {len(data.y_train)}, "
        f"{args.seeds} seeds x {args.epochs} epochs, Adam, batch {args.batch_size or 'full'}, "
        f"device {args.device}, torch threads {torch.get_num_threads()}"
    )
    # warm-up of both paths (vmap's first trace, allocator), out of the timings
    short = [dataclasses.replace(c, epochs=2) for c in configs[:2]]
    train(short[0], data, progress=False)
    train_batched(short, data)

    t0 = time.perf_counter()
    separate = [train(c, data, progress=False) for c in configs]
    t_sep = time.perf_counter() - t0

    t0 = time.perf_counter()
    batched = train_batched(configs, data)
    t_bat = time.perf_counter() - t0

    gap = max(abs(a.objective - b.objective) / abs(b.objective) for a, b in zip(batched, separate))
    print(f"one after another: {t_sep:8.2f} s")
    print(f"batched:           {t_bat:8.2f} s")
    print(f"speed-up:          {t_sep / t_bat:8.2f}x")
    print(f"max relative gap of the final objectives: {gap:.2e}")


if __name__ == "__main__":
    main()
