"""Tests of reduction.collect: per-layer metrics through forward hooks, against features captured
by hand and fed to collapse_metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deepnet
from reduction import collapse_metrics
from reduction.collect import collect

pytestmark = pytest.mark.unit

torch.set_num_threads(1)

# metrics that do not involve the classifier, and those that do (row key -> collapse_metrics key)
MOMENT_KEYS = [
    "n_samples", "tr_sigma_w", "tr_sigma_b", "nc1", "nc1_papyan", "cdnv", "nc2_means",
    "nc2_means_ortho", "equinorm_means", "equiangularity_means",
]  # fmt: skip
W_MAP = {
    "nc2_W": "nc2", "nc2_W_ortho": "nc2_ortho", "equinorm_W": "equinorm_W",
    "equiangularity_W": "equiangularity_W", "nc3": "nc3", "nc3_papyan": "nc3_papyan",
    "self_duality": "self_duality", "nc4": "nc4", "nc4_agreement": "nc4_agreement",
}  # fmt: skip
W_KEYS = list(W_MAP)


def assert_row_matches(row, want, keys, rtol=1e-9):
    """Row values against collapse_metrics' (W-based keys renamed), or another row's."""
    for k in keys:
        ref = want[k] if k in want else want[W_MAP[k]]
        assert row[k] == pytest.approx(ref, rel=rtol, abs=1e-12), (row["layer"], k)
    # a row's nc2 is its class means' own geometry
    if "nc2_means" in keys and "layer" not in want:
        assert row["nc2"] == pytest.approx(want["nc2_means"], rel=rtol, abs=1e-12)


def assert_no_classifier(row):
    assert row["classifier"] is False and all(row[k] is None for k in W_KEYS), row["layer"]


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


class SmallCNN(nn.Module):
    def __init__(self, K=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, K)

    def forward(self, x):
        h = self.flat(self.pool(self.conv2(self.act(self.conv1(x)))))
        return self.fc(self.drop(h))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=11, T=5, d=8, K=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(T, d))
        self.encoder = nn.TransformerEncoderLayer(
            d, nhead=2, dim_feedforward=16, dropout=0.2, batch_first=True
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, K)

    def forward(self, tokens):
        return self.head(self.norm(self.encoder(self.embed(tokens) + self.pos))[:, 0])


def image_data(seed=0, N=61, K=3, side=6):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    x = torch.randn(N, 1, side, side, generator=g) + y[:, None, None, None].float()
    return x, y


def test_small_cnn_matches_hand_captured_features():
    torch.manual_seed(0)
    model = SmallCNN().double()  # float64: hand and hooked features agree to rounding
    x, y = image_data()
    x = x.double()
    model.train()  # collect must switch to eval (dropout off) and restore this afterwards
    rows = collect(
        model, batches(x, y, 16), ["conv1", "conv2", "flat"], pool="mean", classifier="fc"
    )
    assert model.training and model.drop.training
    with torch.no_grad():
        model.eval()
        c1 = model.conv1(x)
        c2 = model.conv2(model.act(c1))
        feat = model.flat(model.pool(c2))
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "flat"]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["dim"] for r in rows] == [4, 6, 6]
    assert all(r["n"] == len(y) for r in rows)
    # conv1 does not feed the classifier: its own metrics match by hand, W's are None
    ref1 = collapse_metrics(c1.mean(dim=(2, 3)), y, torch.randn(3, 4))  # W irrelevant here
    assert_row_matches(rows[0], ref1, MOMENT_KEYS)
    assert_no_classifier(rows[0])
    # conv2 mean-pooled is exactly what fc reads (AdaptiveAvgPool2d(1), flatten, dropout off),
    # like the flattened pooled output: the classifier applies to both, and only to them
    assert_row_matches(
        rows[1], collapse_metrics(c2.mean(dim=(2, 3)), y, W, b), MOMENT_KEYS + W_KEYS
    )
    assert_row_matches(rows[2], collapse_metrics(feat, y, W, b), MOMENT_KEYS + W_KEYS)
    assert 0.0 <= rows[2]["nc4"] <= 1.0 and not math.isnan(rows[2]["nc3"])
    # pool="flatten" on a conv output: (N, C, H, W) → (N, C·H·W)
    (row,) = collect(model, batches(x, y, 25), ["conv2"], num_classes=3)
    assert row["dim"] == 6 * 36
    assert_row_matches(row, collapse_metrics(c2.flatten(1), y, torch.randn(3, 216)), MOMENT_KEYS)


def test_tiny_transformer_mean_and_cls_pooling_with_mapping_batches():
    torch.manual_seed(1)
    model = TinyTransformer().double()
    N, K = 45, 3
    y = torch.arange(N) % K
    tokens = torch.randint(0, 11, (N, 5))
    tokens[:, 0] = y  # the first token carries the class
    loader = [{"input": tokens[i : i + 10], "label": y[i : i + 10]} for i in range(0, N, 10)]
    model.train()
    enc_mean, norm_cls = collect(model, loader, ["encoder"], pool="mean", num_classes=K) + collect(
        model, loader, ["norm"], pool="cls", classifier="head"
    )
    assert model.training and model.encoder.training
    model.eval()
    with torch.no_grad():
        h = model.encoder(model.embed(tokens) + model.pos)
        feat = model.norm(h)[:, 0]
    assert_row_matches(enc_mean, collapse_metrics(h.mean(dim=1), y, torch.randn(K, 8)), MOMENT_KEYS)
    W, b = model.head.weight.detach(), model.head.bias.detach()
    assert_row_matches(norm_cls, collapse_metrics(feat, y, W, b), MOMENT_KEYS + W_KEYS)
    # an explicit (W, b) pair gives the same row as the module name
    (pair,) = collect(model, loader, ["norm"], pool="cls", classifier=(W, b))
    assert_row_matches(pair, norm_cls, MOMENT_KEYS + W_KEYS, rtol=1e-14)
    # "x"/"y" keys and the inferred K (no classifier, no num_classes) agree too
    xy = [{"x": d["input"], "y": d["label"]} for d in loader]
    (inferred,) = collect(model, xy, "encoder", pool="mean")
    assert_row_matches(inferred, enc_mean, MOMENT_KEYS, rtol=1e-14)


def test_deepnet_resnet_every_layernorm_against_hand_hooks_and_features():
    torch.manual_seed(2)
    cfg = deepnet.ResNetConfig(input_dim=36, num_classes=3, width=10, depth=3)
    model = deepnet.ResNet(cfg).double()  # float64: batching cannot change the rounding
    x, y = image_data(seed=2, N=48)
    x = x.double()
    # every LayerNorm output (the residual stream after each block), found by type, not by name
    names = [n for n, m in model.named_modules() if isinstance(m, deepnet.LayerNorm)]
    assert len(names) >= 4
    rows = collect(model, batches(x, y, 20), names, classifier="classifier")
    hand: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    handles = [
        mods[n].register_forward_hook(lambda _m, _i, out, n=n: hand[n].append(out)) for n in names
    ]
    with torch.no_grad():
        model.features(x)
    for h in handles:
        h.remove()
    W = model.classifier.weight.detach()
    for row, n in zip(rows, names):
        assert len(hand[n]) == 1
        assert_row_matches(row, collapse_metrics(hand[n][0], y, W), MOMENT_KEYS)
    # the classifier reads the last LayerNorm's output, and only that row carries its metrics,
    # although every LayerNorm output has the classifier's width
    assert [r["classifier"] for r in rows] == [False] * (len(names) - 1) + [True]
    for row in rows[:-1]:
        assert_no_classifier(row)
    # the last LayerNorm output is the model's feature
    with torch.no_grad():
        final = collapse_metrics(model.features(x), y, W)
    assert_row_matches(rows[-1], final, MOMENT_KEYS + W_KEYS)


def test_hooks_removed_and_flags_restored_even_on_error():
    model = SmallCNN()
    model.train()
    model.conv2.eval()  # a mixed state must come back as it was
    x, y = image_data()
    loader = [*batches(x, y, 20), (x[:5, :, :4, :4], y[:5])]  # last batch: smaller images
    with pytest.raises(ValueError, match=r"layer 'conv1'.*width 64.*width 144"):
        collect(model, loader, ["conv1"], num_classes=3)
    assert model.training and not model.conv2.training and model.conv1.training
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_input_messages():
    model = SmallCNN()
    x, y = image_data()
    good = batches(x, y, 20)
    with pytest.raises(ValueError, match=r"no module named 'conv9'.*available: conv1, act, conv2"):
        collect(model, good, ["conv1", "conv9"])
    with pytest.raises(ValueError, match="no labels"):
        collect(model, [x[:10], x[10:20]], ["conv1"], num_classes=3)
    with pytest.raises(ValueError, match="no labels"):
        collect(model, [(x[:10], None)], ["conv1"], num_classes=3)
    with pytest.raises(ValueError, match="no labels"):
        collect(model, [{"x": x[:10]}], ["conv1"], num_classes=3)
    with pytest.raises(ValueError, match="no labels"):
        collect(model, [(x[:10],)], ["conv1"], num_classes=3)
    with pytest.raises(ValueError, match="no batches"):
        collect(model, [], ["conv1"], num_classes=3)
    with pytest.raises(ValueError, match="pool must be one of"):
        collect(model, good, ["conv1"], pool="max")
    with pytest.raises(ValueError, match="pool='cls'"):
        collect(model, good, ["conv1"], pool="cls", num_classes=3)
    with pytest.raises(ValueError, match="classifier 'head'"):
        collect(model, good, ["conv1"], classifier="head")
    with pytest.raises(ValueError, match="classifier_layer="):
        collect(model, good, ["conv2", "flat"], pool="mean", classifier=model.fc.weight)
    with pytest.raises(ValueError, match="not one of layers"):
        collect(model, good, ["flat"], classifier="fc", classifier_layer="conv2")
    with pytest.raises(ValueError, match="has width 4"):
        collect(model, good, ["conv1"], pool="mean", classifier="fc", classifier_layer="conv1")
    with pytest.raises(ValueError, match=r"labels must be integers 0\.\.K−1, got strings"):
        collect(model, [(x[:10], ["a"] * 10)], ["flat"], num_classes=3)
    with pytest.raises(ValueError, match="no 2-D weight"):
        collect(model, good, ["conv1"], classifier="act")
    with pytest.raises(ValueError, match="num_classes = 4"):
        collect(model, good, ["flat"], classifier="fc", num_classes=4)
    with pytest.raises(ValueError, match="one-shot iterator"):
        collect(model, iter(good), ["flat"], classifier="fc")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        collect(model, good, ["flat"], num_classes=2)  # labels go up to 2
    # a one-shot iterator is fine when one pass suffices
    (row,) = collect(model, iter(good), ["flat"], num_classes=3)
    assert row["n"] == len(y)
    # the classifier reads no hooked layer's output: warned, and no row carries its metrics
    with pytest.warns(RuntimeWarning, match="equals no hooked layer"):
        (row,) = collect(model, good, ["conv1"], pool="mean", classifier="fc")
    assert_no_classifier(row)
    assert math.isfinite(row["nc1"])


def test_layer_running_twice_is_refused_and_a_sequence_first_output_is_pooled_by_type():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))

    x, y = torch.randn(12, 4), torch.arange(12) % 2
    with pytest.raises(ValueError, match="ran 2 times"):
        collect(Twice(), [(x, y)], ["lin"], num_classes=2)
    torch.manual_seed(4)
    enc = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0).double()  # (T, N, d): batch second
    seq = torch.randn(3, 12, 4, dtype=torch.float64)
    (row,) = collect(enc, [(seq, y)], [""], pool="mean", num_classes=2)
    with torch.no_grad():
        want = collapse_metrics(enc(seq).mean(dim=0), y, torch.randn(2, 4))
    assert row["dim"] == 4
    assert_row_matches(row, want, MOMENT_KEYS)
    # told the wrong layout, the batch is not first: refused with a hint
    with pytest.raises(ValueError, match="sequence_first"):
        collect(enc, [(seq, y)], [""], pool="mean", layout="channels_last", num_classes=2)


class ConvNet1d(nn.Module):
    """Conv1d features of width 5 = the classifier's width, but the classifier reads a ReLU of
    a different conv: the case where a width match must not apply W."""

    def __init__(self, K=3):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 5, 3, padding=1)
        self.conv2 = nn.Conv1d(5, 5, 3, padding=1)
        self.fc = nn.Linear(5, K)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=2))


def seq_data(seed=0, N=60, K=3, C=2, L=7):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    x = torch.randn(N, C, L, generator=g, dtype=torch.float64) + y[:, None, None].double()
    return x, y


def test_w_applies_only_to_the_layer_feeding_the_classifier_and_conv1d_is_channels_first():
    torch.manual_seed(5)
    model = ConvNet1d().double()
    x, y = seq_data()
    loader = batches(x, y, 16)
    with pytest.warns(RuntimeWarning, match="equals no hooked layer"):
        rows, feats = collect(
            model, loader, ["conv1", "conv2"], pool="mean", classifier="fc", return_features=True
        )
    with torch.no_grad():
        c1 = model.conv1(x)
        c2 = model.conv2(torch.relu(c1))
    # (N, C, L) is averaged over its length L, never over its channels
    assert [r["dim"] for r in rows] == [5, 5]
    assert torch.allclose(torch.as_tensor(feats["features"]["conv1"]), c1.mean(dim=2))
    assert (feats["labels"] == y.numpy()).all()
    # both layers have the classifier's width, but fc reads relu(conv2) averaged: neither is it
    for row, c in zip(rows, (c1, c2)):
        assert_row_matches(row, collapse_metrics(c.mean(dim=2), y, torch.randn(3, 5)), MOMENT_KEYS)
    for row in rows:
        assert_no_classifier(row)
    # the layer that feeds it is not a module here (a functional relu + mean); named, W applies
    # to it and only to it
    rows = collect(model, loader, ["conv1", "conv2"], pool="mean", classifier="fc",
                   classifier_layer="conv2")  # fmt: skip
    assert_no_classifier(rows[0])
    W, b = model.fc.weight.detach(), model.fc.bias.detach()
    assert_row_matches(rows[1], collapse_metrics(c2.mean(dim=2), y, W, b), MOMENT_KEYS + W_KEYS)


def test_a_module_of_unknown_layout_needs_layout_and_then_pools_as_told():
    class Block(nn.Module):  # (N, T, d) out of a custom module: no layout can be read off it
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x)

    torch.manual_seed(6)
    net = Net().double()
    x = torch.randn(30, 6, 4, dtype=torch.float64)
    y = torch.arange(30) % 3
    with pytest.raises(ValueError, match="cannot tell the layout"):
        collect(net, [(x, y)], ["block"], pool="mean", num_classes=3)
    (tokens,) = collect(net, [(x, y)], ["block"], pool="mean", layout="channels_last",
                        num_classes=3)  # fmt: skip
    (chans,) = collect(net, [(x, y)], ["block"], pool="mean", layout={"block": "channels_first"},
                       num_classes=3)  # fmt: skip
    with torch.no_grad():
        out = net.block(x)
    assert tokens["dim"] == 4 and chans["dim"] == 6
    assert_row_matches(tokens, collapse_metrics(out.mean(dim=1), y, torch.randn(3, 4)), MOMENT_KEYS)
    assert_row_matches(chans, collapse_metrics(out.mean(dim=2), y, torch.randn(3, 6)), MOMENT_KEYS)
    # flatten needs no layout
    (flat,) = collect(net, [(x, y)], ["block"], num_classes=3)
    assert flat["dim"] == 24


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(3)
    model = SmallCNN().double()
    x, y = image_data(seed=3)
    x = x.double()
    cpu = collect(model, batches(x, y, 16), ["conv2", "flat"], pool="mean", classifier="fc")
    model.cuda()
    gpu = collect(model, batches(x, y, 16), ["conv2", "flat"], pool="mean", classifier="fc")
    assert next(model.parameters()).device.type == "cuda"  # left where it was
    for a, b in zip(gpu, cpu):
        assert_row_matches(a, b, MOMENT_KEYS + W_KEYS, rtol=1e-8)
    with pytest.raises(ValueError, match="move the model"):
        collect(model, batches(x, y, 16), ["flat"], device="cpu", num_classes=3)


def test_distance_to_optimum_of_a_model_in_one_call_equals_the_array_call():
    from reduction import distance_to_optimum

    torch.manual_seed(7)
    model = TinyTransformer().double()
    N, K = 45, 3
    y = torch.arange(N) % K
    tokens = torch.randint(0, 11, (N, 5))
    tokens[:, 0] = y
    loader = [(tokens[i : i + 10], y[i : i + 10]) for i in range(0, N, 10)]
    got = distance_to_optimum(model=model, loader=loader, classifier="head", lam=5e-3)
    model.eval()
    with torch.no_grad():
        feat = model.norm(model.encoder(model.embed(tokens) + model.pos))[:, 0]
    W, b = model.head.weight.detach(), model.head.bias.detach()
    want = distance_to_optimum(feat, y, W, b, lam=5e-3)
    assert got.keys() == want.keys()
    for k in ("optimum_value", "gap", "nc2_ufm", "nc3_ufm", "procrustes_W"):
        assert got[k] == pytest.approx(want[k], rel=1e-10), k
    assert got["problem"]["bias"] == "free"  # the head has a bias: the UFM's bias is free
    # the same through a named layer: the pooled output of "norm" (token 0) is what head reads
    via_layer = distance_to_optimum(model=model, loader=loader, classifier="head", layer="norm",
                                    pool="cls", lam=5e-3)
    assert via_layer["gap"] == pytest.approx(want["gap"], rel=1e-10)
    # the printed report leads with the headline numbers and says what λ is
    text = str(got)
    assert text.index("gap") < text.index("nc2_ufm") < text.index("w_norm_ratio")
    assert "weight_decay" in text and "procrustes_W" not in text
    assert "procrustes_W" in got.table()
    with pytest.raises(ValueError, match="not both"):
        distance_to_optimum(feat, y, W, model=model, loader=loader, classifier="head", lam=5e-3)
    with pytest.raises(ValueError, match="needs loader= and classifier="):
        distance_to_optimum(model=model, lam=5e-3)


def test_a_sequential_has_the_layout_of_its_last_layer_through_elementwise_modules():
    from reduction.collect import module_layout

    assert module_layout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))) == (
        "channels_first")
    assert module_layout(nn.Sequential(nn.Conv1d(1, 2, 3), nn.GELU(), nn.Dropout())) == (
        "channels_first")
    assert module_layout(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == "channels_last"
    # a layer that changes the layout (Flatten) or one unknown: no layout, no guess
    assert module_layout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) is None
    assert module_layout(nn.ReLU()) is None
