"""Command line: ``deepcollapse ufm solve ...`` (also ``python -m ufm solve ...``) prints the UFM
optimum and, with ``--certify``, its certificate.

Examples:
  deepcollapse ufm solve --loss ce --features layernorm --classes 10 --per-class 100 --width 64
      --lam-w 0.005 --certify
  deepcollapse ufm solve --loss ce --label-counts counts.csv --width 64 --lam-w 0.005 --certify
      (generalised UFM, THEORY §11: one row of next-label counts per distinct context)

The output policy is :mod:`deepcollapse.output`'s: a user error prints one line ``error: …`` and
exits 2, a solver failure exits 1, ``--json`` is strict JSON with a ``schema_version``. Progress
lines (a numerical solve that runs for more than 2 s; the certificate's size, estimate and
elapsed time) go to stderr unless ``--quiet``.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from deepcollapse.output import (
    ArgumentParser,
    UserError,
    add_standard_options,
    one_line,
    print_json,
    run_command,
)

from .closed_form import ClosedFormUnavailable
from .gufm import gufm_geometry
from .problem import Problem
from .solver import UncertifiedOptimumWarning, solve


class SolverFailure(RuntimeError):
    """A solver that failed on valid input: exit status 1."""


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


def build_parser(prog: str = "deepcollapse ufm") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="The UFM's global optimum and its certificate.")
    add_standard_options(parser, json_help=None, quiet_help=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="solve")
    s = sub.add_parser("solve", help="solve a UFM problem and print its global optimum",
                       description="Solve a UFM problem (THEORY §3–§5): closed form where one "
                       "exists, else the multi-start float64 solver; --certify adds a convex "
                       "lower bound.")
    add_standard_options(s, json_help="print the problem, solution (and certificate) as strict "
                         "JSON", quiet_help="no progress lines on stderr")
    s.add_argument("--loss", choices=["ce", "mse"], required=True,
                   help="cross-entropy (ce) or ½‖Z − Y‖² (mse)")
    s.add_argument("--features", choices=["free", "layernorm"], default=None,
                   help="free features penalised by λ_H (the standard UFM) or LayerNorm features "
                        "on the sphere (default: free; layernorm with --label-counts)")
    s.add_argument("--classes", type=int, default=None, help="number of classes K")
    s.add_argument("--per-class", type=_per_class, default=None,
                   help="samples per class: an int (balanced) or K comma-separated ints")
    s.add_argument("--label-counts", type=Path, default=None, metavar="FILE",
                   help="generalised UFM: a (G, K) matrix of next-label counts, one row per "
                        "distinct context (.npy, or text/CSV); replaces --classes/--per-class")
    s.add_argument("--width", type=int, required=True, help="feature dimension d")
    s.add_argument("--lam-w", type=_finite, required=True,
                   help="λ_W, the classifier's weight decay (SGD's coupled weight_decay)")
    s.add_argument("--lam-h", type=_finite, default=None,
                   help="λ_H (required with --features free; not allowed with layernorm)")
    s.add_argument("--bias", choices=["none", "free", "regularized"], default="none",
                   help="classifier bias: none, free (undecayed) or regularized (by λ_b)")
    s.add_argument("--lam-b", type=_finite, default=0.0, help="λ_b (regularized bias only)")
    s.add_argument("--radius", type=_finite, default=None,
                   help="radius of the LayerNorm sphere (default √width)")
    s.add_argument("--no-center", action="store_true",
                   help="features on a plain sphere, not the centred one LayerNorm gives")
    s.add_argument("--method", choices=["auto", "closed_form", "numerical"], default="auto",
                   help="auto: the closed form where one exists, else numerical")
    s.add_argument("--seed", type=int, default=0, help="seed of the numerical solver's starts")
    s.add_argument("--starts", type=int, default=4, help="random starts (numerical)")
    s.add_argument("--certify", action="store_true",
                   help="add the convex lower bound (SDP needs deepcollapse[certify]; the dual "
                        "bound does not)")
    s.add_argument("--level", choices=["class", "sample"], default="class",
                   help="certificate at class level (exact, any N) or sample level (a check, "
                        "small N)")
    s.add_argument("--certificate-method", choices=["auto", "sdp", "dual"], default="auto",
                   help="SDP (cvxpy) or the dual bound at the candidate (fast for many points)")
    return parser


def _load_counts(path: Path) -> np.ndarray:
    if not path.is_file():
        _fail_user(f"--label-counts: no such file: {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        text = path.read_text()
        delim = "," if "," in text else None
        return np.loadtxt(path, delimiter=delim, ndmin=2)
    except (OSError, ValueError) as exc:
        _fail_user(f"--label-counts: cannot read {path} as a (groups × labels) matrix: {exc}")


def _build_problem(args: argparse.Namespace) -> Problem:
    features = args.features or ("layernorm" if args.label_counts is not None else "free")
    if features == "free" and args.lam_h is None:
        _fail_user("--lam-h is required with --features free (the feature penalty λ_H > 0); "
                   "use --features layernorm for LayerNorm features")
    lam_h = 0.0 if args.lam_h is None else args.lam_h
    common = dict(lam_H=lam_h, bias=args.bias, lam_b=args.lam_b, features=features,
                  radius=args.radius, centered=not args.no_center)
    if args.label_counts is not None:
        if args.classes is not None or args.per_class is not None:
            _fail_user("--label-counts replaces --classes and --per-class; give one or the other")
        counts = _load_counts(args.label_counts)
        return Problem.from_label_counts(counts, args.width, args.lam_w, args.loss, **common)
    if args.classes is None or args.per_class is None:
        _fail_user("give --classes and --per-class (or --label-counts)")
    return Problem(loss=args.loss, num_classes=args.classes, samples_per_class=args.per_class,
                   width=args.width, lam_W=args.lam_w, **common)


def main(argv: Sequence[str] | None = None, prog: str = "deepcollapse ufm") -> int:
    """Run ``ufm solve``; returns the exit status (0, 1 solver failure, 2 user error, 130)."""
    return run_command(lambda: _main(argv, prog), failures=(SolverFailure,))


def _main(argv: Sequence[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.starts < 1:
        _fail_user(f"--starts must be >= 1, got {args.starts}")
    progress = None if args.quiet else True
    try:
        problem = _build_problem(args)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UncertifiedOptimumWarning)
            sol = solve(problem, method=args.method, seed=args.seed, n_starts=args.starts,
                        progress=progress)
        for w in caught:  # one line each (the status is also in the output)
            print(f"warning: {one_line(str(w.message))}", file=sys.stderr)
        out: dict = {"problem": problem.to_dict(), "solution": sol.summary()}
        if problem.groups:
            out["geometry"] = gufm_geometry(sol).summary()
        if args.certify:
            from .certificate import certify

            out["certificate"] = certify(
                sol, level=args.level, method=args.certificate_method, progress=progress,
            ).to_dict()
    except ClosedFormUnavailable as exc:
        _fail_user(str(exc))
    except RuntimeError as exc:  # a solver that failed: not the user's input
        raise SolverFailure(str(exc)) from None
    if args.json:
        print_json(out)
    else:
        _print_table(out)
    return 0


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


def _fail_user(message: str) -> NoReturn:
    raise UserError(message)
