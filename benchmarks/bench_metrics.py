"""Speed of the collapse accumulator against the matmul floor and a per-class numpy baseline.

Run: .venv/bin/python benchmarks/bench_metrics.py [--n 60000] [--d 512] [--ks 10 100] [--reps 5]

For each K it prints the best (and median) of ``reps`` wall times (seconds), measured in
interleaved rounds so that every method sees the same load on a shared machine, of
  floor      one XᵀX product in float64 (X already float64): the unavoidable d²N work
  baseline   straightforward two passes in numpy: per-class means, then per-class centred scatter
  acc        CollapseAccumulator.update on the float32 features (cast, class sums, centring, one
             XᵀX, Chan merge), one batch and batches of 8192
  acc+W      the same with W given (adds per-sample cosines for nc3)
  ncm pass   the second pass for nc4 (one (N×d)(d×2K) product: logits and mean scores)
and checks that accumulator and baseline give the same within-class scatter. It runs once per
thread count in --threads (default: 1 and torch's default): on an oversubscribed machine torch's
multi-threaded small kernels wait for descheduled threads, which one thread avoids.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from reduction import CollapseAccumulator


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> tuple[dict, dict, dict]:
    """Run every function once per round, ``reps`` rounds, so that all of them see the same
    (shared, noisy) machine; return best and median times and the last outputs."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    return best, med, outs


def baseline(X32: np.ndarray, y: np.ndarray, K: int) -> np.ndarray:
    X = X32.astype(np.float64)
    means = np.stack([X[y == k].mean(axis=0) for k in range(K)])  # pass 1
    Sw = np.zeros((X.shape[1], X.shape[1]))
    for k in range(K):  # pass 2
        Xc = X[y == k] - means[k]
        Sw += Xc.T @ Xc
    return Sw


def accumulate(X: torch.Tensor, y: torch.Tensor, K: int, batch: int | None, W=None):
    acc = CollapseAccumulator(K, X.shape[1], W=W)
    step = X.shape[0] if batch is None else batch
    for i in range(0, X.shape[0], step):
        acc.update(X[i : i + step], y[i : i + step])
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, torch.get_num_threads()],
        help="thread counts to run under (numpy BLAS and torch alike)",
    )
    args = ap.parse_args()
    print(f"N = {args.n}, d = {args.d}, float32 features, torch {torch.__version__}")
    default_threads = torch.get_num_threads()
    for threads in dict.fromkeys(args.threads):
        # same limit for numpy's BLAS and torch, so floor, baseline and accumulator compare fairly
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            print(f"--- {threads} thread(s)")
            run(args.n, args.d, args.ks, args.reps)
    torch.set_num_threads(default_threads)


def run(N: int, d: int, ks: list[int], reps: int) -> None:
    rng = np.random.default_rng(0)
    for K in ks:
        y_np = rng.integers(0, K, size=N)
        X32 = (rng.normal(size=(K, d))[y_np] + 0.3 * rng.normal(size=(N, d))).astype(np.float32)
        X64 = X32.astype(np.float64)
        Xt, yt = torch.from_numpy(X32), torch.from_numpy(y_np)
        W = rng.normal(size=(K, d))

        def ncm_pass(acc: CollapseAccumulator) -> CollapseAccumulator:
            return acc.set_class_means().update_ncm(Xt, yt)  # noqa: B023

        acc_w = accumulate(Xt, yt, K, None, W)
        fns = {
            "floor": lambda: X64.T @ X64,  # noqa: B023
            "baseline": lambda: baseline(X32, y_np, K),  # noqa: B023
            "acc": lambda: accumulate(Xt, yt, K, None),  # noqa: B023
            "acc_b8192": lambda: accumulate(Xt, yt, K, 8192),  # noqa: B023
            "acc+W": lambda: accumulate(Xt, yt, K, None, W),  # noqa: B023
            "ncm": lambda: ncm_pass(acc_w),  # noqa: B023
        }
        best, med, outs = interleaved(fns, reps)
        Sw_ref = outs["baseline"]
        err = max(
            float(np.abs(outs[k].scatter.numpy() - Sw_ref).max()) for k in ("acc", "acc_b8192")
        ) / float(np.abs(Sw_ref).max())
        m = outs["ncm"].compute()
        f = best["floor"]
        print(f"K = {K}: best (median) of {reps} interleaved rounds, seconds")
        for k, label in (
            ("floor", "floor: X64ᵀX64 (float64 matmul)"),
            ("baseline", "baseline: two-pass per-class numpy"),
            ("acc", "accumulator, one update"),
            ("acc_b8192", "accumulator, batches of 8192"),
            ("acc+W", "accumulator with W (nc3 in pass)"),
            ("ncm", "nearest-class-mean pass (nc4)"),
        ):
            print(f"  {label:38s} {best[k]:7.3f} ({med[k]:7.3f})  {best[k] / f:5.2f}x floor")
        print(
            f"  rel. max |S_W(acc) − S_W(baseline)| = {err:.1e}; nc1 {m['nc1']:.4f}, "
            f"nc4 {m['nc4']:.4f}"
        )


if __name__ == "__main__":
    main()
