"""The architecture registry: one entry per architecture, and :func:`build_model`.

Adding an architecture touches only this file: write its ``CollapseNet`` (the layout
``embed`` / ``blocks`` / ``classifier`` that the decayed list relies on, see ``layers.py``) and
register a builder. RunConfig validation, the CLI choices and the sweep read :data:`ARCHS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .layers import LN_EPS, CollapseNet, WhitenedLinear
from .resnet import ResNet, ResNetConfig
from .transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class Arch:
    """A registered architecture: a name, a one-line description, the data kinds it takes,
    the linear layers per block (1 or 2: decides the theory's λ schedule, THEORY §3) and a
    builder ``build(config, data) -> CollapseNet``."""

    name: str
    description: str
    kinds: tuple[str, ...]
    layers_per_block: int
    build: Callable[[Any, Any], CollapseNet]


ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Add ``arch`` to the registry (a name may be registered once)."""
    if arch.name in ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHS[arch.name] = arch
    return arch


def _shape(data: Any) -> tuple[str, tuple[int, ...]]:
    kind = data.kind
    x = data.x_train
    want = {"image": 4, "vector": 2, "text": 2}
    if kind not in want:
        raise ValueError(f"data.kind must be one of {tuple(want)}, got {kind!r}")
    if np.ndim(x) != want[kind]:
        layout = {"image": "(N, C, H, W)", "vector": "(N, D)", "text": "(N, T) token ids"}[kind]
        raise ValueError(f"{kind} data must be {layout}, got shape {np.shape(x)}")
    return kind, tuple(int(s) for s in np.shape(x)[1:])


def default_patch_size(size: int) -> int:
    """The largest divisor of ``size`` that is ≤ 7 (7 for 28, 4 for 32 and 8, 5 for 40)."""
    return max(p for p in range(1, min(7, size) + 1) if size % p == 0)


def patch_size_for(config: Any, kind: str, shape: tuple[int, ...]) -> int:
    """``config.patch_size``, or the default that divides the image (H, W) or the vector."""
    if config.patch_size is not None:
        return int(config.patch_size)
    if kind == "image":
        return default_patch_size(int(np.gcd(shape[1], shape[2])))
    if kind == "vector":
        return default_patch_size(shape[0])
    return 1  # text: tokens, no patches


def _common(config: Any, data: Any) -> dict[str, Any]:
    return dict(
        num_classes=int(data.num_classes),
        width=config.width,
        depth=config.depth,
        norm=config.norm,
        ln_affine=config.ln_affine,
        ln_eps=getattr(config, "ln_eps", LN_EPS),
        bias=config.bias,
        decay_embedding=config.decay_embedding,
    )


def _resnet(layers: int) -> Callable[[Any, Any], CollapseNet]:
    def build(config: Any, data: Any) -> CollapseNet:
        kind, shape = _shape(data)
        if kind == "text":
            raise ValueError("ResNets take image or vector data; use a transformer for text")
        return ResNet(
            ResNetConfig(
                input_dim=int(np.prod(shape)),
                layers_per_block=layers,
                block_form=config.block_form,
                **_common(config, data),
            )
        )

    return build


def _transformer(mlp_layers: int) -> Callable[[Any, Any], CollapseNet]:
    def build(config: Any, data: Any) -> CollapseNet:
        kind, shape = _shape(data)
        tcfg: dict[str, Any] = dict(
            kind=kind,
            mlp_layers=mlp_layers,
            heads=config.heads,
            readout=config.readout,
            patch_size=patch_size_for(config, kind, shape),
        )
        if kind == "image":
            tcfg.update(in_channels=shape[0], image_size=(shape[1], shape[2]))
        elif kind == "vector":
            tcfg.update(input_dim=shape[0])
        else:
            info = getattr(data, "info", None) or {}
            vocab = getattr(data, "vocab", None)
            top = int(np.max(data.x_train)) + 1
            vocab_size = info.get("vocab_size") or (len(vocab) if vocab is not None else top)
            tcfg.update(
                vocab_size=max(int(vocab_size), top),
                max_len=max(int(info.get("max_len", shape[0])), shape[0]),
            )
        return Transformer(TransformerConfig(**_common(config, data), **tcfg))

    return build


register_arch(Arch("rn1", "L-RN1: h ← LN(h + σ(W h))", ("image", "vector"), 1, _resnet(1)))
register_arch(Arch("rn2", "L-RN2: h ← LN(h + W₂σ(W₁h))", ("image", "vector"), 2, _resnet(2)))
register_arch(
    Arch(
        "t11",
        "L-T11: attention + one-layer MLP σ(W X)",
        ("image", "vector", "text"),
        1,
        _transformer(1),
    )
)
register_arch(
    Arch(
        "t12",
        "L-T12: attention + two-layer MLP W₂σ(W₁X)",
        ("image", "vector", "text"),
        2,
        _transformer(2),
    )
)


def build_model(config: Any, data: Any) -> CollapseNet:
    """The network ``config`` describes, sized for ``data`` (a ``deepnet.data.Dataset``)."""
    if config.arch not in ARCHS:
        raise ValueError(f"unknown arch {config.arch!r}; registered: {sorted(ARCHS)}")
    model = ARCHS[config.arch].build(config, data)
    if getattr(config, "whiten_embedding", False):
        whiten_embedding(model, data)
    return model


def whiten_embedding(model: CollapseNet, data: Any) -> None:
    """Re-parametrise the linear input map of dense inputs as E = V P, with P the whitening of
    the training inputs the map sees (THEORY §2): the flattened inputs of a ResNet, the patches
    of a transformer. Token embeddings (text) are left as they are. E is unchanged at the start."""
    if data.kind == "text":
        return
    x = torch.as_tensor(np.asarray(data.x_train), dtype=torch.float64)
    if isinstance(model, ResNet):
        model.embed["E"] = WhitenedLinear(model.embed["E"], x.flatten(1))
    elif isinstance(model, Transformer):
        patches = model.patches(x)
        flat = patches.reshape(-1, patches.shape[-1])
        model.embed.patch = WhitenedLinear(model.embed.patch, flat)
    else:  # pragma: no cover - a new architecture must say where its input map is
        raise ValueError(f"whiten_embedding: no dense input map found in {type(model).__name__}")
