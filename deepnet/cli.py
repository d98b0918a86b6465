"""Command line: ``python -m deepnet train --arch rn1 --depth 8 --dataset mnist --out runs/x``.

Every :class:`~deepnet.config.RunConfig` field has a flag (``--n-per-class`` alias
``--per-class``; ``--data-option key=value`` repeatable). Prints a summary (objective split,
accuracies, stationarity), or the metrics as JSON with ``--json``. A user error prints one line
``error: …`` and exits 2; a diverging run prints one line and exits 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from .config import CHOICES, RunConfig, RunResult, arch_choices


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as one ``error: …`` line and exit status 2 (no usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(message)


def _optional_int(text: str) -> int | None:
    if text.lower() in ("none", "full", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def _optional_str(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _data_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--data-option takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)  # numbers, booleans, lists
    except json.JSONDecodeError:
        return key, value


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, typed from the field's annotation."""
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name == "data_options":
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name == "n_per_class":
            flags.append("--per-class")
        default = getattr(defaults, f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f"(default: {default})"}
        kind = str(f.type).replace(" ", "")
        if kind == "bool":
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in CHOICES:
            kw["choices"] = list(CHOICES[f.name] or arch_choices())
        if kind == "int|None":
            kw["type"] = _optional_int
            kw["help"] += "; 'none' = unset"
        elif kind == "str|None":
            kw["type"] = _optional_str
        elif kind == "int":
            kw["type"] = int
        elif kind == "float":
            kw["type"] = float
        p.add_argument(*flags, **kw)
    p.add_argument(
        "--data-option",
        action="append",
        type=_data_option,
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for load_dataset (repeatable)",
    )
    p.add_argument("--out", default=None, help="run directory (checkpoint, metrics, features)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--json", action="store_true", help="print metrics.json content instead")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if f.name != "data_options"
    }
    values["data_options"] = dict(args.data_option)
    return RunConfig(**values)


def summary(result: RunResult) -> str:
    """Human-readable summary of a run."""
    c = result.config
    st = result.stationarity
    rel = st.get("rel_change", math.nan)
    unit = "iterations" if c.optimizer == "lbfgs" else "epochs"
    lines = [
        f"{c.arch} depth={c.depth} width={c.width} norm={c.norm} on {c.dataset} "
        f"(N={len(result.labels)}, K={result.W.shape[0]}), {c.optimizer}, "
        f"{result.epochs_done}/{c.epochs} {unit}, {result.wall_time_s:.1f} s on {result.device}",
        f"J_L            = {result.objective:.6f}   (λ = {c.effective_lam:g})",
        f"  fit          = {result.fit:.6f}",
        f"  classifier   = {result.classifier_penalty:.6f}   (λ/2)‖W‖²",
        f"  body         = {result.body_penalty:.6f}",
        f"  embedding    = {result.embedding_penalty:.6f}",
        f"train acc      = {result.train_acc:.4f}"
        + (f"   test acc = {result.test_acc:.4f}" if result.test_acc is not None else ""),
        f"‖∇J‖           = {st['grad_norm']:.3g}   (grad_tol {st['grad_tol']:g})",
        "ΔJ/J window    = "
        + (f"{rel:+.3e} over the last {st['window']} {unit}" if math.isfinite(rel) else "n/a")
        + f"   (rel_tol {st['rel_tol']:g})",
        "converged      = " + ("yes" if st["converged"] else "NO: " + "; ".join(st["reasons"])),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__
    from .io import CorruptCheckpointError
    from .train import TrainingDivergedError, train

    parser = ArgumentParser(prog="python -m deepnet", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepcollapse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    add_train_arguments(sub.add_parser("train", help="train one network"))
    try:
        args = parser.parse_args(argv)
        config = config_from_args(args)
        result = train(
            config, run_dir=args.out, resume=not args.no_resume, progress=not args.no_progress
        )
    except TrainingDivergedError as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        return 3
    except (CliError, ValueError, FileNotFoundError, CorruptCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable --out, full disk, ...
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(summary(result))
    return 0
