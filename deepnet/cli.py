"""Command line: ``python -m deepnet train --arch rn1 --depth 8 --dataset mnist --out runs/x``.

Every :class:`~deepnet.train.RunConfig` field has a flag (``--n-per-class`` alias ``--per-class``;
``--data-option key=value`` repeatable). Prints a summary (objective split, accuracies, plateau),
or the metrics as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from .train import (
    ARCHS,
    DTYPES,
    LAM_SCHEDULES,
    LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    RunConfig,
    RunResult,
    TrainingDivergedError,
    train,
)

_CHOICES: dict[str, Sequence[str]] = {
    "arch": ARCHS,
    "norm": ("post", "pre"),
    "block_form": ("relu_of_linear", "linear_of_relu"),
    "readout": ("cls", "last", "mean"),
    "loss": LOSSES,
    "lam_schedule": LAM_SCHEDULES,
    "optimizer": OPTIMIZERS,
    "lr_schedule": LR_SCHEDULES,
    "dtype": tuple(DTYPES),
}
_ALIASES = {"n_per_class": ["--per-class"]}


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "full", "all") else int(text)


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


def _add_train_args(p: argparse.ArgumentParser) -> None:
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name == "data_options":
            continue
        flags = [f"--{f.name.replace('_', '-')}", *_ALIASES.get(f.name, [])]
        default = getattr(defaults, f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": f"(default: {default})"}
        if isinstance(default, bool):
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in _CHOICES:
            kw["choices"] = list(_CHOICES[f.name])
        if f.name in ("n_per_class", "test_per_class", "batch_size", "num_threads"):
            kw["type"] = _optional_int
            kw["help"] += "; 'none' = all / full batch / torch's threads"
        elif f.name == "data_root":
            kw["type"] = _optional_str
        elif isinstance(default, int):
            kw["type"] = int
        elif isinstance(default, float):
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
    pl = result.plateau
    rel = pl.get("rel_change")
    lines = [
        f"{c.arch} depth={c.depth} width={c.width} norm={c.norm} on {c.dataset} "
        f"(N={len(result.labels)}, K={result.W.shape[0]}), {result.epochs_done}/{c.epochs} epochs, "
        f"{result.wall_time_s:.1f} s on {result.device}",
        f"J_L            = {result.objective:.6f}   (λ = {c.effective_lam:g})",
        f"  fit          = {result.fit:.6f}",
        f"  classifier   = {result.classifier_penalty:.6f}   (λ/2)‖W‖²",
        f"  body         = {result.body_penalty:.6f}",
        f"  embedding    = {result.embedding_penalty:.6f}",
        f"train acc      = {result.train_acc:.4f}"
        + (f"   test acc = {result.test_acc:.4f}" if result.test_acc is not None else ""),
        "plateau        = "
        + (
            f"{rel:.3%} change over the last {pl['window_epochs']} epochs -> "
            f"{'plateaued' if pl['plateaued'] else 'NOT plateaued'}"
            if rel is not None
            else "n/a"
        ),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepnet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(sub.add_parser("train", help="train one network"))
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        result = train(
            config, run_dir=args.out, resume=not args.no_resume, progress=not args.no_progress
        )
    except TrainingDivergedError as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(summary(result))
    return 0
