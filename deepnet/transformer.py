"""L-T11 and L-T12 LayerNorm transformers for images, vectors and text (THEORY §2).

Tokens X⁰ = LN(E x + P) (depth 0: no blocks; the readout of X⁰ is the feature): for images,
E embeds non-overlapping p×p patches (bias-free linear map);
for vectors (N, D), E embeds consecutive chunks of length p; for text, E is a token embedding
(pad id 0). P are learned positions. With ``readout="cls"`` a learned CLS token is prepended.

Per block (post-LN, default):   X ← LN(X + Attn(X));  X ← LN(X + MLP(X))
          (pre-LN, norm="pre"):  X ← X + Attn(LN(X));  X ← X + MLP(LN(X)); final LN.
MLP: σ(W X) (L-T11, ``mlp_layers=1``) or W₂ σ(W₁ X) (L-T12). Attention: multi-head softmax
attention Attn(X) = W_O concat_h softmax(Q_h K_hᵀ/√d_h + mask) V_h, with [W_Q; W_K; W_V] stored
as one bias-free (3d × d) matrix (its squared Frobenius norm is the sum of the three) and W_O.

Readout: ``cls`` (bidirectional attention; feature = CLS output), ``last`` (causal attention;
feature = last token, for text the last non-pad token), ``mean`` (bidirectional; mean over the
(non-pad) tokens followed by an extra LN so that the feature stays on S_d). Pad keys are masked out
of attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    KINDS,
    LN_EPS,
    Classifier,
    CollapseNet,
    LayerNorm,
    WhitenedLinear,
    check_common,
    init_linear,
)

READOUTS = ("cls", "last", "mean")


@dataclass
class TransformerConfig:
    """Configuration of an L-T network; ``mlp_layers`` is 1 (L-T11) or 2 (L-T12).

    ``kind="image"`` needs ``in_channels`` and ``image_size`` (H, W); ``kind="vector"`` needs
    ``input_dim``; ``kind="text"`` needs ``vocab_size`` and ``max_len``. ``patch_size`` must
    divide H and W (images) or input_dim (vectors). ``mlp_hidden`` defaults to the width.
    """

    kind: str
    num_classes: int
    width: int = 64
    depth: int = 2
    mlp_layers: int = 1
    heads: int = 1
    norm: str = "post"
    readout: str = "cls"
    ln_affine: bool = False
    ln_eps: float = LN_EPS
    bias: bool = False
    decay_embedding: bool = False
    patch_size: int = 7
    in_channels: int = 1
    image_size: tuple[int, int] | None = None
    input_dim: int | None = None
    vocab_size: int | None = None
    max_len: int | None = None
    mlp_hidden: int | None = None

    def __post_init__(self) -> None:
        check_common(self.width, self.depth, self.norm, self.num_classes, self.ln_eps)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.mlp_layers not in (1, 2):
            raise ValueError(f"mlp_layers must be 1 or 2, got {self.mlp_layers}")
        if self.heads < 1 or self.width % self.heads:
            raise ValueError(f"heads ({self.heads}) must be >= 1 and divide width ({self.width})")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.kind == "image":
            if self.image_size is None:
                raise ValueError("kind='image' needs image_size=(H, W)")
            self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
            h, w = self.image_size
            p = self.patch_size
            if p < 1 or h % p or w % p:
                raise ValueError(
                    f"patch_size={p} must divide the image height and width {h}×{w} "
                    f"(e.g. 7 for 28×28, 2 or 4 for 8×8)"
                )
        elif self.kind == "vector":
            if self.input_dim is None:
                raise ValueError("kind='vector' needs input_dim")
            if self.patch_size < 1 or self.input_dim % self.patch_size:
                raise ValueError(
                    f"patch_size={self.patch_size} must divide the vector length {self.input_dim}"
                )
        else:
            if not self.vocab_size or not self.max_len:
                raise ValueError("kind='text' needs vocab_size and max_len")
        if self.mlp_hidden is not None and self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")

    @property
    def num_tokens(self) -> int:
        """Sequence length without the CLS token."""
        if self.kind == "image":
            assert self.image_size is not None
            return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        if self.kind == "vector":
            assert self.input_dim is not None
            return self.input_dim // self.patch_size
        assert self.max_len is not None
        return self.max_len


class Attention(nn.Module):
    """Bias-free multi-head softmax self-attention."""

    collapse_layout = "channels_last"  # (N, T, d), for reduction.collect

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)  # [W_Q; W_K; W_V]
        self.out = nn.Linear(width, width, bias=False)  # W_O
        init_linear(self.qkv)
        init_linear(self.out)

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """σ(W x) (one layer) or W₂ σ(W₁ x) (two layers); bias-free."""

    collapse_layout = "channels_last"  # (N, T, d), for reduction.collect

    def __init__(self, width: int, layers: int, hidden: int) -> None:
        super().__init__()
        self.layers = layers
        if layers == 1:
            self.fc1 = nn.Linear(width, width, bias=False)
            init_linear(self.fc1)
        else:
            self.fc1 = nn.Linear(width, hidden, bias=False)
            self.fc2 = nn.Linear(hidden, width, bias=False)
            init_linear(self.fc1)
            init_linear(self.fc2)

    def pad_init(self, scale: float) -> None:
        self.fc1.weight.mul_(scale)
        if self.layers == 2:
            self.fc2.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.fc1(x))
        return self.fc2(y) if self.layers == 2 else y


class Block(nn.Module):
    """Attention sub-block then MLP sub-block, each with its LN (placement set by ``norm``)."""

    collapse_layout = "channels_last"  # (N, T, d), for reduction.collect

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.post = cfg.norm == "post"
        self.attn = Attention(cfg.width, cfg.heads)
        self.mlp = MLP(cfg.width, cfg.mlp_layers, cfg.mlp_hidden or cfg.width)
        self.ln1 = LayerNorm(cfg.width, cfg.ln_affine, cfg.ln_eps)
        self.ln2 = LayerNorm(cfg.width, cfg.ln_affine, cfg.ln_eps)

    def pad_init(self, scale: float) -> None:
        """Near-identity start for depth continuation: W_O = 0 (attention adds nothing), W_QKV
        and the MLP's first map scaled by ``scale``, its second map (L-T12) 0."""
        self.attn.qkv.weight.mul_(scale)
        self.attn.out.weight.zero_()
        self.mlp.pad_init(scale)

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        if self.post:
            x = self.ln1(x + self.attn(x, mask, causal))
            return self.ln2(x + self.mlp(x))
        x = x + self.attn(self.ln1(x), mask, causal)
        return x + self.mlp(self.ln2(x))


class TransformerEmbedding(nn.Module):
    """A transformer's input embedding: the token table ``tok`` (text) or the patch map
    ``patch`` (images, vectors: a Linear, or a WhitenedLinear), the position table ``pos`` and,
    with a CLS readout, the CLS token ``cls``."""

    tok: nn.Embedding
    patch: nn.Module
    pos: nn.Parameter
    cls: nn.Parameter


class Transformer(CollapseNet):
    """L-T11 / L-T12 with CLS, last-token or mean readout."""

    embed: TransformerEmbedding

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decay_embedding = config.decay_embedding
        d = config.width
        cfg = config
        self.embed = TransformerEmbedding()
        if cfg.kind == "text":
            assert cfg.vocab_size is not None
            tok = nn.Embedding(cfg.vocab_size, d)
            nn.init.normal_(tok.weight, std=1.0)  # its scale is irrelevant: LN follows
            self.embed.tok = tok
        else:
            patch_dim = (
                cfg.in_channels * cfg.patch_size**2 if cfg.kind == "image" else cfg.patch_size
            )
            proj = nn.Linear(patch_dim, d, bias=False)
            init_linear(proj)
            self.embed.patch = proj
        self.use_cls = cfg.readout == "cls"
        n_pos = cfg.num_tokens + int(self.use_cls)
        self.embed.pos = nn.Parameter(0.02 * torch.randn(1, n_pos, d))
        if self.use_cls:
            self.embed.cls = nn.Parameter(0.02 * torch.randn(1, 1, d))
        eps = cfg.ln_eps
        self.ln_in = LayerNorm(d, cfg.ln_affine, eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_final = LayerNorm(d, cfg.ln_affine, eps) if cfg.norm == "pre" else None
        self.ln_mean = LayerNorm(d, cfg.ln_affine, eps) if cfg.readout == "mean" else None
        self.classifier = Classifier(d, cfg.num_classes, cfg.bias)
        init_linear(self.classifier.linear)

    def whiten_input_map(self, x: Tensor) -> None:
        """The patch map reads the patches of the inputs (see
        :meth:`CollapseNet.whiten_input_map`); token embeddings are left as they are."""
        if self.config.kind == "text":
            return
        patches = self.patches(x)
        assert isinstance(self.embed.patch, nn.Linear)  # whitened once, when the model is built
        self.embed.patch = WhitenedLinear(self.embed.patch, patches.reshape(-1, patches.shape[-1]))

    def _tokens(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Embedded tokens (N, T, d) before positions, and the non-pad mask (N, T) for text."""
        cfg = self.config
        if cfg.kind == "text":
            if x.dtype not in (torch.int64, torch.int32) or x.ndim != 2:
                raise ValueError(
                    f"text input must be integer (N, T), got {x.dtype} {tuple(x.shape)}"
                )
            assert cfg.max_len is not None
            if x.shape[1] > cfg.max_len:
                raise ValueError(f"text length {x.shape[1]} exceeds max_len={cfg.max_len}")
            return self.embed.tok(x), x != 0
        return self.embed.patch(self.patches(x)), None

    def patches(self, x: Tensor) -> Tensor:
        """The (N, T, patch_dim) patches of image or vector inputs, before the patch map."""
        cfg = self.config
        p = cfg.patch_size
        if cfg.kind == "image":
            if x.ndim != 4:
                raise ValueError(f"image input must be (N, C, H, W), got {tuple(x.shape)}")
            n, c, h, w = x.shape
            assert cfg.image_size is not None  # an image model is built with its size
            if (c, h, w) != (cfg.in_channels, *cfg.image_size):
                raise ValueError(
                    f"image shape {(c, h, w)} does not match the model's "
                    f"{(cfg.in_channels, *cfg.image_size)}"
                )
            patches = (
                x.reshape(n, c, h // p, p, w // p, p)
                .permute(0, 2, 4, 1, 3, 5)
                .reshape(n, -1, c * p * p)
            )
        else:
            if x.ndim != 2 or x.shape[1] != cfg.input_dim:
                raise ValueError(f"vector input must be (N, {cfg.input_dim}), got {tuple(x.shape)}")
            patches = x.reshape(x.shape[0], -1, p)
        return patches

    def features(self, x: Tensor, all_layers: bool = False) -> Any:
        streams, keep = self._streams(x, all_layers)
        layers = [self._readout(h, keep) for h in streams]
        return layers if all_layers else layers[-1]

    def token_features(self, x: Tensor) -> Tensor:
        """The (N, T, d) feature of every input position after the last block (and the final LN
        of pre-LN); the CLS token is left out. With ``readout="last"`` position t is the feature
        that predicts token t + 1 from tokens 0..t (causal attention)."""
        streams, _ = self._streams(x, False)
        h = self.ln_final(streams[-1]) if self.ln_final is not None else streams[-1]
        return h[:, int(self.use_cls) :]

    def _streams(self, x: Tensor, all_layers: bool) -> tuple[list[Tensor], Tensor | None]:
        """The token stream (N, T', d) after the embedding and after every block (or only the
        last one), and the non-pad mask."""
        tokens, keep = self._tokens(x)
        n, _, d = tokens.shape
        if self.use_cls:
            tokens = torch.cat([self.embed.cls.expand(n, 1, d), tokens], dim=1)
            if keep is not None:
                keep = torch.cat([keep.new_ones(n, 1), keep], dim=1)
        h = self.ln_in(tokens + self.embed.pos[:, : tokens.shape[1]])
        causal = self.config.readout == "last"
        mask = None
        if keep is not None:
            # Boolean mask, True = may attend: key is not pad (and key ≤ query when causal).
            # The diagonal is always allowed so that an all-pad row (a pad query with no visible
            # key) stays finite; non-pad queries are unaffected since they see themselves anyway.
            tt = h.shape[1]
            eye = torch.eye(tt, dtype=torch.bool, device=h.device)
            mask = keep[:, None, None, :] | eye
            if causal:
                mask = mask & torch.ones(tt, tt, dtype=torch.bool, device=h.device).tril()
            causal = False  # folded into the explicit mask
        streams = [h]
        for block in self.blocks:
            h = block(h, mask, causal)
            streams = [*streams, h] if all_layers else [h]
        return streams, keep

    def _readout(self, h: Tensor, keep: Tensor | None) -> Tensor:
        """The (N, d) feature read from the token stream h (N, T, d): the final LN (pre-LN),
        then the CLS token, the last (non-pad) token, or the mean followed by an LN."""
        if self.ln_final is not None:
            h = self.ln_final(h)
        readout = self.config.readout
        if readout == "cls":
            return h[:, 0]
        n = h.shape[0]
        if readout == "last":
            if keep is None:
                return h[:, -1]
            pos = torch.arange(h.shape[1], device=h.device)
            last = torch.where(keep, pos, torch.zeros_like(pos)).amax(dim=1)
            return h[torch.arange(n, device=h.device), last]
        assert self.ln_mean is not None
        if keep is None:
            return self.ln_mean(h.mean(dim=1))
        w = keep.to(h.dtype).unsqueeze(-1)
        return self.ln_mean((h * w).sum(1) / w.sum(1).clamp_min(1.0))
