"""How depth does its work: per-layer collapse and the cost of the path (THEORY §10).

For a trained deepnet model, the features h_l after each of the L blocks (l = 0 is the embedding's
LN output) give NC1 and NC3 per layer (progressive collapse; NC3 against the final classifier),
each block's squared weight norm ‖W_l‖²_F, and each block's displacement
s_l = (mean_i ‖h_{l,i} − h_{l−1,i}‖²)^{1/2} (root mean square over samples).

Lower bound on the body penalty implied by the measured path (post-LN ResNets, features on the
sphere of radius √d). A post-LN block maps h (centred, ‖h‖ = √d) to LN(h + f(h)); centring is an
orthogonal projection that fixes h, and the radial projection onto the sphere moves a point x by
at most 2‖x − h‖ from any h on the sphere, so ‖h_l − h_{l−1}‖ ≤ 2‖f(h_{l−1})‖ per sample (up to
LN's ε). With ‖σ(W h)‖ ≤ ‖W h‖ ≤ ‖W‖_F √d:

- one-layer blocks (L-RN1, σ(Wh) or Wσ(h)):  s_l ≤ 2√d ‖W_l‖_F, so by Cauchy–Schwarz
  body = (λ/2) Σ_l ‖W_l‖² ≥ (λ/(8d)) Σ_l s_l² ≥ λ P² / (8 d L),  P = Σ_l s_l ≥ D = RMS ‖h_L − h_0‖;
- two-layer blocks (L-RN2, W₂σ(W₁h)): s_l ≤ 2√d ‖W₂‖‖W₁‖ ≤ √d (‖W₁‖² + ‖W₂‖²), so
  body ≥ λ P / (2√d): linear in the path, with no 1/L (why two-layer blocks need λ/L).

``body_bound`` is that bound and ``body_bound_ratio`` = body penalty / bound ≥ 1 (asserted in the
tests). Which form applies is read from the architecture's registry entry
(:class:`deepnet.Arch`: ``path_bound``, ``layers_per_block``); architectures without it
(transformers) and pre-LN networks get NaN (the bound above does not cover them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from deepnet import ARCHS
from reduction.metrics import CollapseAccumulator

CHUNK = 4096


@torch.no_grad()
def layer_profile(
    model: Any, x: torch.Tensor, y: torch.Tensor, num_classes: int, lam: float, arch: str, norm: str
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-layer rows and the path summary of a trained deepnet model of architecture ``arch``
    (a :data:`deepnet.ARCHS` name) on (x, y)."""
    was = model.training
    model.eval()
    try:
        depth = len(model.blocks)
        W = model.classifier.weight.detach()
        b = model.classifier.bias
        b = None if b is None else b.detach()
        width = W.shape[1]
        accs = [
            CollapseAccumulator(num_classes, width, W=W, b=b, device=x.device)
            for _ in range(depth + 1)
        ]
        disp_sq = np.zeros(depth + 1)
        total_sq = 0.0
        for i in range(0, len(x), CHUNK):
            hs = model.features(x[i : i + CHUNK], all_layers=True)
            yb = y[i : i + CHUNK]
            for layer, h in enumerate(hs):
                accs[layer].update(h, yb)
                if layer:
                    disp_sq[layer] += float((h.double() - hs[layer - 1].double()).square().sum())
            total_sq += float((hs[-1].double() - hs[0].double()).square().sum())
    finally:
        model.train(was)
    n = len(x)
    rows = []
    for layer, acc in enumerate(accs):
        m = acc.compute()
        block_sq = math.nan
        if layer:
            block = model.blocks[layer - 1]
            block_sq = sum(
                float(mod.weight.detach().double().square().sum())
                for mod in block.modules()
                if isinstance(mod, torch.nn.Linear)
            )
        rows.append(
            {
                "layer": layer,
                "rel_layer": layer / depth if depth else 0.0,
                "nc1": float(m["nc1"]),
                "nc3": float(m["nc3"]),
                "block_sq_norm": block_sq,
                "displacement": math.sqrt(disp_sq[layer] / n) if layer else 0.0,
            }
        )
    path = float(sum(r["displacement"] for r in rows))
    distance = math.sqrt(total_sq / n)
    bound = math.nan
    spec = ARCHS[arch]
    if depth and norm == "post" and spec.path_bound:
        d = width
        if spec.layers_per_block == 1:
            bound = lam * path**2 / (8 * d * depth)
        else:
            bound = lam * path / (2 * math.sqrt(d))
    body = lam / 2 * sum(r["block_sq_norm"] for r in rows[1:]) if depth else 0.0
    summary = {
        "path_length": path,
        "path_distance": distance,
        "body_bound": bound,
        "body_bound_ratio": body / bound if bound and math.isfinite(bound) else math.nan,
    }
    return rows, summary
