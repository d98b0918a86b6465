"""Collapse metrics of any torch model, layer by layer, through forward hooks (docs/THEORY.md §6).

:func:`collect` registers a forward hook on each named module, runs the model over a loader and
streams every hooked output, pooled to one row per sample, into its own
:class:`~reduction.metrics.CollapseAccumulator` (float64 statistics on the model's device). A
second pass over the loader gives the nearest-class-mean rule of nc4 for the layers that have a
classifier. The model is only read: it runs in eval mode under ``torch.no_grad()``, every module's
training flag is restored and every hook removed afterwards, whatever happens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .metrics import CollapseAccumulator, _as_tensor

__all__ = ["POOLS", "collect"]

Pool = Literal["flatten", "mean", "cls"]
POOLS = ("flatten", "mean", "cls")
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


def _pool(out: torch.Tensor, pool: str, name: str) -> torch.Tensor:
    """One row per sample: (N, ...) → (N, d).

    "flatten": all non-batch dims; "mean": (N, d) as is, (N, T, d) → mean over T (tokens),
    (N, C, H, W, ...) → mean over the spatial dims after C; "cls": token 0 of (N, T, d).
    Means are taken in float64 (half-precision activations would lose digits in the sum).
    """
    if out.ndim < 2:
        raise ValueError(
            f"layer {name!r}: output of shape {tuple(out.shape)} has no feature dimension; "
            "expected (N, ...) with the batch first"
        )
    if pool == "flatten":
        return out.reshape(out.shape[0], -1)
    if pool == "mean":
        if out.ndim == 2:
            return out
        if out.ndim == 3:
            return out.mean(dim=1, dtype=torch.float64)
        return out.mean(dim=tuple(range(2, out.ndim)), dtype=torch.float64)
    if out.ndim != 3:
        raise ValueError(
            f"layer {name!r}: pool='cls' takes token 0 of an (N, T, d) output, got shape "
            f"{tuple(out.shape)}"
        )
    return out[:, 0, :]


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
) -> tuple[torch.Tensor | None, torch.Tensor | None, str | None]:
    """(W, b, description) from a module name, a (W, b) pair or a bare W; (None, None, None)."""
    if classifier is None:
        return None, None, None
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
        desc = classifier
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
    return W, b, desc


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# collect


def collect(
    model: nn.Module,
    loader: Iterable[Any],
    layers: str | Sequence[str],
    *,
    device: torch.device | str | None = None,
    pool: Pool = "flatten",
    classifier: Any = None,
    num_classes: int | None = None,
    global_mean: Literal["sample", "class"] = "sample",
) -> list[dict[str, Any]]:
    """Collapse metrics of the outputs of the named modules of ``model`` over ``loader``.

    ``layers``: names from ``dict(model.named_modules())`` (one name or a sequence); an unknown
    name raises ValueError listing the available ones. ``loader``: re-iterable (a DataLoader or
    a list; it is iterated twice when a classifier is used, three times when K must be inferred)
    yielding (inputs, labels) pairs or mappings with "x"/"y" ("input"/"label") keys; inputs are
    moved to ``device`` and passed as model(x), model(*x) for a tuple, model(**x) for a mapping.
    ``device``: where inputs go and the statistics live (``None``: the model's device; the model
    must already be there). ``pool``: how an output becomes one row per sample: "flatten"
    (N, ...) → (N, prod ...); "mean" keeps (N, d), averages (N, T, d) over the tokens T and
    (N, C, H, W, ...) over the spatial dims (channels first), in float64; "cls" takes token 0 of
    (N, T, d). A module that returns a tuple contributes its first element.
    ``classifier``: a module name whose ``weight`` (K, d) and ``bias`` are the classifier, a
    (W, b) pair (b may be None) or a bare W. It is applied to every layer whose pooled width
    equals d, so nc3 and nc4 there use the network's own readout (in a residual network the
    stream keeps one basis, so this is NC3 after each block); the W-based metrics (nc2, nc2_ortho,
    equinorm(_W), equiangularity(_W), nc3, nc3_papyan, nc4) are NaN on every other layer, and
    everywhere without a classifier. ``num_classes``: K; default the classifier's rows, else a
    labels-only pass over the loader (max label + 1).

    Returns one row per layer, in the order given: {"layer", "index", "dim", "n", and every key of
    :meth:`CollapseAccumulator.compute`}.
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
    model_dev = _model_device(model)
    dev = model_dev if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if device is not None and any(p.device != dev for p in model.parameters()):
        raise ValueError(
            f"the model's parameters are on {model_dev} but device={dev}; move the model "
            "(model.to(device)) or pass device=None"
        )
    W, b, cls_desc = _classifier_arg(classifier, modules)
    if isinstance(loader, Iterator) and (W is not None or num_classes is None):
        raise ValueError(
            "loader is a one-shot iterator (e.g. a generator) but collect iterates it more than "
            "once (nc4 pass with a classifier, or inferring K); pass a list or a DataLoader, or "
            "num_classes and no classifier"
        )
    if num_classes is not None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        K = int(num_classes)
        if W is not None and W.shape[0] != K:
            raise ValueError(f"num_classes = {K} but the classifier has {W.shape[0]} rows")
    elif W is not None:
        K = int(W.shape[0])
    else:
        K = _infer_num_classes(loader)

    captured: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured[name].append(_pool(_output_tensor(output, name), pool, name))

        return hook

    flags = {m: m.training for m in model.modules()}
    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    accs: dict[str, CollapseAccumulator] = {}
    try:
        model.eval()
        with torch.no_grad():
            seen = _pass(model, loader, dev, names, captured, accs, K, W, b, global_mean)
            ncm = [n for n in names if accs[n].W is not None]
            if W is not None and not ncm:
                warnings.warn(
                    f"the classifier ({cls_desc}, width {W.shape[1]}) matches no layer's width "
                    f"({', '.join(f'{n}: {accs[n].dim}' for n in names)}): its metrics are NaN",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if ncm:
                for n in ncm:
                    accs[n].set_class_means()
                _pass(model, loader, dev, ncm, captured, accs, K, W, b, global_mean, ncm=True)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag

    rows = []
    for i, n in enumerate(names):
        acc = accs[n]
        if acc.W is None:
            # no classifier for this layer: W = 0 makes every W-based metric NaN by definition
            # (zero Gram, zero norms) while the moment-based ones are unaffected
            metrics = acc.compute(np.zeros((K, acc.dim)))
        else:
            metrics = acc.compute()
        rows.append({"layer": n, "index": i, "dim": acc.dim, "n": seen, **metrics})
    return rows


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
    accs: dict[str, CollapseAccumulator],
    K: int,
    W: torch.Tensor | None,
    b: torch.Tensor | None,
    global_mean: str,
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
        _run(model, _to_device(x, dev))
        yt = _as_tensor(y, "labels", dev).reshape(-1)
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
                    f"{yt.shape[0]} labels (is the batch dimension first?)"
                )
            acc = accs.get(n)
            if acc is None:
                d = h.shape[1]
                use_w = W is not None and W.shape[1] == d
                acc = accs[n] = CollapseAccumulator(
                    K,
                    d,
                    dev,
                    W=W if use_w else None,
                    b=b if use_w else None,
                    global_mean=global_mean,  # type: ignore[arg-type]
                )
            elif h.shape[1] != acc.dim:
                raise ValueError(
                    f"layer {n!r}: features of width {h.shape[1]} in batch {i}, but width "
                    f"{acc.dim} before; every batch must give the layer the same width (use "
                    "pool='mean' for variable-length sequences)"
                )
            if ncm:
                acc.update_ncm(h, yt)
            else:
                acc.update(h, yt)
        seen += int(yt.shape[0])
        batches += 1
    for lst in captured.values():
        lst.clear()
    if batches == 0 or seen == 0:
        if ncm:
            raise ValueError(
                "the loader yielded no batches on the second pass (nc4): pass a re-iterable "
                "loader (a DataLoader or a list), not a one-shot iterator"
            )
        raise ValueError("the loader yielded no batches (or only empty ones)")
    return seen
