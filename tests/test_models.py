"""deepnet models: LN features on the centred √d sphere, the decayed list, input handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deepnet import (
    LayerNorm,
    ResNet,
    ResNetConfig,
    RunConfig,
    Transformer,
    TransformerConfig,
    build_model,
)
from deepnet.data import Dataset

pytestmark = pytest.mark.unit

torch.set_num_threads(1)

WIDTH = 12
K = 3


def _dataset(kind: str, n: int = 24, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    if kind == "image":
        x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
    elif kind == "vector":
        x = rng.normal(size=(n, 12)).astype(np.float32)
    else:
        x = rng.integers(2, 30, size=(n, 7)).astype(np.int64)
        for i in range(n):  # variable lengths, trailing pads
            x[i, 3 + i % 4 :] = 0
    return Dataset(
        name="synthetic",
        kind=kind,
        x_train=x,
        y_train=y,
        x_test=x[:6],
        y_test=y[:6],
        num_classes=K,
        class_names=[str(k) for k in range(K)],
        vocab=[f"t{i}" for i in range(30)] if kind == "text" else None,
        info={"max_len": 7} if kind == "text" else {},
    )


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for norm in ("post", "pre"):
        for arch in ("rn1", "rn2"):
            for kind in ("image", "vector"):
                cases.append((arch, norm, "cls", kind))
        for arch in ("t11", "t12"):
            for readout in ("cls", "last", "mean"):
                for kind in ("image", "vector", "text"):
                    cases.append((arch, norm, readout, kind))
    return cases


def _model(arch: str, norm: str, readout: str, kind: str, **kw) -> tuple[nn.Module, Dataset]:
    data = _dataset(kind)
    cfg = RunConfig(
        arch=arch, depth=2, width=WIDTH, norm=norm, readout=readout, heads=2, patch_size=4, **kw
    )
    torch.manual_seed(0)
    return build_model(cfg, data), data


def _x(data: Dataset) -> torch.Tensor:
    return torch.as_tensor(data.x_train)


@pytest.mark.parametrize(("arch", "norm", "readout", "kind"), _cases())
def test_features_on_centred_sphere(arch, norm, readout, kind):
    model, data = _model(arch, norm, readout, kind)
    with torch.no_grad():
        h = model.features(_x(data)).double()
        logits = model(_x(data))
    assert h.shape == (len(data.x_train), WIDTH)
    # LN output: 1ᵀh = 0 and ‖h‖² = d·var/(var + ε), i.e. √d up to ε/var.
    assert h.mean(1).abs().max() < 1e-6
    norms = h.norm(dim=1) / math.sqrt(WIDTH)
    assert (norms - 1).abs().max() < 1e-3
    assert (norms <= 1 + 1e-6).all()
    # forward = classifier(features)
    W = model.classifier.weight.double()
    torch.testing.assert_close(logits.double(), h @ W.T, rtol=1e-5, atol=1e-5)


def _expected_decayed(model: nn.Module) -> set[str]:
    """Independent enumeration: every Linear weight below ``blocks`` and the classifier's."""
    names = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (
            mname.startswith("blocks.") or mname == "classifier.linear"
        ):
            names.add(f"{mname}.weight")
    return names


MATRICES_PER_BLOCK = {"rn1": 1, "rn2": 2, "t11": 3, "t12": 4}  # t: [W_Q;W_K;W_V], W_O, MLP


@pytest.mark.parametrize("arch", ["rn1", "rn2", "t11", "t12"])
@pytest.mark.parametrize("ln_affine", [False, True])
def test_decayed_list(arch, ln_affine):
    kind = "image"
    model, _ = _model(arch, "post", "cls", kind, bias=True, ln_affine=ln_affine)
    decayed = dict(model.decayed_parameters())
    assert set(decayed) == _expected_decayed(model)
    assert len(decayed) == 2 * MATRICES_PER_BLOCK[arch] + 1  # depth 2, plus the classifier
    assert all(p.ndim == 2 for p in decayed.values())
    assert "classifier.linear.bias" not in decayed
    named = dict(model.named_parameters())
    ln_params = [n for n in named if ".weight" in n and named[n].ndim == 1]
    assert bool(ln_params) == ln_affine  # LN affine exists only on request and is never decayed
    assert not set(ln_params) & set(decayed)
    emb = dict(model.embedding_parameters())
    assert emb and not set(emb) & set(decayed)
    for p in emb.values():  # embedding params identical objects to the model's
        assert any(p is q for q in named.values())

    model2, _ = _model(arch, "post", "cls", kind, decay_embedding=True)
    decayed2 = dict(model2.decayed_parameters())
    assert set(decayed2) == _expected_decayed(model2) | set(dict(model2.embedding_parameters()))


def test_penalties_split():
    model, _ = _model("t11", "pre", "mean", "text", decay_embedding=True)
    lam = 0.01
    pens = model.penalties(lam)
    cls = 0.5 * lam * model.classifier.weight.square().sum()
    emb = 0.5 * lam * sum(p.square().sum() for _, p in model.embedding_parameters())
    everything = 0.5 * lam * sum(p.square().sum() for _, p in model.decayed_parameters())
    torch.testing.assert_close(pens["classifier_penalty"], cls)
    torch.testing.assert_close(pens["embedding_penalty"], emb)
    torch.testing.assert_close(sum(pens.values()), everything)


def test_layernorm_matches_torch():
    x = torch.randn(5, 7)
    torch.testing.assert_close(LayerNorm(7)(x), nn.LayerNorm(7, elementwise_affine=False)(x))
    assert LayerNorm(7).eps == 1e-5
    assert not list(LayerNorm(7).parameters())


@pytest.mark.parametrize("readout", ["cls", "last", "mean"])
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_text_padding_is_masked(readout, norm):
    """Trailing pads change nothing: (a b c 0 0 0 0) ≡ (a b c)."""
    model, data = _model("t11", norm, readout, "text")
    x = _x(data)
    row = x[:1, :3].clone()
    row[0] = torch.tensor([5, 6, 7])
    padded = torch.cat([row, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.features(padded), model.features(row))


def test_last_readout_is_causal_and_reads_last_token():
    model, _ = _model("t12", "post", "last", "text")
    captured = []
    model.blocks[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    a = torch.tensor([[4, 5, 6, 7]])
    b = torch.tensor([[4, 5, 6, 9]])
    with torch.no_grad():
        fa, fb = model.features(a), model.features(b)
    # the first three positions cannot see the changed fourth token
    torch.testing.assert_close(captured[0][:, :3], captured[1][:, :3])
    assert not torch.allclose(fa, fb)
    torch.testing.assert_close(fa, captured[0][:, 3])


def test_cls_readout_is_bidirectional():
    model, _ = _model("t11", "post", "cls", "text")
    with torch.no_grad():
        fa = model.features(torch.tensor([[4, 5, 6, 7]]))
        fb = model.features(torch.tensor([[4, 5, 6, 9]]))
    assert not torch.allclose(fa, fb)


def test_input_errors():
    with pytest.raises(ValueError, match="patch_size"):
        build_model(RunConfig(arch="t11", patch_size=3), _dataset("image"))
    with pytest.raises(ValueError, match="patch_size"):
        build_model(RunConfig(arch="t11", patch_size=5), _dataset("vector"))
    with pytest.raises(ValueError, match="text"):
        build_model(RunConfig(arch="rn1"), _dataset("text"))
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerConfig(kind="text", num_classes=2)
    with pytest.raises(ValueError, match="heads"):
        TransformerConfig(
            kind="vector", num_classes=2, width=10, heads=3, input_dim=4, patch_size=2
        )
    with pytest.raises(ValueError, match="block_form"):
        ResNetConfig(input_dim=4, num_classes=2, layers_per_block=2, block_form="linear_of_relu")


def test_block_forms_differ_and_resnet_shapes():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    a = ResNet(ResNetConfig(input_dim=64, num_classes=3, width=8, depth=3))
    b = ResNet(
        ResNetConfig(input_dim=64, num_classes=3, width=8, depth=3, block_form="linear_of_relu")
    )
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert a(x).shape == (4, 3)
        assert not torch.allclose(a.features(x), b.features(x))
        # relu_of_linear by hand: h ← LN(h + σ(W h))
        ln = nn.LayerNorm(8, elementwise_affine=False)
        h = ln(x.flatten(1) @ a.embed["E"].weight.T)
        for blk in a.blocks:
            h = ln(h + torch.relu(h @ blk.fc1.weight.T))
        torch.testing.assert_close(a.features(x), h)


def test_image_patches_by_hand():
    """Patch embedding of a 1×8×8 image with p = 4: four patches in row-major order."""
    torch.manual_seed(0)
    cfg = TransformerConfig(
        kind="image",
        num_classes=2,
        width=8,
        depth=1,
        patch_size=4,
        image_size=(8, 8),
        readout="mean",
    )
    model = Transformer(cfg)
    x = torch.randn(2, 1, 8, 8)
    tokens, _ = model._tokens(x)
    proj = model.embed.patch.weight
    expected = torch.stack(
        [
            x[:, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, 16) @ proj.T
            for i in range(2)
            for j in range(2)
        ],
        dim=1,
    )
    torch.testing.assert_close(tokens, expected)


# ----------------------------------------------------------------------------- LayerNorm's ε


@pytest.mark.parametrize(("arch", "norm", "readout"), [
    ("rn1", "post", "cls"), ("rn2", "pre", "cls"), ("t11", "post", "cls"),
    ("t12", "pre", "mean"), ("t11", "post", "last"),
])  # fmt: skip
def test_ln_eps_reaches_every_layernorm(arch, norm, readout):
    kind = "vector" if arch.startswith("rn") else "image"
    model, _ = _model(arch, norm, readout, kind, ln_eps=1e-2)
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    expected = 1 + (2 if arch.startswith("t") else 1) * 2 + (norm == "pre") + (readout == "mean")
    assert len(norms) == expected and {m.eps for m in norms} == {1e-2}
    default, _ = _model(arch, norm, readout, kind)
    assert {m.eps for m in default.modules() if isinstance(m, LayerNorm)} == {1e-5}
    with pytest.raises(ValueError, match="ln_eps must be finite and > 0"):
        RunConfig(arch=arch, ln_eps=0.0)


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
def test_larger_eps_keeps_features_inside_the_ball(eps):
    """‖LN(z)‖ = √d·s/√(s² + ε) < √d for any ε > 0 (THEORY §2, §3): the features stay in the ball
    the UFM lower bound is lifted from, whatever the ε."""
    model, data = _model("t11", "post", "cls", "image", ln_eps=eps)
    with torch.no_grad():
        h = model.features(_x(data)).double()
    norms = h.norm(dim=1) / math.sqrt(WIDTH)
    assert (norms < 1).all() and h.mean(1).abs().max() < 1e-6
    if eps >= 1e-2:
        assert norms.min() < 1 - eps / 4  # ε visibly shrinks them


@pytest.mark.parametrize("readout", ["cls", "last", "mean"])
@pytest.mark.parametrize("kind", ["image", "text"])
def test_depth0_transformer_at_each_readout(readout, kind):
    """Depth 0: the feature is the readout of LN(embedding + positions); a CLS feature cannot
    depend on the input, the last and mean features do."""
    data = _dataset(kind)
    cfg = RunConfig(arch="t11", depth=0, width=WIDTH, readout=readout, patch_size=4)
    torch.manual_seed(0)
    model = build_model(cfg, data)
    assert len(model.blocks) == 0
    with torch.no_grad():
        h = model.features(_x(data)).double()
    assert h.shape == (len(data.x_train), WIDTH)
    # on the sphere up to ε/s²: the CLS token starts at 0.02·N(0, 1), a spread of ~0.02, where
    # LN's ε = 1e-5 already shrinks the norm by ~1%
    norms = h.norm(dim=1) / math.sqrt(WIDTH)
    assert (norms <= 1).all() and (norms > 0.95).all()
    spread = (h - h[0]).abs().max()
    assert (spread < 1e-6) if readout == "cls" else (spread > 1e-3)
