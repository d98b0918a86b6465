"""L-RN1 and L-RN2 LayerNorm residual networks (THEORY §2).

Input: flatten x, h⁰ = LN(E x) with a bias-free linear embedding E. Then, for l = 1..L (L = 0:
no blocks, the feature is h⁰),

post-LN (default)
  L-RN1: h ← LN(h + σ(W_l h))          (block_form="relu_of_linear")
         h ← LN(h + W_l σ(h))          (block_form="linear_of_relu")
  L-RN2: h ← LN(h + W_{l,2} σ(W_{l,1} h))
pre-LN  (norm="pre")
  h ← h + f_l(LN(h)) with the same f_l, and a final LN.

The feature is the last LN output (on the centred √d sphere); logits = W h^L (+ b).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .layers import (
    LN_EPS,
    Classifier,
    CollapseNet,
    LayerNorm,
    WhitenedLinear,
    check_common,
    init_linear,
)

BLOCK_FORMS = ("relu_of_linear", "linear_of_relu")


@dataclass
class ResNetConfig:
    """Configuration of an L-RN network; ``layers_per_block`` is 1 (L-RN1) or 2 (L-RN2)."""

    input_dim: int
    num_classes: int
    width: int = 64
    depth: int = 2
    layers_per_block: int = 1
    norm: str = "post"
    ln_affine: bool = False
    ln_eps: float = LN_EPS
    block_form: str = "relu_of_linear"
    bias: bool = False
    decay_embedding: bool = False

    def __post_init__(self) -> None:
        check_common(self.width, self.depth, self.norm, self.num_classes, self.ln_eps)
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        if self.layers_per_block not in (1, 2):
            raise ValueError(f"layers_per_block must be 1 or 2, got {self.layers_per_block}")
        if self.block_form not in BLOCK_FORMS:
            raise ValueError(f"block_form must be one of {BLOCK_FORMS}, got {self.block_form!r}")
        if self.layers_per_block == 2 and self.block_form != "relu_of_linear":
            raise ValueError("block_form applies to one-layer blocks (L-RN1) only")


class ResBlock(nn.Module):
    """One residual branch f_l: σ(W h), W σ(h) or W₂ σ(W₁ h); no biases (every matrix decayed)."""

    def __init__(self, width: int, layers: int, block_form: str) -> None:
        super().__init__()
        self.layers = layers
        self.block_form = block_form
        self.fc1 = nn.Linear(width, width, bias=False)
        init_linear(self.fc1)
        if layers == 2:
            self.fc2 = nn.Linear(width, width, bias=False)
            init_linear(self.fc2)

    def pad_init(self, scale: float) -> None:
        """Near-identity start (see CollapseNet.pad_init): W₂ = 0 and W₁ scaled for two layers,
        W = 0 for W σ(h), W scaled for σ(W h) (no zero map after the ReLU there)."""
        if self.layers == 2:
            self.fc1.weight.mul_(scale)
            self.fc2.weight.zero_()
        elif self.block_form == "linear_of_relu":
            self.fc1.weight.zero_()
        else:
            self.fc1.weight.mul_(scale)

    def forward(self, h: Tensor) -> Tensor:
        if self.layers == 2:
            return self.fc2(torch.relu(self.fc1(h)))
        if self.block_form == "linear_of_relu":
            return self.fc1(torch.relu(h))
        return torch.relu(self.fc1(h))


class ResNet(CollapseNet):
    """L-RN1 / L-RN2 on flattened inputs (images or vectors)."""

    embed: nn.ModuleDict

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.decay_embedding = config.decay_embedding
        d = config.width
        embed = nn.Linear(config.input_dim, d, bias=False)
        init_linear(embed)
        self.embed = nn.ModuleDict({"E": embed})
        eps = config.ln_eps
        self.ln_in = LayerNorm(d, config.ln_affine, eps)
        self.blocks = nn.ModuleList(
            ResBlock(d, config.layers_per_block, config.block_form) for _ in range(config.depth)
        )
        # post-LN: one LN after each block; pre-LN: one LN before each branch plus a final LN.
        self.norms = nn.ModuleList(LayerNorm(d, config.ln_affine, eps) for _ in range(config.depth))
        self.ln_final = LayerNorm(d, config.ln_affine, eps) if config.norm == "pre" else None
        self.classifier = Classifier(d, config.num_classes, config.bias)
        init_linear(self.classifier.linear)

    def whiten_input_map(self, x: Tensor) -> None:
        """The map E reads the flattened inputs (see :meth:`CollapseNet.whiten_input_map`)."""
        E = self.embed["E"]
        assert isinstance(E, nn.Linear)  # whitened once, when the model is built
        self.embed["E"] = WhitenedLinear(E, x.flatten(1))

    def _readout(self, h: Tensor) -> Tensor:
        """The feature the classifier reads from the residual stream h (pre-LN: the final LN)."""
        return h if self.ln_final is None else self.ln_final(h)

    def features(self, x: Tensor, all_layers: bool = False) -> Any:
        h = self.ln_in(self.embed["E"](x.flatten(1)))
        layers = [self._readout(h)] if all_layers else []
        post = self.config.norm == "post"
        for block, ln in zip(self.blocks, self.norms):
            h = ln(h + block(h)) if post else h + block(ln(h))
            if all_layers:
                layers.append(self._readout(h))
        return layers if all_layers else self._readout(h)
