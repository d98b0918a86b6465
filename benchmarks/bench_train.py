"""Time to a converged objective: full-batch L-BFGS against the former Adam preset, in one run.

Both train the same network (same seed, the main job's data: L-RN1, width 64, MNIST-1D 100/class,
λ = 0.005) on the exact objective J_L. The reference J* is the best J either reaches; each side's
time is the wall time until its J first falls within 1% of J* (evaluated every 10 steps, the
evaluations included on both sides). Adam is the v0.1 CPU preset: lr 3e-4, cosine to 0, full
batch, 3,000 steps, float32; L-BFGS is the current preset: float64, strong Wolfe, history 50.
If a side never gets within 1% its time is reported as "not reached" and the ratio as a lower
bound (its whole budget over the other's time), and the time L-BFGS needs to reach the final J
of Adam's whole budget is printed too. Target: ≥ 5×.

Usage: ``python benchmarks/bench_train.py [--depth 8] [--adam-steps 3000] [--lbfgs-iters 2000]``
"""

from __future__ import annotations

import argparse
import time

import torch

from deepnet import RunConfig, load_run_data, train


def trajectory(cfg: RunConfig, data) -> list[tuple[float, float]]:
    """(seconds since start, J) at every evaluation point."""
    t0 = time.perf_counter()
    marks: list[tuple[float, float]] = []

    def hook(epoch, model, ev):
        marks.append((time.perf_counter() - t0, ev["objective"]))
        return {}

    train(cfg, data=data, progress=False, eval_hook=hook)
    return marks


def first_within(marks: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, j in marks if j <= target), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--adam-steps", type=int, default=3000)
    p.add_argument("--lbfgs-iters", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = dict(
        arch="rn1",
        depth=args.depth,
        dataset="mnist1d",
        n_per_class=100,
        test_per_class=None,
        data_seed=0,
        device="cpu",
        eval_every=10,
        checkpoint_every=10**6,
    )
    data = load_run_data(RunConfig(**base))
    adam = trajectory(
        RunConfig(**base, optimizer="adam", lr=3e-4, lr_schedule="cosine", epochs=args.adam_steps),
        data,
    )
    lbfgs = trajectory(RunConfig(**base, optimizer="lbfgs", epochs=args.lbfgs_iters), data)
    best = min(min(j for _, j in adam), min(j for _, j in lbfgs))
    target = 1.01 * best
    t_adam, t_lbfgs = first_within(adam, target), first_within(lbfgs, target)
    print(f"L-RN1 depth {args.depth}, MNIST-1D 100/class, one thread; best J* = {best:.6f}")
    for name, marks, t in (("Adam (v0.1 preset)", adam, t_adam), ("L-BFGS", lbfgs, t_lbfgs)):
        reached = f"{t:.1f} s" if t is not None else "not reached"
        print(
            f"  {name:<20} final J {marks[-1][1]:.6f} after {marks[-1][0]:.1f} s; "
            f"within 1% of J*: {reached}"
        )
    if t_lbfgs is None:
        print("ratio: L-BFGS did not reach 1% of J* (raise --lbfgs-iters)")
    elif t_adam is None:
        print(
            "ratio Adam/L-BFGS to within 1% of J*: unbounded (Adam's whole budget ends "
            f"{100 * (adam[-1][1] / best - 1):.0f}% above J*)"
        )
    else:
        print(f"ratio Adam/L-BFGS to within 1% of J* = {t_adam / t_lbfgs:.1f}×")
    # the same comparison at the level Adam does reach: its own final J
    t_match = first_within(lbfgs, adam[-1][1])
    if t_match is not None:
        print(
            f"L-BFGS reaches Adam's final J ({adam[-1][1]:.6f}) after {t_match:.1f} s against "
            f"Adam's {adam[-1][0]:.1f} s: {adam[-1][0] / t_match:.1f}×"
        )


if __name__ == "__main__":
    main()
