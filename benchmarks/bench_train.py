"""Training throughput of ``deepnet.train`` against a plain PyTorch loop, in one run.

Both sides train the same network (``deepnet.build_model``, same seed) on the same coupled objective
CE + (λ/2)Σ‖θ‖² with Adam at the same batch size. The reference is the textbook loop: a
``DataLoader`` over a ``TensorDataset`` (shuffled), ``nn.Module`` forward, penalty as a Python sum,
``loss.item()`` per batch, optimizer step per batch. ``deepnet.train`` is timed as a whole call
(model build, initial/plateau/final full-set evaluations included), so its figure is conservative.

Usage: ``.venv/bin/python benchmarks/bench_train.py [--epochs 5] [--reps 3] [--batch-size 128]``
Data: 2,000-sample MNIST subset (200 per class) from ``deepnet.data``; if MNIST cannot be loaded,
synthetic 28×28 images (said in the output).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from deepnet import RunConfig, build_model, train
from deepnet.data import Dataset

CASES = [("rn1", 2), ("rn1", 8), ("rn1", 34), ("t11", 2), ("t11", 8)]


def load_data() -> tuple[Dataset, str]:
    try:
        from deepnet.data import load_dataset

        return load_dataset("mnist", n_per_class=200, test_per_class=10), "MNIST 200/class"
    except Exception as exc:  # any loader failure falls back to synthetic data
        rng = np.random.default_rng(0)
        y = np.repeat(np.arange(10), 200)
        x = rng.normal(size=(2000, 1, 28, 28)).astype(np.float32)
        ds = Dataset("synthetic", "image", x, y, x[:100], y[:100], 10, [str(k) for k in range(10)])
        return ds, f"synthetic 28x28 (MNIST unavailable: {exc})"


def reference_loop(cfg: RunConfig, data: Dataset, epochs: int, batch_size: int) -> float:
    """Plain loop; returns samples/s."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data)
    decayed = [p for _, p in model.decayed_parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = torch.as_tensor(data.x_train)
    y = torch.as_tensor(data.y_train)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    lam = cfg.effective_lam
    t0 = time.perf_counter()
    running = 0.0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss = loss + 0.5 * lam * sum(p.pow(2).sum() for p in decayed)
            loss.backward()
            opt.step()
            running += loss.item()
    return epochs * len(x) / (time.perf_counter() - t0)


def deepnet_loop(cfg: RunConfig, data: Dataset) -> float:
    t0 = time.perf_counter()
    train(cfg, data=data, progress=False)
    return cfg.epochs * len(data.x_train) / (time.perf_counter() - t0)


def marginal(run: Callable[[int], float], n: int, e1: int, e2: int) -> float:
    """Samples/s of the steps alone: (e2 − e1)·n / (t(e2) − t(e1)), fixed costs cancel."""
    t1 = e1 * n / run(e1)
    t2 = e2 * n / run(e2)
    return (e2 - e1) * n / max(t2 - t1, 1e-9)


def bench_config(arch: str, depth: int, batch: int | None, epochs: int) -> RunConfig:
    """Both sides' settings: width 64, Adam 3e-4 constant, no evaluations or checkpoints."""
    return RunConfig(
        arch=arch,
        depth=depth,
        width=64,
        epochs=epochs,
        batch_size=batch,
        lr=3e-4,
        lr_schedule="constant",
        eval_every=10**6,
        checkpoint_every=10**6,
        device="cpu",
        patch_size=7,
    )


def measure(
    arch: str, depth: int, batch: int | None, data: Dataset, epochs: int, reps: int
) -> tuple[float, float]:
    """Best of ``reps`` interleaved measurements of each side (the machine is shared)."""
    cfg = bench_config(arch, depth, batch, epochs)
    ref_batch = batch or len(data.x_train)
    reference_loop(cfg, data, 1, ref_batch)  # warm-up (allocator, kernels), untimed
    ours, ref = 0.0, 0.0
    for _ in range(reps):
        ref = max(ref, reference_loop(cfg, data, epochs, ref_batch))
        ours = max(ours, deepnet_loop(cfg, data))
    return ours, ref


def measure_steps(
    arch: str, depth: int, batch: int | None, data: Dataset, epochs: int, reps: int
) -> tuple[float, float]:
    """Like :func:`measure`, but per-step throughput: model build and evaluations cancel out."""
    n = len(data.x_train)
    ref_batch = batch or n

    def ours_run(e: int) -> float:
        return deepnet_loop(bench_config(arch, depth, batch, e), data)

    def ref_run(e: int) -> float:
        return reference_loop(bench_config(arch, depth, batch, e), data, e, ref_batch)

    ours, ref = 0.0, 0.0
    for _ in range(reps):
        ref = max(ref, marginal(ref_run, n, epochs, 3 * epochs))
        ours = max(ours, marginal(ours_run, n, epochs, 3 * epochs))
    return ours, ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, source = load_data()
    print(
        f"data: {source}; N = {len(data.x_train)}; {args.epochs} epochs per measurement, "
        f"best of {args.reps}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        "cpu; Adam, CE + coupled L2, width 64"
    )
    print(
        f"{'model':<10}{'batch':>7}{'deepnet samples/s':>19}{'reference samples/s':>21}{'ratio':>8}"
    )
    rows = [(arch, depth, args.batch_size) for arch, depth in CASES]
    rows += [("rn1", 8, None), ("t11", 2, None)]  # full batch: deepnet's default regime
    t0 = time.perf_counter()
    for arch, depth, batch in rows:
        ours, ref = measure(arch, depth, batch, data, args.epochs, args.reps)
        label = "full" if batch is None else str(batch)
        print(
            f"{arch} L={depth:<4}{label:>7}{ours:>19.0f}{ref:>21.0f}{ours / ref:>7.2f}x", flush=True
        )
    print("\nsteps only (marginal cost of 2x more epochs; model build and evaluations cancel):")
    for arch, depth, batch in [
        ("rn1", 2, args.batch_size),
        ("rn1", 34, args.batch_size),
        ("t11", 8, args.batch_size),
    ]:
        ours, ref = measure_steps(arch, depth, batch, data, args.epochs, 1)
        print(
            f"{arch} L={depth:<4}{batch:>7}{ours:>19.0f}{ref:>21.0f}{ours / ref:>7.2f}x", flush=True
        )
    print(
        f"total benchmark time {time.perf_counter() - t0:.0f} s; deepnet figures above the "
        "steps-only block are whole train() calls (build, 3 full-set evaluations, test accuracy); "
        "the reference only steps"
    )


if __name__ == "__main__":
    main()
