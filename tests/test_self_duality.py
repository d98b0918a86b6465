"""The self-duality metric ‖W M̄ᵀ/‖W M̄ᵀ‖_F − P_K/√(K−1)‖_F (THEORY §6), against an independent
formula (the one rhubarbwu/neural-collapse computes, written here in torch) and its facts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reduction import collapse_metrics
from reduction.formulas import self_duality
from reduction.registry import METRICS, summary_metrics

pytestmark = pytest.mark.unit


def reference(H: torch.Tensor, y: torch.Tensor, W: torch.Tensor) -> float:
    """Class means centred by the sample mean, struct = W M̄ᵀ / ‖·‖_F, then subtract the ideal
    (I − 11ᵀ/K)/√(K−1) entry by entry, as the peer library does (+1/(K√(K−1)) everywhere,
    −1/√(K−1) on the diagonal)."""
    K = W.shape[0]
    M = torch.stack([H[y == k].mean(dim=0) for k in range(K)])
    Mc = M - H.mean(dim=0)
    struct = W @ Mc.T
    struct = struct / torch.linalg.matrix_norm(struct)
    struct = struct + 1 / K / math.sqrt(K - 1)
    struct.diagonal().sub_(1 / math.sqrt(K - 1))
    return float(torch.linalg.matrix_norm(struct))


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_independent_formula(seed):
    g = torch.Generator().manual_seed(seed)
    K, d, N = 3 + seed, 6 + seed, 40 + 7 * seed
    y = torch.arange(N) % K
    H = torch.randn(N, d, generator=g, dtype=torch.float64) + 2 * torch.randn(
        K, d, generator=g, dtype=torch.float64)[y]
    W = torch.randn(K, d, generator=g, dtype=torch.float64)
    got = collapse_metrics(H, y, W)["self_duality"]
    assert got == pytest.approx(reference(H, y, W), rel=1e-12)
    assert 0.0 <= got <= 2.0


def test_zero_at_a_self_dual_simplex_etf_and_scale_free():
    K, d = 5, 7
    etf = np.eye(K) - 1.0 / K  # rows: a simplex ETF in R^K, embed in R^d
    M = np.zeros((K, d))
    M[:, :K] = etf
    y = np.repeat(np.arange(K), 3)
    H = M[y]
    for W in (3.0 * M, 1e-150 * M, 1e150 * M):
        assert collapse_metrics(H, y, W)["self_duality"] == pytest.approx(0.0, abs=1e-12)
        assert self_duality(W, M) == pytest.approx(0.0, abs=1e-12)
    # a classifier orthogonal to the means' geometry is far from it; W = −M̄ is the farthest
    assert self_duality(-M, M) == pytest.approx(2.0, rel=1e-12)
    assert math.isnan(self_duality(np.zeros((K, d)), M))


def test_registered_and_summarised():
    assert "self_duality" in METRICS and METRICS["self_duality"].sign == 1
    assert "self_duality" in summary_metrics()
