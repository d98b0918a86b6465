"""Benchmark of the `ufm` package (run: python benchmarks/bench_ufm.py; a few minutes on 2 cores).

1. Closed-form solve time, K = 10 and 1000 (LayerNorm CE).
2. Numerical solver time to 1e-8 relative (vs the closed form) for (K, n, width) = (10, 100, 64)
   and (100, 100, 128), LayerNorm CE and MSE.
3. Baseline: plain full-batch Adam on free (W, U) in torch (sample level, h = r·Pu/‖Pu‖), as in
   published UFM scripts, run until 1e-8 or a time budget; ratio of its time against ours.
4. Certificate time: class-level reduction vs the sample-level program at N = 200, and the
   class-level one at N = 10⁶.
"""

from __future__ import annotations

import math
import time

import torch

import ufm

torch.set_num_threads(1)  # small matrices; threads only add overhead on a shared 2-core box
ADAM_BUDGET_S = 12.0  # per learning rate
TARGET = 1e-8


def _timed(fn, repeat: int = 1):
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def closed_form_times() -> None:
    print("== closed form (LayerNorm CE, λ = 0.005) ==")
    for K, d in ((10, 64), (1000, 1024)):
        p = ufm.Problem("ce", K, 100, d, 0.005, features="layernorm")
        t, sol = _timed(lambda p=p: ufm.solve(p, method="closed_form"), repeat=3)
        print(
            f"K={K:5d} width={d:5d}: {t * 1e3:8.2f} ms   value={sol.value:.12g}  "
            f"geometry={sol.geometry}"
        )


def numerical_times() -> dict:
    print("== numerical solver (float64 L-BFGS, class reduction) vs closed form ==")
    ours = {}
    for K, n, d in ((10, 100, 64), (100, 100, 128)):
        for loss in ("ce", "mse"):
            p = ufm.Problem(loss, K, n, d, 0.005, features="layernorm")
            ref = ufm.solve(p, method="closed_form").value
            for starts in (1, 4):
                t, sol = _timed(lambda p=p, s=starts: ufm.solve(p, method="numerical", n_starts=s))
                err = abs(sol.value - ref) / ref
                print(
                    f"K={K:4d} n={n} width={d:4d} {loss:3s} starts={starts}: {t:7.3f} s  "
                    f"rel err={err:.1e}  geometry={sol.geometry}"
                )
                if starts == 1:
                    ours[(K, loss)] = (t, err)
    return ours


def adam_baseline(ours: dict) -> None:
    print(f"== plain Adam on free (W, H), sample level, float64, ≤ {ADAM_BUDGET_S:.0f} s per lr ==")
    K, n, d, lam = 10, 100, 64, 0.005
    for loss in ("ce", "mse"):
        p = ufm.Problem(loss, K, n, d, lam, features="layernorm")
        ref = ufm.solve(p).value
        t_ours, _ = ours[(K, loss)]
        N, r = p.N, p.r
        y = torch.as_tensor(p.labels)
        Y = torch.nn.functional.one_hot(y, K).to(torch.float64).T
        best = None
        for lr in (1e-2, 1e-3):
            g = torch.Generator().manual_seed(0)
            W = torch.randn(K, d, generator=g, dtype=torch.float64) / math.sqrt(d)
            U = torch.randn(d, N, generator=g, dtype=torch.float64)
            W.requires_grad_(True)
            U.requires_grad_(True)
            opt = torch.optim.Adam([W, U], lr=lr)
            t0, reached, err_at_ours, step = time.perf_counter(), None, None, 0
            err = math.inf
            while True:
                opt.zero_grad()
                Pu = U - U.mean(dim=0, keepdim=True)
                H = r * Pu / Pu.norm(dim=0, keepdim=True)
                Z = W @ H
                if loss == "ce":
                    fit = torch.nn.functional.cross_entropy(Z.T, y)
                else:
                    fit = ((Z - Y) ** 2).sum() / (2 * N)
                J = fit + 0.5 * lam * (W**2).sum()
                J.backward()
                opt.step()
                step += 1
                err = abs(J.item() - ref) / ref
                el = time.perf_counter() - t0
                if err_at_ours is None and el >= t_ours:
                    err_at_ours = err
                if err <= TARGET:
                    reached = el
                    break
                if el > ADAM_BUDGET_S:
                    break
            el = time.perf_counter() - t0
            res = (reached, err, err_at_ours, step, el, lr)
            print(
                f"  {loss:3s} lr={lr:g}: steps={step} time={el:6.2f} s  final rel err={err:.1e}"
                f"  rel err after our solver's {t_ours:.3f} s={err_at_ours:.1e}  "
                f"reached 1e-8: {'yes' if reached else 'no'}"
            )
            if best is None or (reached or math.inf, err) < (best[0] or math.inf, best[1]):
                best = res
        reached, err, _, _, el, lr = best
        if reached:
            print(f"  {loss}: Adam (lr={lr:g}) / ours time to 1e-8 = {reached / t_ours:.0f}×")
        else:
            print(
                f"  {loss}: Adam never reached 1e-8 in {el:.1f} s (best rel err {err:.1e}); "
                f"ratio ≥ {el / t_ours:.0f}× (ours: {t_ours:.3f} s to "
                f"{ours[(K, loss)][1]:.0e})"
            )


def certificate_times() -> None:
    print("== certificates (CE, K = 10, width 64, λ = 0.005) ==")
    for feat, kw in (("free", {"lam_H": 0.005}), ("layernorm", {})):
        p = ufm.Problem("ce", 10, 20, 64, 0.005, features=feat, **kw)
        sol = ufm.solve(p)
        for level in ("class", "sample"):
            t, c = _timed(lambda sol=sol, lv=level: ufm.certify(sol, level=lv))
            print(
                f"{feat:9s} N=200 {level:6s}: {t:7.2f} s  solver={c.solver} "
                f"status={c.status} rel_gap={c.rel_gap:.1e} points={c.num_points}"
            )
        big = ufm.Problem("ce", 10, 100_000, 64, 0.005, features=feat, **kw)
        t, c = _timed(lambda big=big: ufm.certify(ufm.solve(big)))
        print(
            f"{feat:9s} N=10^6 class : {t:7.2f} s  (solve + certify) solver={c.solver} "
            f"rel_gap={c.rel_gap:.1e}"
        )


def main() -> None:
    t0 = time.perf_counter()
    closed_form_times()
    ours = numerical_times()
    adam_baseline(ours)
    certificate_times()
    print(f"total benchmark time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
