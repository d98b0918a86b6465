"""Probe why a finished run fails the gradient test (THEORY §9, "Transformers are harder").

    python scripts/stationarity_probe.py RUN_DIR [--eps 1e-4,1e-3,1e-2] [--samples 200]

For the run's final point θ (its checkpoint, in float64, on its own training data) it prints:
- ‖∇J(θ)‖, the number the convergence test reads;
- for each radius ε: the norm of the minimum-norm convex combination of ∇J(θ) and of the
  gradients at ``samples`` points drawn uniformly in the ball B(θ, ε). The sampled gradients lie
  in Goldstein's ε-subdifferential, so this is an upper bound on its distance to 0: small values
  at small ε mean θ sits on a kink (nonsmooth but stationary), large ones rule that out;
- J(θ − t∇J) − J(θ) against the first-order prediction −t‖∇J‖² for t = 1e-6 … 1: where they part,
  the curvature along the gradient (≈ 2·(ΔJ + t‖∇J‖²)/(t²‖∇J‖²)) says how much decrease the
  gradient can still promise;
- for every LayerNorm, the spread s = std over features of its input, over all training samples
  and tokens: LN(u) = (u − ū)/√(s² + ε) has curvature of order 1/s², so a few inputs with s ≪ 1
  (a residual stream nearly cancelled by its block's output) make J stiff there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

from deepnet import RunConfig, build_model, load_run_data
from deepnet.convergence import ln_input_spreads
from deepnet.io import load_checkpoint
from deepnet.objective import batch_objective


def min_norm_in_hull(G: np.ndarray) -> float:
    """min ‖Gᵀa‖ over the simplex (a ≥ 0, Σa = 1), G (m, n): NNLS with the sum as a heavy row."""
    m = G.shape[0]
    weight = 1e3 * max(1.0, float(np.abs(G).max()))
    A = np.vstack([G.T, weight * np.ones((1, m))])
    b = np.r_[np.zeros(G.shape[1]), weight]
    a, _ = nnls(A, b, maxiter=50 * m)
    a /= a.sum()
    return float(np.linalg.norm(G.T @ a))


def _radii(text: str) -> list[float]:
    try:
        radii = [float(e) for e in text.split(",")]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not radii or min(radii) <= 0:
        raise argparse.ArgumentTypeError(f"radii must be > 0, got {text!r}")
    return radii


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished run folder (config.json, checkpoint.pt)")
    ap.add_argument("--eps", type=_radii, default="1e-4,1e-3,1e-2", help="ball radii")
    ap.add_argument("--samples", type=int, default=200, help="gradients sampled per radius")
    args = ap.parse_args()
    for name in ("config.json", "checkpoint.pt"):
        if not (args.run_dir / name).is_file():
            sys.exit(f"error: {args.run_dir} is not a finished run folder (no {name})")
    try:
        probe(args.run_dir, args.eps, args.samples)
    except (OSError, ValueError, KeyError) as exc:
        sys.exit(f"error: {exc}")


def probe(run_dir: Path, radii: list[float], samples: int) -> None:
    """Print the probes of the module docstring for the finished run in ``run_dir``."""
    torch.set_num_threads(1)
    stored = json.loads((run_dir / "config.json").read_text())
    cfg = RunConfig(**{k: v for k, v in stored.items() if k in RunConfig.__dataclass_fields__})
    data = load_run_data(cfg)
    model = build_model(cfg, data).double()
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    if x.is_floating_point():
        x = x.double()
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = [p for _, p in model.decayed_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def set_params(v: torch.Tensor) -> None:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(v, params)

    def J_and_grad(v: torch.Tensor) -> tuple[float, torch.Tensor]:
        set_params(v)
        J = batch_objective(model, x, y, cfg.effective_lam, cfg.loss, decayed)
        g = torch.autograd.grad(J, params)
        return J.item(), torch.cat([t.reshape(-1) for t in g])

    J0, g0 = J_and_grad(theta)
    gn = g0.norm().item()
    print(f"J = {J0:.10f}   ‖∇J‖ = {gn:.4g}   ‖θ‖ = {theta.norm().item():.4g}   n = {len(theta)}")
    gen = torch.Generator().manual_seed(0)
    n = len(theta)
    for eps in radii:
        grads = [g0]
        for _ in range(samples):
            u = torch.randn(n, generator=gen, dtype=torch.float64)
            r = eps * torch.rand(1, generator=gen, dtype=torch.float64).item() ** (1.0 / n)
            grads.append(J_and_grad(theta + r * u / u.norm())[1])
        hull = min_norm_in_hull(torch.stack(grads).numpy())
        print(f"ε = {eps:.0e}: min-norm sampled ε-subgradient {hull:.4g} ({samples} samples)")
    set_params(theta)
    spreads = ln_input_spreads(model, x)
    for name, s in spreads.items():
        print(
            f"LN {name or 'input'}: input spread min {s.min().item():.3g}, median "
            f"{s.median().item():.3g}, {(s < 0.05).sum().item()} of {s.numel()} below 0.05"
        )
    print("step t    ΔJ along −∇J    first-order prediction")
    for t in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        print(f"{t:7.0e}  {J_and_grad(theta - t * g0)[0] - J0:+.4e}   {-t * gn**2:+.4e}")
    set_params(theta)


if __name__ == "__main__":
    main()
