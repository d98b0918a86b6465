"""Command line: `python -m ufm solve ...` prints the UFM optimum (and optionally its certificate).

Example: python -m ufm solve --loss ce --features layernorm --classes 10 --per-class 100
--width 64 --lam-w 0.005 --certify
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from .certificate import certify
from .closed_form import ClosedFormUnavailable
from .problem import Problem
from .solver import solve


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
    parser = argparse.ArgumentParser(prog="python -m ufm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("solve", help="solve a UFM problem and print its global optimum")
    s.add_argument("--loss", choices=["ce", "mse"], required=True)
    s.add_argument("--features", choices=["free", "layernorm"], default="free")
    s.add_argument("--classes", type=int, required=True, help="number of classes K")
    s.add_argument("--per-class", type=_per_class, required=True,
                   help="samples per class: an int (balanced) or K comma-separated ints")
    s.add_argument("--width", type=int, required=True)
    s.add_argument("--lam-w", type=_finite, required=True, help="λ_W")
    s.add_argument("--lam-h", type=_finite, default=0.0, help="λ_H (free features only)")
    s.add_argument("--bias", choices=["none", "free", "regularized"], default="none")
    s.add_argument("--lam-b", type=_finite, default=0.0, help="λ_b (regularized bias only)")
    s.add_argument("--radius", type=_finite, default=None, help="LayerNorm radius (√width)")
    s.add_argument("--no-center", action="store_true", help="plain sphere, not centred")
    s.add_argument("--method", choices=["auto", "closed_form", "numerical"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--starts", type=int, default=4, help="random starts (numerical)")
    s.add_argument("--certify", action="store_true", help="add the convex lower bound")
    s.add_argument("--level", choices=["class", "sample"], default="class")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(solve_parser=s)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub: argparse.ArgumentParser = args.solve_parser  # errors print the subcommand's usage
    if args.starts < 1:
        sub.error(f"--starts must be >= 1, got {args.starts}")
    try:
        problem = Problem(
            loss=args.loss, num_classes=args.classes, samples_per_class=args.per_class,
            width=args.width, lam_W=args.lam_w, lam_H=args.lam_h, bias=args.bias,
            lam_b=args.lam_b, features=args.features, radius=args.radius,
            centered=not args.no_center,
        )
    except ValueError as exc:
        sub.error(str(exc))
    try:
        sol = solve(problem, method=args.method, seed=args.seed, n_starts=args.starts)
    except ClosedFormUnavailable as exc:
        sub.error(str(exc))
    out = {"problem": problem.to_dict(), "solution": sol.summary()}
    if args.certify:
        try:
            out["certificate"] = certify(sol, level=args.level).to_dict()
        except ValueError as exc:
            sub.error(str(exc))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_table(out)
    return 0


def _print_table(out: dict) -> None:
    rows: list[tuple[str, object]] = []
    for section in ("problem", "solution", "certificate"):
        if section in out:
            rows.append((f"[{section}]", ""))
            rows.extend(out[section].items())
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        text = f"{v:.10g}" if isinstance(v, float) else ("" if v == "" else str(v))
        print(f"{k:<{width}}  {text}")
    sys.stdout.flush()
