"""Shared building blocks of the deep networks (THEORY §2).

- :class:`LayerNorm`: LN(z) = (z − mean z) / sqrt(var z + ε), biased variance, ε = 1e-5 (as torch),
  parameter-free by default, so every output lies (up to ε) on S_d = {h : 1ᵀh = 0, ‖h‖ = √d}.
- :class:`Classifier`: logits = W h (+ b).
- :class:`CollapseNet`: the base class of every model. It fixes the layout that the
  decayed-parameter logic relies on: the input embedding lives in ``self.embed`` (never decayed
  unless ``decay_embedding``), the body in ``self.blocks``, the classifier in ``self.classifier``.
  Decayed = the weight of every ``nn.Linear`` in the body plus the classifier's weight; never biases
  or LN affine parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-5

KINDS = ("image", "vector", "text")
NORMS = ("post", "pre")


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension; no affine parameters unless ``affine=True``."""

    #: features in the last dimension: (N, d) or (N, T, d) (read by reduction.collect's pooling)
    collapse_layout = "channels_last"

    def __init__(self, width: int, affine: bool = False, eps: float = LN_EPS) -> None:
        super().__init__()
        self.width = width
        self.eps = eps
        if affine:
            self.weight: nn.Parameter | None = nn.Parameter(torch.ones(width))
            self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(width))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (self.width,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.width}, affine={self.weight is not None}, eps={self.eps}"


class Classifier(nn.Module):
    """Linear readout logits = W h (+ b), W ∈ R^{K×d}; the bias is never decayed."""

    def __init__(self, width: int, num_classes: int, bias: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(width, num_classes, bias=bias)

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(h)


def half_sq_norm(params: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """½ Σ_p ‖p‖_F², each square reduced in ``dtype`` (default: the parameters' own); the one
    implementation of the coupled-L2 penalty (THEORY §2). 0 for an empty list."""
    if not params:
        return torch.zeros((), dtype=dtype or torch.get_default_dtype())
    return 0.5 * torch.stack([p.to(dtype or p.dtype).square().sum() for p in params]).sum()


def init_linear(linear: nn.Linear) -> None:
    """PyTorch's default (Kaiming-uniform, a=√5) initialisation, written out so it is explicit."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


#: the whitening floor δ = WHITEN_FLOOR · tr(M)/D added to the inputs' second moment M (THEORY §2)
WHITEN_FLOOR = 1e-3


def whitening(inputs: Tensor, floor: float = WHITEN_FLOOR) -> tuple[Tensor, Tensor]:
    """(P, P⁻¹) with P = (M + δI)^{-1/2}, M = XᵀX/N the second moment of the rows of ``inputs``
    (N, D) and δ = floor · tr(M)/D, in float64 (THEORY §2). P is symmetric positive definite,
    so E = V P is a change of variables: every E is reached by exactly one V."""
    X = inputs.detach().to(torch.float64).reshape(len(inputs), -1)
    if X.shape[0] == 0 or not torch.isfinite(X).all():
        raise ValueError("whitening needs a non-empty, finite training input")
    M = X.T @ X / X.shape[0]
    evals, U = torch.linalg.eigh(M)
    delta = floor * max(float(evals.clamp_min(0).mean()), torch.finfo(torch.float64).tiny)
    root = (evals.clamp_min(0) + delta).sqrt()
    return (U / root) @ U.T, (U * root) @ U.T


class WhitenedLinear(nn.Module):
    """A bias-free linear map x ↦ E x parametrised as E = V P with a fixed whitening P of the
    training inputs (THEORY §2, §9). The function class is that of any E (P is invertible);
    what changes is the geometry the optimizer sees: the input covariance, whose condition
    number reaches ~10⁵ on MNIST, no longer enters the curvature of J in V.

    ``weight`` is V (trained); ``effective_weight`` is E. Built from an ``nn.Linear`` whose
    weight becomes E at the start (V = E P⁻¹), so the initialisation is unchanged. P is a
    non-persistent buffer: it is recomputed from the training data whenever the model is built.
    """

    P: Tensor
    P_inv: Tensor

    def __init__(self, linear: nn.Linear, inputs: Tensor, floor: float = WHITEN_FLOOR) -> None:
        super().__init__()
        P, P_inv = whitening(inputs, floor)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if P.shape[0] != self.in_features:
            raise ValueError(
                f"whitening inputs have {P.shape[0]} features, the map takes {self.in_features}"
            )
        E = linear.weight.detach().to(torch.float64)
        self.weight = nn.Parameter((E @ P_inv).to(linear.weight.dtype))
        self.register_buffer("P", P, persistent=False)
        self.register_buffer("P_inv", P_inv, persistent=False)

    @property
    def effective_weight(self) -> Tensor:
        return self.weight @ self.P

    def effective_grad(self) -> Tensor | None:
        """∂J/∂E = (∂J/∂V) P⁻¹ (P symmetric): the gradient in the canonical coordinates E, so
        that the gradient test of THEORY §9 does not depend on the parametrisation."""
        return None if self.weight.grad is None else self.weight.grad @ self.P_inv

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.effective_weight.T

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, whitened"


def check_common(
    width: int, depth: int, norm: str, num_classes: int, ln_eps: float = LN_EPS
) -> None:
    """Validation shared by every model config."""
    if not (ln_eps > 0 and math.isfinite(ln_eps)):
        raise ValueError(f"ln_eps must be finite and > 0 (LayerNorm's ε), got {ln_eps}")
    if width < 2:
        raise ValueError(f"width must be >= 2 (LayerNorm of one coordinate is 0), got {width}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0 (0 = no blocks), got {depth}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


class CollapseNet(nn.Module):
    """Base class: ``features`` (last LN output), ``forward`` (logits) and the decayed list.

    Subclasses create ``self.embed`` (input embedding), ``self.blocks`` (body) and
    ``self.classifier`` and implement :meth:`features`.
    """

    embed: nn.Module
    blocks: nn.ModuleList
    classifier: Classifier
    decay_embedding: bool

    def features(self, x: Tensor, all_layers: bool = False) -> Any:  # pragma: no cover
        """The feature after the last LN, (N, d); with ``all_layers`` the list [h⁰, h¹, …, h^L]
        of the features the classifier would read after 0, 1, …, L blocks (THEORY §2)."""
        raise NotImplementedError

    def pad_init(self, start: int, scale: float) -> None:
        """Initialise blocks ``start..L-1`` as near-identity blocks for depth continuation
        (THEORY §10): each block's last linear map after its ReLU is set to 0 (so the block adds
        exactly nothing) and every other block weight to ``scale`` × its default initialisation,
        which keeps the new block's gradients alive (ReLU'(0) = 0 in torch, so an all-zero
        σ(W h) block would be a stationary point that never moves)."""
        with torch.no_grad():
            for block in list(self.blocks)[start:]:
                pad: Any = block.pad_init  # every block type defines it
                pad(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def whiten_input_map(self, x: Tensor) -> None:
        """Re-parametrise the linear map of dense inputs as E = V P, P the whitening of what the
        map sees when the network reads the training inputs ``x`` (float64; THEORY §2). Each
        architecture says where its map is; E is unchanged at the start."""
        raise ValueError(
            f"whiten_embedding: {type(self).__name__} does not say where its dense input map is"
        )

    def embedding_parameters(self) -> list[tuple[str, Tensor]]:
        """Every parameter of the input embedding (token, patch, position, CLS)."""
        return [(f"embed.{n}", p) for n, p in self.embed.named_parameters()]

    def body_decayed_parameters(self) -> list[tuple[str, Tensor]]:
        """Weights of every ``nn.Linear`` of the blocks (biases and LN affine excluded)."""
        out = []
        for name, module in self.blocks.named_modules():
            if isinstance(module, nn.Linear):
                out.append((f"blocks.{name}.weight", module.weight))
        return out

    def classifier_decayed_parameters(self) -> list[tuple[str, Tensor]]:
        return [("classifier.linear.weight", self.classifier.weight)]

    def decayed_parameters(self) -> list[tuple[str, Tensor]]:
        """The explicit list penalised by (λ/2)‖·‖_F²: body weights, classifier weight and, only
        with ``decay_embedding``, the embedding."""
        out = self.body_decayed_parameters() + self.classifier_decayed_parameters()
        if self.decay_embedding:
            out += self.embedding_parameters()
        return out

    def penalties(self, lam: float, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """(λ/2)‖·‖² split into classifier, body and embedding (0 unless decay_embedding);
        reduced in ``dtype`` (default: the parameters' own)."""

        def pen(params: list[tuple[str, Tensor]]) -> Tensor:
            return lam * half_sq_norm([p for _, p in params], dtype)

        return {
            "classifier_penalty": pen(self.classifier_decayed_parameters()),
            "body_penalty": pen(self.body_decayed_parameters()),
            "embedding_penalty": (
                pen(self.embedding_parameters())
                if self.decay_embedding
                else self.classifier.weight.new_zeros((), dtype=dtype)
            ),
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Every trained parameter, once, by role: embedding, body (blocks and every LN),
        classifier (weight and bias)."""
        emb = {id(p) for _, p in self.embedding_parameters()}
        cls = {id(p) for p in self.classifier.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"embedding": [], "body": [], "classifier": []}
        for p in self.parameters():
            key = "embedding" if id(p) in emb else "classifier" if id(p) in cls else "body"
            groups[key].append(p)
        return groups

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
