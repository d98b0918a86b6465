"""The exact, coupled-L2 objective (THEORY §2) and its float64 evaluation and gradient norm.

  J_L(θ) = (1/N) Σ_i ℓ(f_θ(x_i), y_i) + (λ/2) Σ_{decayed} ‖·‖_F²

ℓ is cross-entropy, or ½‖z − e_y‖² for ``loss="mse"`` (data term (1/(2N))‖Z − Y‖_F²). The
penalty is part of the differentiated loss for every optimizer (never AdamW's decoupled decay),
so the reported J_L is the number the theory bounds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import CollapseNet, WhitenedLinear, half_sq_norm

#: samples per forward in full-set evaluation (bounds memory, not results)
EVAL_CHUNK = 8192


def data_term(logits: Tensor, y: Tensor, loss: str, total: int | None = None) -> Tensor:
    """Σ_i ℓ(z_i, y_i) / ``total`` (default: the batch size): CE, or ½‖z − e_y‖²."""
    denom = logits.shape[0] if total is None else total
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum") / denom
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return 0.5 * (logits - onehot).square().sum() / denom


def batch_objective(
    model: CollapseNet, x: Tensor, y: Tensor, lam: float, loss: str, decayed: Sequence[Tensor]
) -> Tensor:
    """J on one batch, in the model's dtype: the loss every optimizer differentiates."""
    J = data_term(model(x), y, loss)
    return J + lam * half_sq_norm(decayed) if lam > 0 else J


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + EVAL_CHUNK, n)) for i in range(0, n, EVAL_CHUNK)]


@torch.no_grad()
def evaluate(model: CollapseNet, x: Tensor, y: Tensor, lam: float, loss: str) -> dict[str, Any]:
    """Full-set J_L and its split, with float64 reductions; also the features (N, d) float64."""
    was_training = model.training
    model.eval()
    try:
        feats = torch.cat([model.features(x[s]) for s in _chunks(len(x))])
    finally:
        model.train(was_training)
    h = feats.double()
    W = model.classifier.weight.double()
    b = model.classifier.bias
    logits = h @ W.T + (b.double() if b is not None else 0.0)
    pens = model.penalties(lam, dtype=torch.float64)
    out: dict[str, Any] = {
        "fit": float(data_term(logits, y, loss)),
        "classifier_penalty": float(pens["classifier_penalty"]),
        "body_penalty": float(pens["body_penalty"]),
        "embedding_penalty": float(pens["embedding_penalty"]),
        "train_acc": float((logits.argmax(1) == y).double().mean()),
        "features": h,
    }
    out["objective"] = (
        out["fit"] + out["classifier_penalty"] + out["body_penalty"] + out["embedding_penalty"]
    )
    return out


def gradient_norms(
    model: CollapseNet, x: Tensor, y: Tensor, lam: float, loss: str
) -> dict[str, float]:
    """‖∇J‖₂ in float64 over every trained parameter at the current point, and its split into
    embedding, body and classifier (THEORY §9); for a whitened embedding E = V P the gradient
    with respect to E itself. The model is not modified: a float64 copy is
    differentiated (in chunks of samples, so memory is bounded), in eval mode."""
    m64 = copy.deepcopy(model).to(torch.float64)
    m64.eval()
    m64.zero_grad(set_to_none=True)
    xx = x.to(torch.float64) if x.is_floating_point() else x
    n = len(xx)
    for s in _chunks(n):
        data_term(m64(xx[s]), y[s], loss, total=n).backward()
    if lam > 0:
        (lam * half_sq_norm([p for _, p in m64.decayed_parameters()])).backward()
    # a whitened map E = V P reports ∂J/∂E, not ∂J/∂V: the test reads the canonical coordinates
    grads = {id(p): p.grad for p in m64.parameters()}
    for module in m64.modules():
        if isinstance(module, WhitenedLinear):
            grads[id(module.weight)] = module.effective_grad()
    out: dict[str, float] = {}
    total = 0.0
    for group, params in m64.parameter_groups().items():
        found = [grads[id(p)] for p in params]
        sq = sum(float(g.square().sum()) for g in found if g is not None)
        out[f"grad_norm_{group}"] = math.sqrt(sq)
        total += sq
    out["grad_norm"] = math.sqrt(total)
    return out
