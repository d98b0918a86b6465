"""The architecture registry: one entry per architecture, and :func:`build_model`.

Adding an architecture is one :func:`register_arch` call and its code: a ``CollapseNet`` (the
layout ``embed`` / ``blocks`` / ``classifier`` that the decayed list relies on, and its
``whiten_input_map``; see ``layers.py``) and a builder. RunConfig validation (the choices, the
block forms), the command line (choices and help), the data check of :func:`build_model` and
the path bound of ``reduction.profile`` read the entry's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .layers import CollapseNet
from .resnet import ResNet, ResNetConfig
from .transformer import Transformer, TransformerConfig

if TYPE_CHECKING:
    from .config import RunConfig
    from .data import Dataset


@dataclass(frozen=True)
class Arch:
    """A registered architecture.

    ``kinds``: the data kinds it takes (:func:`build_model` refuses others). ``layers_per_block``:
    the linear layers per block, 1 or 2 (it decides the theory's λ schedule, THEORY §3, and the
    form of the path bound, §10). ``block_forms``: the ``block_form`` values it accepts.
    ``path_bound``: whether the post-LN path bound on the body penalty applies (THEORY §10:
    residual blocks on the LN sphere; not attention). ``build(arch, config, data)`` makes the
    network.
    """

    name: str
    description: str
    kinds: tuple[str, ...]
    layers_per_block: int
    build: Callable[[Arch, RunConfig, Dataset], CollapseNet]
    block_forms: tuple[str, ...] = ("relu_of_linear",)
    path_bound: bool = False


ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Add ``arch`` to the registry (a name may be registered once)."""
    if arch.name in ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    ARCHS[arch.name] = arch
    return arch


def _shape(data: Dataset) -> tuple[str, tuple[int, ...]]:
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


def patch_size_for(config: RunConfig, kind: str, shape: tuple[int, ...]) -> int:
    """``config.patch_size``, or the default that divides the image (H, W) or the vector."""
    if config.patch_size is not None:
        return int(config.patch_size)
    if kind == "image":
        return default_patch_size(int(np.gcd(shape[1], shape[2])))
    if kind == "vector":
        return default_patch_size(shape[0])
    return 1  # text: tokens, no patches


def _common(config: RunConfig, data: Dataset) -> dict[str, Any]:
    return dict(
        num_classes=int(data.num_classes),
        width=config.width,
        depth=config.depth,
        norm=config.norm,
        ln_affine=config.ln_affine,
        ln_eps=config.ln_eps,
        bias=config.bias,
        decay_embedding=config.decay_embedding,
    )


def _resnet(arch: Arch, config: RunConfig, data: Dataset) -> CollapseNet:
    _, shape = _shape(data)
    return ResNet(
        ResNetConfig(
            input_dim=int(np.prod(shape)),
            layers_per_block=arch.layers_per_block,
            block_form=config.block_form,
            **_common(config, data),
        )
    )


def _transformer(arch: Arch, config: RunConfig, data: Dataset) -> CollapseNet:
    kind, shape = _shape(data)
    tcfg: dict[str, Any] = dict(
        kind=kind,
        mlp_layers=arch.layers_per_block,
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


_RESNET_KINDS = ("image", "vector")
_TRANSFORMER_KINDS = ("image", "vector", "text")
register_arch(
    Arch("rn1", "L-RN1 (ResNet): h ← LN(h + σ(W h))", _RESNET_KINDS, 1, _resnet,
         block_forms=("relu_of_linear", "linear_of_relu"), path_bound=True)
)  # fmt: skip
register_arch(
    Arch("rn2", "L-RN2 (ResNet): h ← LN(h + W₂σ(W₁h))", _RESNET_KINDS, 2, _resnet,
         path_bound=True)
)  # fmt: skip
register_arch(
    Arch("t11", "L-T11 (transformer): attention + one-layer MLP σ(W X)", _TRANSFORMER_KINDS, 1,
         _transformer)
)  # fmt: skip
register_arch(
    Arch("t12", "L-T12 (transformer): attention + two-layer MLP W₂σ(W₁X)", _TRANSFORMER_KINDS,
         2, _transformer)
)  # fmt: skip


def build_model(config: RunConfig, data: Dataset) -> CollapseNet:
    """The network ``config`` describes, sized for ``data`` (a ``deepnet.data.Dataset``)."""
    if config.arch not in ARCHS:
        raise ValueError(f"unknown arch {config.arch!r}; registered: {sorted(ARCHS)}")
    arch = ARCHS[config.arch]
    kind, _ = _shape(data)
    if kind not in arch.kinds:
        raise ValueError(
            f"{arch.name} takes {' or '.join(arch.kinds)} data, not {kind}: "
            + ("use a transformer for text" if kind == "text" else "see deepnet.ARCHS")
        )
    model = arch.build(arch, config, data)
    if config.whiten_embedding:
        whiten_embedding(model, data)
    return model


def whiten_embedding(model: CollapseNet, data: Dataset) -> None:
    """Re-parametrise the linear input map of dense inputs as E = V P, with P the whitening of
    the training inputs the map sees (THEORY §2; :meth:`CollapseNet.whiten_input_map`: the
    flattened inputs of a ResNet, the patches of a transformer). Token embeddings (text) are
    left as they are. E is unchanged at the start."""
    if data.kind == "text":
        return
    model.whiten_input_map(torch.as_tensor(np.asarray(data.x_train), dtype=torch.float64))
