"""Command line: `python -m ufm solve ...` prints the UFM optimum (and optionally its certificate).

Examples:
  python -m ufm solve --loss ce --features layernorm --classes 10 --per-class 100 --width 64
      --lam-w 0.005 --certify
  python -m ufm solve --loss ce --label-counts counts.csv --width 64 --lam-w 0.005 --certify
      (generalised UFM, THEORY §11: one row of next-label counts per distinct context)

Every user error prints one line `error: …` on stderr and exits 2; a solver failure exits 1.
Certificate progress (size, estimated time, elapsed time) goes to stderr unless --quiet.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from . import __version__
from .certificate import certify
from .closed_form import ClosedFormUnavailable
from .gufm import gufm_geometry
from .problem import Problem
from .solver import solve


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `error: …`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        _fail(message)


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def _per_class(text: str) -> int | list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--per-class must be an int or comma-separated ints, got {text!r}"
        ) from None
    return vals[0] if len(vals) == 1 else vals


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ufm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"deepcollapse-ufm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("solve", help="solve a UFM problem and print its global optimum")
    s.add_argument("--version", action="version", version=f"deepcollapse-ufm {__version__}")
    s.add_argument("--loss", choices=["ce", "mse"], required=True)
    s.add_argument("--features", choices=["free", "layernorm"], default=None,
                   help="feature constraint (default: free; layernorm with --label-counts)")
    s.add_argument("--classes", type=int, default=None, help="number of classes K")
    s.add_argument("--per-class", type=_per_class, default=None,
                   help="samples per class: an int (balanced) or K comma-separated ints")
    s.add_argument("--label-counts", type=Path, default=None, metavar="FILE",
                   help="generalised UFM: a (G, K) matrix of next-label counts, one row per "
                        "distinct context (.npy, or text/CSV); replaces --classes/--per-class")
    s.add_argument("--width", type=int, required=True)
    s.add_argument("--lam-w", type=_finite, required=True, help="λ_W")
    s.add_argument("--lam-h", type=_finite, default=None,
                   help="λ_H (required with --features free; not allowed with layernorm)")
    s.add_argument("--bias", choices=["none", "free", "regularized"], default="none")
    s.add_argument("--lam-b", type=_finite, default=0.0, help="λ_b (regularized bias only)")
    s.add_argument("--radius", type=_finite, default=None, help="LayerNorm radius (√width)")
    s.add_argument("--no-center", action="store_true", help="plain sphere, not centred")
    s.add_argument("--method", choices=["auto", "closed_form", "numerical"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--starts", type=int, default=4, help="random starts (numerical)")
    s.add_argument("--certify", action="store_true", help="add the convex lower bound")
    s.add_argument("--level", choices=["class", "sample"], default="class")
    s.add_argument("--certificate-method", choices=["auto", "sdp", "dual"], default="auto",
                   help="SDP (cvxpy) or the dual bound at the candidate (fast for many points)")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _load_counts(path: Path) -> np.ndarray:
    if not path.is_file():
        _fail(f"--label-counts: no such file: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        text = path.read_text()
        delim = "," if "," in text else None
        return np.loadtxt(path, delimiter=delim, ndmin=2)
    except (OSError, ValueError) as exc:
        _fail(f"--label-counts: cannot read {path} as a (groups × labels) matrix: {exc}")


def _build_problem(args: argparse.Namespace) -> Problem:
    features = args.features or ("layernorm" if args.label_counts is not None else "free")
    if features == "free" and args.lam_h is None:
        _fail("--lam-h is required with --features free (the feature penalty λ_H > 0); "
              "use --features layernorm for LayerNorm features")
    lam_h = 0.0 if args.lam_h is None else args.lam_h
    common = dict(lam_H=lam_h, bias=args.bias, lam_b=args.lam_b, features=features,
                  radius=args.radius, centered=not args.no_center)
    if args.label_counts is not None:
        if args.classes is not None or args.per_class is not None:
            _fail("--label-counts replaces --classes and --per-class; give one or the other")
        counts = _load_counts(args.label_counts)
        return Problem.from_label_counts(counts, args.width, args.lam_w, args.loss, **common)
    if args.classes is None or args.per_class is None:
        _fail("give --classes and --per-class (or --label-counts)")
    return Problem(loss=args.loss, num_classes=args.classes, samples_per_class=args.per_class,
                   width=args.width, lam_W=args.lam_w, **common)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.starts < 1:
        _fail(f"--starts must be >= 1, got {args.starts}")
    try:
        problem = _build_problem(args)
        sol = solve(problem, method=args.method, seed=args.seed, n_starts=args.starts)
        out: dict = {"problem": problem.to_dict(), "solution": sol.summary()}
        if problem.groups:
            out["geometry"] = gufm_geometry(sol).summary()
        if args.certify:
            out["certificate"] = certify(
                sol, level=args.level, method=args.certificate_method,
                progress=None if args.quiet else True,
            ).to_dict()
    except ClosedFormUnavailable as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # a solver that failed: not the user's input
        _fail(str(exc), status=1)
    if args.json:
        print(json.dumps(_jsonable(out), indent=2))
    else:
        _print_table(out)
    return 0


def _jsonable(x: object) -> object:
    """Strict JSON: NaN/inf → null, numpy scalars → Python."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _print_table(out: dict) -> None:
    rows: list[tuple[str, object]] = []
    for section in ("problem", "solution", "geometry", "certificate"):
        if section in out:
            rows.append((f"[{section}]", ""))
            rows.extend(out[section].items())
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        text = f"{v:.10g}" if isinstance(v, float) else ("" if v == "" else str(v))
        print(f"{k:<{width}}  {text}")
    sys.stdout.flush()
