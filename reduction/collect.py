"""Collapse metrics of any torch model, layer by layer, through forward hooks (docs/THEORY.md §6).

:func:`collect` registers a forward hook on each named module, runs the model over a loader and
streams every hooked output, pooled to one row per sample, into its own
:class:`~reduction.metrics.CollapseAccumulator` (float64 statistics on the model's device). The
classifier's W applies to one layer only: the one that feeds the classifier (found by hooking the
classifier module's input and matching it with the pooled outputs, or named ``classifier_layer``);
a second pass over the loader gives that layer's nearest-class-mean rule (nc4). How an output is
pooled to one row per sample follows its layout, taken from the module's type (convolutions and
their norms and pools: channels first; linear maps, LayerNorm, embeddings and batch-first
transformer layers: channels last) or from ``layout``; never guessed from the number of
dimensions. :func:`classifier_features` returns the features the classifier reads, with its W and
b (what ``reduction.distance_to_optimum(model=...)`` measures). The model is only read: it runs in
eval mode under ``torch.no_grad()``, every module's training flag is restored and every hook
removed afterwards, whatever happens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from deepcollapse.output import missing_extra

try:
    import torch
except ImportError:  # the [torch] extra is not installed: one line naming it
    raise missing_extra("torch", "torch", "reduction.collect") from None
from torch import nn

from .metrics import CollapseAccumulator, _as_tensor

__all__ = ["LAYOUTS", "POOLS", "W_METRICS", "classifier_features", "collect"]

Pool = Literal["flatten", "mean", "cls"]
POOLS = ("flatten", "mean", "cls")
#: layouts of a hooked output: channels_first (N, C, L) / (N, C, H, W) (convolutions);
#: channels_last (N, T, d) / (N, H, W, C) (tokens; linear maps act on the last dim);
#: sequence_first (T, N, d) (transformer layers with batch_first=False)
LAYOUTS = ("channels_first", "channels_last", "sequence_first")
Layout = Literal["channels_first", "channels_last", "sequence_first"]
#: the keys of a collect row that use the classifier: None on every row but the classifier's
W_METRICS = (
    "nc2_W", "nc2_W_ortho", "equinorm_W", "equiangularity_W", "nc3", "nc3_papyan",
    "self_duality", "nc4", "nc4_agreement",
)  # fmt: skip
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.GroupNorm,
    nn.Upsample,
)  # fmt: skip
_CHANNELS_LAST = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding,
                  getattr(nn, "RMSNorm", nn.LayerNorm))  # RMSNorm: torch ≥ 2.4
#: modules that act entry by entry: they keep the layout of their input
_ELEMENTWISE = (nn.modules.activation.ReLU, nn.modules.activation.GELU,
                nn.modules.activation.SiLU, nn.modules.activation.Tanh,
                nn.modules.activation.Sigmoid, nn.modules.activation.LeakyReLU,
                nn.modules.activation.ELU, nn.modules.dropout._DropoutNd, nn.Identity)
_TRANSFORMER = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
                nn.TransformerDecoder, nn.Transformer, nn.MultiheadAttention)
_X_KEYS = ("x", "input", "inputs")
_Y_KEYS = ("y", "label", "labels")


# --------------------------------------------------------------------------------------------------
# batches, inputs, pooling


def _split_batch(batch: Any, index: int) -> tuple[Any, Any]:
    """(x, y) from a loader item: a 2-tuple/list, or a mapping with x/input(s) and y/label(s)."""
    if isinstance(batch, Mapping):
        xk = next((k for k in _X_KEYS if k in batch), None)
        yk = next((k for k in _Y_KEYS if k in batch), None)
        if yk is None or batch[yk] is None:
            raise ValueError(
                f"the loader yields no labels: batch {index} is a mapping with keys "
                f"{sorted(map(str, batch))}, expected one of {_Y_KEYS} for the labels"
            )
        if xk is None:
            raise ValueError(
                f"batch {index} is a mapping without inputs: expected one of {_X_KEYS}, got keys "
                f"{sorted(map(str, batch))}"
            )
        return batch[xk], batch[yk]
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and batch[1] is not None:
        return batch[0], batch[1]
    what = (
        f"a {type(batch).__name__} of length {len(batch)}"
        if isinstance(batch, (tuple, list))
        else f"a {type(batch).__name__}"
    )
    raise ValueError(
        f"the loader yields no labels: batch {index} is {what}; collect needs (inputs, labels) "
        f"pairs, or mappings with keys {_X_KEYS[0]!r}/{_Y_KEYS[0]!r} or "
        f"{_X_KEYS[1]!r}/{_Y_KEYS[1]!r}"
    )


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x).to(device)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _run(model: nn.Module, x: Any) -> None:
    """model(x) for a tensor; model(*x) for a tuple/list; model(**x) for a mapping."""
    if isinstance(x, Mapping):
        model(**x)
    elif isinstance(x, (tuple, list)):
        model(*x)
    else:
        model(x)


def module_layout(module: nn.Module) -> Layout | None:
    """The layout of ``module``'s output from its type (None: unknown). A module may declare its
    own with an attribute ``collapse_layout`` (deepnet's LayerNorm and transformer blocks do); an
    ``nn.Sequential`` has the layout of its last layer that is not elementwise (an activation,
    dropout)."""
    declared = getattr(module, "collapse_layout", None)
    if declared is not None:
        return declared
    if isinstance(module, _CHANNELS_FIRST):
        return "channels_first"
    if isinstance(module, _TRANSFORMER):
        return "channels_last" if _batch_first(module) else "sequence_first"
    if isinstance(module, _CHANNELS_LAST):
        return "channels_last"
    if isinstance(module, nn.Sequential):
        # the output is its last layer's, through any elementwise modules after it
        for child in reversed(list(module)):
            layout = module_layout(child)
            if layout is not None or not isinstance(child, _ELEMENTWISE):
                return layout
    return None


def _batch_first(module: nn.Module) -> bool:
    """torch's transformer modules keep ``batch_first`` on their attention (or first layer)."""
    for m in (module, getattr(module, "self_attn", None), getattr(module, "encoder", None)):
        if m is not None and hasattr(m, "batch_first"):
            return bool(m.batch_first)
    layers = getattr(module, "layers", None)
    if layers is not None and len(layers):
        return _batch_first(layers[0])
    enc = getattr(module, "encoder", None)
    return _batch_first(enc) if enc is not None else False


def _pool(out: torch.Tensor, pool: str, name: str, layout: str | None) -> torch.Tensor:
    """One row per sample: (N, ...) → (N, d), following ``layout`` (THEORY §6 is per sample).

    "flatten": all non-batch dims; "mean": the mean over the positions (channels_first: the dims
    after C; channels_last: the dims between N and the last; sequence_first: dim 0), in float64
    (half-precision activations would lose digits in the sum); "cls": the first token of
    (N, T, d) (channels_last) or (T, N, d) (sequence_first). An (N, d) output is used as is.
    """
    if out.ndim < 2:
        raise ValueError(
            f"layer {name!r}: output of shape {tuple(out.shape)} has no feature dimension; "
            "expected (N, ...) with the batch first"
        )
    if layout == "sequence_first":
        if out.ndim != 3:
            raise ValueError(f"layer {name!r}: layout 'sequence_first' expects (T, N, d), got "
                             f"{tuple(out.shape)}")
        out = out.transpose(0, 1)  # (N, T, d)
        layout = "channels_last"
    if out.ndim == 2:
        return out if pool != "cls" else _cls_error(out, name)
    if pool == "flatten":
        return out.reshape(out.shape[0], -1)
    if layout is None:
        raise ValueError(
            f"layer {name!r}: cannot tell the layout of its output {tuple(out.shape)} from the "
            "module's type; pass layout='channels_first' ((N, C, L), (N, C, H, W): convolutions), "
            "'channels_last' ((N, T, d): tokens) or 'sequence_first' ((T, N, d)), or a dict "
            "{layer: layout}"
        )
    if pool == "mean":
        if layout == "channels_first":
            return out.mean(dim=tuple(range(2, out.ndim)), dtype=torch.float64)
        return out.mean(dim=tuple(range(1, out.ndim - 1)), dtype=torch.float64)
    if layout != "channels_last" or out.ndim != 3:
        return _cls_error(out, name)
    return out[:, 0, :]


def _cls_error(out: torch.Tensor, name: str) -> torch.Tensor:
    raise ValueError(
        f"layer {name!r}: pool='cls' takes token 0 of an (N, T, d) token output, got shape "
        f"{tuple(out.shape)}"
    )


def _layouts(layout: Any, names: Sequence[str], modules: Mapping[str, nn.Module]) -> dict:
    """{layer: layout or None} from the argument (one layout, a dict, or None: by module type)."""
    if layout is None:
        given: dict[str, Any] = {}
    elif isinstance(layout, str):
        given = dict.fromkeys(names, layout)
    elif isinstance(layout, Mapping):
        unknown = sorted(set(layout) - set(modules))
        if unknown:
            raise ValueError(f"layout names modules that are not in the model: {unknown}")
        given = dict(layout)
    else:
        raise ValueError(f"layout must be None, one of {LAYOUTS} or a dict, got {layout!r}")
    bad = [v for v in given.values() if v not in LAYOUTS]
    if bad:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {bad[0]!r}")
    return {n: given.get(n, module_layout(modules[n])) for n in names}


def _output_tensor(out: Any, name: str) -> torch.Tensor:
    """The hooked output, or the first tensor of a tuple/list output (attention modules)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(
        f"layer {name!r} returns {type(out).__name__}, not a tensor (or a tuple starting with one)"
    )


def _classifier_arg(
    classifier: Any, modules: Mapping[str, nn.Module]
) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None, str | None]:
    """(W, b, description, module name or None) from a module name, a (W, b) pair or a bare W;
    all None without a classifier."""
    if classifier is None:
        return None, None, None, None
    module_name = None
    if isinstance(classifier, str):
        if classifier not in modules:
            raise ValueError(
                f"classifier {classifier!r} is not a module of the model; available: "
                f"{', '.join(n for n in modules if n)}"
            )
        mod = modules[classifier]
        W = getattr(mod, "weight", None)
        if not isinstance(W, torch.Tensor) or W.ndim != 2:
            raise ValueError(
                f"classifier module {classifier!r} has no 2-D weight (K, d); got "
                f"{None if W is None else tuple(getattr(W, 'shape', ()))}"
            )
        b = getattr(mod, "bias", None)
        b = b if isinstance(b, torch.Tensor) else None
        desc = module_name = classifier
    elif isinstance(classifier, (tuple, list)) and len(classifier) == 2:
        W, b = classifier
        desc = "given (W, b)"
    else:
        W, b, desc = classifier, None, "given W"
    W = _as_tensor(W, "classifier W").detach().to(torch.float64).cpu()
    if W.ndim != 2:
        raise ValueError(f"classifier W must be 2-D (K, d), got shape {tuple(W.shape)}")
    if b is not None:
        b = _as_tensor(b, "classifier b").detach().to(torch.float64).cpu().reshape(-1)
    return W, b, desc, module_name


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# collect


def _matches(h: torch.Tensor, x: torch.Tensor) -> bool:
    """Is the pooled output h the classifier's input x (same shape, equal to rounding)?"""
    if h.shape != x.shape:
        return False
    a, c = h.detach().to(torch.float64), x.detach().to(torch.float64)
    scale = float(c.abs().max()) if c.numel() else 0.0
    return bool(torch.allclose(a, c, rtol=1e-5, atol=1e-6 * scale))


def collect(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str],
    *,
    device: torch.device | str | None = None,
    pool: Pool = "flatten",
    layout: Layout | Mapping[str, Layout] | None = None,
    classifier: Any = None,
    classifier_layer: str | None = None,
    num_classes: int | None = None,
    global_mean: Literal["sample", "class"] = "sample",
    return_features: bool = False,
) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
    """Collapse metrics of the outputs of the named modules of ``model`` over ``loader``.

    ``layers``: names from ``dict(model.named_modules())`` (one name or a sequence); an unknown
    name raises ValueError listing the available ones. ``loader``: re-iterable (a DataLoader or
    a list; it is iterated twice when a classifier is used, three times when K must be inferred)
    yielding (inputs, labels) pairs or mappings with "x"/"y" ("input"/"label") keys; inputs are
    moved to ``device`` and passed as model(x), model(*x) for a tuple, model(**x) for a mapping.
    ``device``: where inputs go and the statistics live (``None``: the model's device; the model
    must already be there).

    ``pool``: how an output becomes one row per sample: "flatten" (N, ...) → (N, prod ...);
    "mean" averages over the positions, in float64; "cls" takes token 0 of a token output. An
    (N, d) output is used as is. ``layout`` says where the positions are: "channels_first"
    ((N, C, L), (N, C, H, W): averaged over L or H, W), "channels_last" ((N, T, d): averaged over
    T) or "sequence_first" ((T, N, d)); one for all layers or a dict {layer: layout}. By default
    it comes from the module's type (convolutions, batch norms, pools: channels_first; Linear,
    LayerNorm, Embedding: channels_last; transformer layers by their ``batch_first``); an output
    with positions whose layout is unknown raises ValueError asking for it.

    ``classifier``: a module name whose ``weight`` (K, d) and ``bias`` are the classifier, a
    (W, b) pair (b may be None) or a bare W. It applies to the layer that feeds it and to no
    other: ``classifier_layer`` (one of ``layers``) names it; otherwise, for a module name, the
    classifier's input is hooked on the first batch and W applies to every hooked layer whose
    pooled output equals it (to rounding; a RuntimeWarning if none does); for a bare W or
    (W, b) with several layers, ``classifier_layer`` is required. ``num_classes``: K; default the
    classifier's rows, else a labels-only pass over the loader (max label + 1).

    Returns one row per layer, in the order given: "layer", "index", "dim", "n", "classifier"
    (whether W applied), the layer's own metrics (nc1, nc1_papyan, cdnv, nc2 = the class means
    against the simplex ETF (= nc2_means), nc2_means_ortho, equinorm_means, equiangularity_means,
    tr_sigma_w, tr_sigma_b, n_samples) and the classifier's (:data:`W_METRICS`: nc2_W and
    nc2_W_ortho (W against the ETF / an orthogonal frame), equinorm_W, equiangularity_W, nc3,
    nc3_papyan, self_duality, nc4, nc4_agreement), which are None on every row but the
    classifier's (THEORY §6). With ``return_features``: ``(rows, {"labels": y (N,),
    "features": {layer: H (N, d)}})``, the pooled features as numpy arrays on the CPU.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"layers must be a non-empty sequence of module names, got {layers!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"layers must not repeat a name, got {names}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(
            f"no module named {', '.join(map(repr, unknown))} in the model; available: "
            f"{', '.join(n for n in modules if n)}"
        )
    layouts = _layouts(layout, names, modules)
    dev = _device(model, device)
    W, b, cls_desc, cls_module = _classifier_arg(classifier, modules)
    if classifier_layer is not None:
        if W is None:
            raise ValueError("classifier_layer is given but no classifier")
        if classifier_layer not in names:
            raise ValueError(
                f"classifier_layer {classifier_layer!r} is not one of layers ({', '.join(names)})"
            )
    elif W is not None and cls_module is None:
        if len(names) > 1:
            raise ValueError(
                f"classifier is {cls_desc}, so collect cannot tell which layer feeds it: pass "
                f"classifier_layer= (one of {', '.join(names)}), or the classifier module's name"
            )
        classifier_layer = names[0]
    if isinstance(loader, Iterator) and (W is not None or num_classes is None):
        raise ValueError(
            "loader is a one-shot iterator (e.g. a generator) but collect iterates it more than "
            "once (nc4 pass with a classifier, or inferring K); pass a list or a DataLoader, or "
            "num_classes and no classifier"
        )
    K = _num_classes(num_classes, W, loader)

    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    cls_input: list[torch.Tensor] = []
    feeding: list[str] | None = None if classifier_layer is None else [classifier_layer]

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name].append(_pool(_output_tensor(output, name), pool, name, layouts[name]))

        return hook

    def pre_hook(_module: nn.Module, inputs: Any) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor):
            cls_input.append(inputs[0])

    flags = {m: m.training for m in model.modules()}
    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    if W is not None and feeding is None and cls_module is not None:
        handles.append(modules[cls_module].register_forward_pre_hook(pre_hook))
    accs: dict[str, CollapseAccumulator] = {}
    kept: dict[str, list[torch.Tensor]] | None = {n: [] for n in names} if return_features else None
    labels: list[torch.Tensor] = []

    def choose(pooled: dict[str, torch.Tensor]) -> list[str]:
        """The layers W applies to, decided on the first batch."""
        nonlocal feeding
        if feeding is None:
            x = cls_input[0] if cls_input else None
            feeding = [n for n in names if x is not None and _matches(pooled[n], x)]
            if not feeding:
                warnings.warn(
                    f"the classifier {cls_desc!r} reads an input of shape "
                    f"{None if x is None else tuple(x.shape)} that equals no hooked layer's "
                    f"pooled output ({', '.join(f'{n}: {tuple(pooled[n].shape)}' for n in names)})"
                    ": its metrics are None on every row; hook the module that feeds it, change "
                    "pool, or pass classifier_layer=",
                    RuntimeWarning,
                    stacklevel=4,  # choose → _pass → collect → the caller
                )
        for n in feeding:
            if W is not None and pooled[n].shape[1] != W.shape[1]:
                raise ValueError(
                    f"classifier_layer {n!r} has width {pooled[n].shape[1]} but the classifier "
                    f"W is {tuple(W.shape)}"
                )
        return feeding

    try:
        model.eval()
        with torch.no_grad():
            seen = _pass(model, loader, dev, names, captured, cls_input, accs, K, W, b,
                         global_mean, choose, kept, labels)
            ncm = [n for n in names if accs[n].W is not None]
            if ncm:
                for n in ncm:
                    accs[n].set_class_means()
                _pass(model, loader, dev, ncm, captured, cls_input, accs, K, W, b, global_mean,
                      choose, None, None, ncm=True)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag

    rows = [_row(n, i, accs[n], K, seen) for i, n in enumerate(names)]
    if not return_features:
        return rows
    assert kept is not None
    feats = {
        "labels": torch.cat(labels).cpu().numpy(),
        "features": {n: torch.cat(kept[n]).cpu().numpy() for n in names},
    }
    return rows, feats


def _row(name: str, index: int, acc: CollapseAccumulator, K: int, seen: int) -> dict[str, Any]:
    """One row of :func:`collect`: the layer's own metrics, and W's only where W applied."""
    has_w = acc.W is not None
    # without a classifier, W = 0 makes every W-based metric NaN (they are replaced by None
    # below) while the moment-based ones are unaffected
    m = acc.compute() if has_w else acc.compute(np.zeros((K, acc.dim)))
    row: dict[str, Any] = {"layer": name, "index": index, "dim": acc.dim, "n": seen,
                           "classifier": has_w}
    for key in ("n_samples", "tr_sigma_w", "tr_sigma_b", "nc1", "nc1_papyan", "cdnv"):
        row[key] = m[key]
    row["nc2"] = m["nc2_means"]  # the layer's own geometry: its class means against the ETF
    for key in ("nc2_means", "nc2_means_ortho", "equinorm_means", "equiangularity_means"):
        row[key] = m[key]
    w_values = {
        "nc2_W": m["nc2"], "nc2_W_ortho": m["nc2_ortho"], "equinorm_W": m["equinorm_W"],
        "equiangularity_W": m["equiangularity_W"], "nc3": m["nc3"],
        "nc3_papyan": m["nc3_papyan"], "self_duality": m["self_duality"], "nc4": m["nc4"],
        "nc4_agreement": m["nc4_agreement"],
    }  # fmt: skip
    for key in W_METRICS:
        row[key] = w_values[key] if has_w else None
    return row


def _device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    model_dev = _model_device(model)
    dev = model_dev if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if device is not None and any(p.device != dev for p in model.parameters()):
        raise ValueError(
            f"the model's parameters are on {model_dev} but device={dev}; move the model "
            "(model.to(device)) or pass device=None"
        )
    return dev


def _num_classes(num_classes: Any, W: torch.Tensor | None, loader: Iterable[Any]) -> int:
    if num_classes is not None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        K = int(num_classes)
        if W is not None and W.shape[0] != K:
            raise ValueError(f"num_classes = {K} but the classifier has {W.shape[0]} rows")
        return K
    if W is not None:
        return int(W.shape[0])
    return _infer_num_classes(loader)


def _infer_num_classes(loader: Iterable[Any]) -> int:
    """K = max label + 1 from a labels-only pass (the model does not run)."""
    top = -1
    for i, batch in enumerate(loader):
        _, y = _split_batch(batch, i)
        yt = _as_tensor(y, "labels").reshape(-1)
        if yt.numel():
            top = max(top, int(yt.max()))
    if top < 0:
        raise ValueError("the loader yielded no batches (or only empty ones)")
    if top < 1:
        raise ValueError(f"the labels hold one class only (max label {top}): need K >= 2")
    return top + 1


def _pass(
    model: nn.Module,
    loader: Iterable[Any],
    dev: torch.device,
    names: list[str],
    captured: dict[str, list[torch.Tensor]],
    cls_input: list[torch.Tensor],
    accs: dict[str, CollapseAccumulator],
    K: int,
    W: torch.Tensor | None,
    b: torch.Tensor | None,
    global_mean: Literal["sample", "class"],
    choose: Any,
    kept: dict[str, list[torch.Tensor]] | None,
    labels: list[torch.Tensor] | None,
    ncm: bool = False,
) -> int:
    """One pass over the loader: statistics (pass 1) or nearest-class-mean counts (``ncm``).

    Only the layers in ``names`` are recorded; returns the number of samples seen.
    """
    seen = 0
    batches = 0
    for i, batch in enumerate(loader):
        x, y = _split_batch(batch, i)
        for lst in captured.values():
            lst.clear()
        cls_input.clear()
        _run(model, _to_device(x, dev))
        yt = _as_tensor(y, "labels", dev).reshape(-1)
        pooled: dict[str, torch.Tensor] = {}
        for n in names:
            outs = captured[n]
            if len(outs) != 1:
                raise ValueError(
                    f"layer {n!r} ran {len(outs)} times in the forward pass of batch {i}; "
                    "hook a module that runs exactly once per forward"
                )
            h = outs[0]
            if h.shape[0] != yt.shape[0]:
                raise ValueError(
                    f"layer {n!r}: output has {h.shape[0]} rows but batch {i} has "
                    f"{yt.shape[0]} labels (is the batch dimension first? a (T, N, d) output "
                    "needs layout='sequence_first')"
                )
            pooled[n] = h
        if not accs and not ncm:
            use_w = choose(pooled) if W is not None else []
            for n in names:
                accs[n] = CollapseAccumulator(
                    K,
                    pooled[n].shape[1],
                    dev,
                    W=W if n in use_w else None,
                    b=b if n in use_w else None,
                    global_mean=global_mean,
                )
        for n in names:
            h, acc = pooled[n], accs[n]
            if h.shape[1] != acc.dim:
                raise ValueError(
                    f"layer {n!r}: features of width {h.shape[1]} in batch {i}, but width "
                    f"{acc.dim} before; every batch must give the layer the same width (use "
                    "pool='mean' for variable-length sequences)"
                )
            if ncm:
                acc.update_ncm(h, yt)
            else:
                acc.update(h, yt)
                if kept is not None:
                    kept[n].append(h.detach().cpu())
        if labels is not None:
            labels.append(yt.detach().cpu())
        seen += int(yt.shape[0])
        batches += 1
    for lst in captured.values():
        lst.clear()
    cls_input.clear()
    if batches == 0 or seen == 0:
        if ncm:
            raise ValueError(
                "the loader yielded no batches on the second pass (nc4): pass a re-iterable "
                "loader (a DataLoader or a list), not a one-shot iterator"
            )
        raise ValueError("the loader yielded no batches (or only empty ones)")
    return seen


# --------------------------------------------------------------------------------------------------
# the features a classifier reads


def classifier_features(
    model: nn.Module,
    loader: Iterable[Any],
    classifier: str,
    *,
    layer: str | None = None,
    pool: Pool = "flatten",
    layout: Layout | None = None,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(H (N, d), y (N,), W (K, d), b (K,) or None) as float64 numpy: the features the
    classifier module ``classifier`` reads (its input, hooked; or the pooled output of ``layer``)
    over one pass of ``loader``, with its weight and bias. The model runs in eval mode under
    ``torch.no_grad()``; hooks and training flags are restored."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if not isinstance(classifier, str):
        raise ValueError("classifier must be the name of the classifier module (e.g. 'fc')")
    W, b, _, _ = _classifier_arg(classifier, modules)
    assert W is not None
    if layer is not None and layer not in modules:
        raise ValueError(f"no module named {layer!r} in the model; available: "
                         f"{', '.join(n for n in modules if n)}")
    dev = _device(model, device)
    lay = None if layer is None else _layouts(layout, [layer], modules)[layer]
    got: list[torch.Tensor] = []

    def pre_hook(_module: nn.Module, inputs: Any) -> None:
        got.append(inputs[0])

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        got.append(_pool(_output_tensor(output, layer or ""), pool, layer or "", lay))

    handle = (modules[classifier].register_forward_pre_hook(pre_hook) if layer is None
              else modules[layer].register_forward_hook(hook))
    flags = {m: m.training for m in model.modules()}
    feats, ys = [], []
    try:
        model.eval()
        with torch.no_grad():
            for i, batch in enumerate(loader):
                x, y = _split_batch(batch, i)
                got.clear()
                _run(model, _to_device(x, dev))
                if len(got) != 1:
                    raise ValueError(
                        f"{'the classifier' if layer is None else f'layer {layer!r}'} ran "
                        f"{len(got)} times in the forward pass of batch {i}; expected once")
                h = got[0].detach().to(torch.float64)
                yt = _as_tensor(y, "labels").reshape(-1)
                if h.ndim != 2 or h.shape[0] != yt.shape[0]:
                    raise ValueError(
                        f"the features of batch {i} have shape {tuple(h.shape)}, expected "
                        f"({yt.shape[0]}, d): one row per labelled sample")
                feats.append(h.cpu())
                ys.append(yt.cpu())
    finally:
        handle.remove()
        for m, flag in flags.items():
            m.training = flag
    if not feats:
        raise ValueError("the loader yielded no batches")
    H = torch.cat(feats).numpy()
    if H.shape[1] != W.shape[1]:
        raise ValueError(f"the features have width {H.shape[1]} but the classifier W is "
                         f"{tuple(W.shape)}")
    return H, torch.cat(ys).numpy(), W.numpy(), None if b is None else b.numpy()
