"""Measure saved last-layer features against the theory: every collapse metric (docs/THEORY.md §6)
and the distance to the optimum of the LayerNorm UFM built from the data (§3, §10).

``deepcollapse measure FILE.npz --lam 0.005 [--loss ce] [--all] [--json]`` reads a .npz holding
``features`` (N, d), ``labels`` (N,), ``W`` (K, d) and optionally ``b`` (K,), e.g. written by::

    np.savez("feats.npz", features=H, labels=y, W=model.fc.weight.detach().numpy(),
             b=model.fc.bias.detach().numpy())

The table leads with the headline numbers, each with its meaning and which way is better
(:mod:`reduction.explain`); ``--all`` adds every other number, ``--json`` prints them all as
strict JSON. The metrics need torch (``deepcollapse[torch]``); this module imports it only when
it measures.
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from deepcollapse.output import add_standard_options, dumps, require

from .explain import format_report

__all__ = ["add_measure_arguments", "measure_features", "measure_npz", "run_measure"]

REQUIRED = ("features", "labels", "W")

# internals that the table leaves out (the JSON keeps them)
_SKIP = {"feature_penalty", "ufm_objective", "ufm_gap"}


def _plain(v: Any) -> Any:
    """numpy scalars → Python scalars (JSON-able)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def measure_features(
    features: Any, labels: Any, W: Any, b: Any = None, *, lam: float, loss: str = "ce"
) -> dict[str, Any]:
    """Every collapse metric and the distance to the UFM optimum, as one flat JSON-able dict.

    The metrics are :func:`~reduction.metrics.collapse_metrics` (K = rows of W). The UFM is the
    LayerNorm-sphere problem built from the data (:func:`~reduction.distance.problem_from_features`:
    radius = largest feature norm, √d for LayerNorm features; centred iff the features are; bias
    free iff b is given) with λ_W = ``lam`` and ``loss``; its keys are those of
    :func:`~reduction.distance.distance_to_optimum`, with the problem flattened into
    ``ufm_loss``, ``ufm_bias``, ``ufm_lam_W`` (``radius``, ``centered`` are top-level already),
    plus ``num_classes`` and ``width``. A point that beats the computed optimum is reported with a
    RuntimeWarning instead of an error (the numbers are the measurement). Values are str, bool,
    int, float (NaN/inf where a metric is undefined) or None.
    """
    require("torch", "torch", "measuring collapse metrics")
    from .distance import distance_to_optimum
    from .metrics import collapse_metrics

    metrics = collapse_metrics(features, labels, W, b)
    dist = distance_to_optimum(features, labels, W, b, lam=lam, loss=loss, on_negative_gap="warn")
    problem = dist.pop("problem")
    out: dict[str, Any] = {
        "num_classes": int(problem["num_classes"]),
        "width": int(problem["width"]),
        "n_samples": int(metrics.pop("n_samples")),
    }
    # the headline numbers first (the order a reader and the table want)
    for key in ("optimum_value", "gap", "rel_gap", "nc1", "nc2_ufm", "nc3_ufm", "nc4"):
        out[key] = _plain(metrics[key] if key in metrics else dist[key])
    out.update({k: _plain(v) for k, v in metrics.items() if k not in out})
    out.update({k: _plain(v) for k, v in dist.items() if k not in out})
    out["ufm_loss"] = problem["loss"]
    out["ufm_bias"] = problem["bias"]
    out["ufm_lam_W"] = float(problem["lam_W"])
    return out


def _load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays features, labels, W (and b if present) of an .npz file; ValueError otherwise."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p} is a folder, expected an .npz file")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{p} is not an .npz archive (np.savez): {err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{p} holds a single array (.npy); expected an .npz archive (np.savez)")
    with data:
        missing = [k for k in REQUIRED if k not in data.files]
        if missing:
            raise ValueError(
                f"{p} lacks the array(s) {', '.join(missing)}: expected features (N, d), "
                f"labels (N,), W (K, d) and optionally b (K,); it holds "
                f"{', '.join(data.files) or 'no arrays'}"
            )
        try:
            return {k: data[k] for k in (*REQUIRED, "b") if k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            # object arrays (pickles are refused) or a damaged member
            raise ValueError(f"{p}: cannot read its arrays as numbers: {err}") from None


def measure_npz(path: str | Path, *, lam: float, loss: str = "ce") -> dict[str, Any]:
    """:func:`measure_features` of the arrays in an .npz file (``features`` (N, d), ``labels``
    (N,), ``W`` (K, d), optional ``b`` (K,)), with ``file`` added. Missing arrays, bad shapes and
    files that are not .npz archives raise ValueError naming the problem."""
    arrays = _load_npz(path)
    H, y, W, b = arrays["features"], arrays["labels"], arrays["W"], arrays.get("b")
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
    for k, v in arrays.items():
        if v.dtype.kind not in "biuf":
            raise ValueError(f"{path}: array {k} has dtype {v.dtype}, expected numbers")
    if H.ndim != 2:
        raise ValueError(f"{path}: features must be 2-D (N, d), got {shapes}")
    if y.ndim != 1 or y.shape[0] != H.shape[0]:
        raise ValueError(f"{path}: labels must be 1-D with N = {H.shape[0]} entries, got {shapes}")
    if W.ndim != 2 or W.shape[1] != H.shape[1]:
        raise ValueError(f"{path}: W must be 2-D (K, d = {H.shape[1]}), got {shapes}")
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"{path}: b must have shape (K,) = ({W.shape[0]},), got {shapes}")
    out = measure_features(H, y, W, b, lam=lam, loss=loss)
    return {"file": str(path), **out}


# --------------------------------------------------------------------------------------------------
# command line


def add_measure_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``measure``: FILE.npz --lam LAM [--loss ce|mse] [--all] [--json]
    [--quiet] [--version]."""
    parser.add_argument(
        "file", metavar="FILE.npz", help="arrays features (N, d), labels (N,), W (K, d)[, b (K,)]"
    )
    parser.add_argument(
        "--lam",
        metavar="LAM",
        help="λ_W, the classifier's weight decay in the training objective: the coefficient of "
        "(λ/2)‖W‖², i.e. SGD's coupled weight_decay (required)",
    )
    parser.add_argument("--loss", default="ce", help="ce (default) or mse")
    parser.add_argument("--all", action="store_true",
                        help="print every number, not only the headline ones")
    add_standard_options(parser, json_help="print every number as strict JSON",
                         quiet_help="no progress lines on stderr (a long UFM solve)")
    return parser


def format_table(result: dict[str, Any], all: bool = False) -> str:
    """The headline numbers with their meaning and direction, then (``all``) every other one."""
    title = (
        f"{result.get('file', 'features')}: N = {result['n_samples']}, "
        f"K = {result['num_classes']}, d = {result['width']}; UFM loss {result['ufm_loss']}, "
        f"bias {result['ufm_bias']}, λ_W = {result['ufm_lam_W']:g}"
    )
    skip = frozenset({"file", "n_samples", "num_classes", "width", "ufm_loss", "ufm_bias",
                      "ufm_lam_W", *_SKIP})
    return format_report(result, all=all, title=title, skip=skip)


def run_measure(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``measure`` from parsed arguments: 0 on success; a user error is a ValueError, which
    the command's :func:`deepcollapse.output.run_command` prints as one line (exit 2)."""
    if args.lam is None:
        raise ValueError("--lam is required: λ_W, the classifier's weight decay")
    try:
        lam = float(args.lam)
    except (TypeError, ValueError):
        raise ValueError(f"--lam must be a positive number, got {args.lam!r}") from None
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"--lam must be a positive number, got {args.lam!r}")
    if args.loss not in ("ce", "mse"):
        raise ValueError(f"--loss must be ce or mse, got {args.loss!r}")
    result = measure_npz(args.file, lam=lam, loss=args.loss)
    if getattr(args, "json", False):
        print(dumps(result), file=out)
    else:
        print(format_table(result, all=getattr(args, "all", False)), file=out)
    return 0
