"""Benchmark of the `ufm` package (run: python benchmarks/bench_ufm.py; a few minutes on 2 cores).

1. Closed-form solve time, K = 10 and 1000 (LayerNorm CE).
2. Numerical solver time to 1e-8 relative (vs the closed form) for (K, n, width) = (10, 100, 64)
   and (100, 100, 128), LayerNorm CE and MSE.
3. Baseline: plain full-batch Adam on free (W, U) in torch (sample level, h = r·Pu/‖Pu‖), as in
   published UFM scripts, run until 1e-8 or a time budget; ratio of its time against ours.
4. Certificate time: class-level reduction vs the sample-level program at N = 200, and the
   class-level one at N = 10⁶.
5. Extreme λ (1e-200, 1e20): closed form and numerical solver, their agreement, and the
   certificate (the dual bound where the SDP solvers fail).
6. Classic K = 300 (LayerNorm CE): the dual certificate, and the size-based estimate of the SDP
   that `certify` prints before a long solve (the SDP itself is not run: minutes).
7. Generalised UFM (THEORY §11): G distinct contexts with 1–3 next tokens each, V = 30 labels,
   width 64; group-level solve, dual certificate, geometry, for G = 100, 300, 1000.

Run one part: python benchmarks/bench_ufm.py extremes|large_k|gufm (default: all).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
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


def extreme_lambda() -> None:
    print("== extreme λ (K = 4, n = 3, width 6; imbalanced counts 1, 2, 4, 8 for the solver) ==")
    for loss in ("ce", "mse"):
        for lam in (1e-200, 1e20):
            p = ufm.Problem(loss, 4, 3, 6, lam, features="layernorm")
            t_cf, cf = _timed(lambda p=p: ufm.solve(p))
            t_num, num = _timed(lambda p=p: ufm.solve(p, method="numerical", n_starts=2))
            q = ufm.Problem(loss, 4, [1, 2, 4, 8], 6, lam, features="layernorm")
            t_imb, imb = _timed(lambda q=q: ufm.solve(q, n_starts=2))
            t_c, c = _timed(lambda imb=imb: ufm.certify(imb))
            print(f"{loss:3s} λ={lam:7.0e}: closed form {cf.value:.6e} ({t_cf * 1e3:.1f} ms), "
                  f"numerical rel err {abs(num.value - cf.value) / cf.value:.1e} "
                  f"({t_num:.2f} s); imbalanced {imb.value:.6e} ({t_imb:.2f} s) certified "
                  f"{c.certified} by {c.solver}, rel_gap {c.rel_gap:.1e} ({t_c:.3f} s)")


def large_k() -> None:
    print("== K = 300 classes, width 301, LayerNorm CE, λ = 0.005 ==")
    p = ufm.Problem("ce", 300, 10, 301, 0.005, features="layernorm")
    t, sol = _timed(lambda: ufm.solve(p))
    tc, c = _timed(lambda: ufm.certify(sol))
    est = ufm.estimate_seconds("SCS", 600)
    print(f"closed form {t:.2f} s; certificate {c.solver} {tc:.2f} s, rel_gap {c.rel_gap:.1e}, "
          f"certified {c.certified}; the 600×600 SDP via SCS is estimated at {est:.0f} s")


def _random_counts(G: int, V: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = np.zeros((G, V), dtype=np.int64)
    for g in range(G):
        k = rng.integers(1, 4)
        C[g, rng.choice(V, size=k, replace=False)] = rng.integers(1, 6, size=k)
    return C


def gufm() -> None:
    print("== generalised UFM: G contexts, V = 30 labels, width 64, λ = 0.005, 2 starts ==")
    for G in (100, 300, 1000):
        counts = _random_counts(G, 30, seed=G)
        for loss in ("ce", "mse"):
            p = ufm.Problem.from_label_counts(counts, 64, 0.005, loss)
            t, sol = _timed(lambda p=p: ufm.solve(p, n_starts=2))
            tc, c = _timed(lambda sol=sol: ufm.certify(sol))
            tg, geo = _timed(lambda sol=sol: ufm.gufm_geometry(sol))
            print(f"G={G:5d} {loss:3s}: solve {t:6.2f} s (iterations {sol.info['iterations']}), "
                  f"certificate {c.solver} {tc:.3f} s rel_gap {c.rel_gap:.1e} "
                  f"certified {c.certified}; geometry {tg:.3f} s: nc1 {geo.nc1:.3f}, "
                  f"within {geo.within_fraction:.3f}, rank {geo.feature_rank}")


PARTS = {"extremes": extreme_lambda, "large_k": large_k, "gufm": gufm}


def main() -> None:
    t0 = time.perf_counter()
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            if name not in PARTS:
                raise SystemExit(f"error: unknown part {name!r}; choose from {sorted(PARTS)}")
            PARTS[name]()
    else:
        closed_form_times()
        ours = numerical_times()
        adam_baseline(ours)
        certificate_times()
        for part in PARTS.values():
            part()
    print(f"total benchmark time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
