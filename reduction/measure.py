"""Measure saved last-layer features against the theory: every collapse metric (docs/THEORY.md §6)
and the distance to the optimum of the LayerNorm UFM built from the data (§3, §10).

``python -m reduction measure FILE.npz --lam 0.005 [--loss ce] [--json]`` reads a .npz holding
``features`` (N, d), ``labels`` (N,), ``W`` (K, d) and optionally ``b`` (K,), e.g. written by::

    np.savez("feats.npz", features=H, labels=y, W=model.fc.weight.detach().numpy(),
             b=model.fc.bias.detach().numpy())
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zipfile
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .distance import distance_to_optimum
from .metrics import collapse_metrics

__all__ = ["add_measure_arguments", "measure_features", "measure_npz", "run_measure"]

REQUIRED = ("features", "labels", "W")

# keys of the result, in the order the table prints them (anything else follows)
_COLLAPSE_ORDER = (
    "nc1", "nc1_papyan", "cdnv", "nc2", "nc2_ortho", "nc2_means", "nc2_means_ortho", "nc3",
    "nc3_papyan", "nc4", "nc4_agreement", "equinorm_W", "equinorm_means", "equiangularity_W",
    "equiangularity_means", "tr_sigma_w", "tr_sigma_b",
)  # fmt: skip
_DISTANCE_ORDER = (
    "optimum_value", "optimum_geometry", "optimum_method", "fit", "classifier_penalty",
    "classifier_objective", "gap", "rel_gap", "gap_tol", "feasible", "feasibility_violation",
    "sphere_violation", "ball_bound", "nc2_ufm", "nc2_means_ufm", "nc3_ufm", "nc3_ufm_opt",
    "w_norm_mean", "w_norm_mean_opt", "w_norm_ratio", "procrustes_means", "procrustes_W",
    "procrustes_joint",
)  # fmt: skip
_SKIP = {"equinorm", "equiangularity", "feature_penalty", "ufm_objective", "ufm_gap"}


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
    metrics = collapse_metrics(features, labels, W, b)
    dist = distance_to_optimum(features, labels, W, b, lam=lam, loss=loss, on_negative_gap="warn")
    problem = dist.pop("problem")
    out: dict[str, Any] = {
        "num_classes": int(problem["num_classes"]),
        "width": int(problem["width"]),
        "n_samples": int(metrics.pop("n_samples")),
    }
    out.update({k: _plain(v) for k, v in metrics.items()})
    out.update({k: _plain(v) for k, v in dist.items()})
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
    """Arguments of ``measure``: FILE.npz --lam LAM [--loss ce|mse] [--json]."""
    parser.add_argument(
        "file", metavar="FILE.npz", help="arrays features (N, d), labels (N,), W (K, d)[, b (K,)]"
    )
    parser.add_argument(
        "--lam",
        metavar="LAM",
        help="λ_W, the classifier's weight decay in the training objective (required)",
    )
    parser.add_argument("--loss", default="ce", help="ce (default) or mse")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def format_table(result: dict[str, Any]) -> str:
    """The result as aligned ``key  value`` lines in two sections."""
    head = (
        f"{result.get('file', 'features')}: N = {result['n_samples']}, "
        f"K = {result['num_classes']}, d = {result['width']}"
    )
    ufm_line = (
        f"UFM: LayerNorm sphere, radius {_fmt(result['radius'])}, "
        f"{'centred' if result['centered'] else 'not centred'}, loss {result['ufm_loss']}, "
        f"bias {result['ufm_bias']}, λ_W {_fmt(result['ufm_lam_W'])}"
    )
    shown = {"file", "n_samples", "num_classes", "width", "radius", "centered"}
    shown |= {"ufm_loss", "ufm_bias", "ufm_lam_W"} | _SKIP
    sections = [
        ("collapse metrics", [k for k in _COLLAPSE_ORDER if k in result]),
        ("distance to the UFM optimum", [k for k in _DISTANCE_ORDER if k in result]),
    ]
    listed = {k for _, keys in sections for k in keys}
    rest = [k for k in result if k not in listed and k not in shown]
    if rest:
        sections.append(("other", rest))
    width = max(len(k) for _, keys in sections for k in keys)
    lines = [head, ufm_line]
    for title, keys in sections:
        lines += ["", title]
        lines += [f"  {k:<{width}}  {_fmt(result[k])}" for k in keys]
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def run_measure(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run ``measure`` from parsed arguments: 0 on success; on a user error one line
    ``error: ...`` on stderr and 2."""
    try:
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
    except ValueError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        print(format_table(result), file=out)
    return 0
