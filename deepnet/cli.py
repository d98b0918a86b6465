"""Command line: ``deepcollapse train --arch rn1 --depth 8 --dataset mnist1d --out runs/x``
(also ``python -m deepnet train ...``).

Every :class:`~deepnet.config.RunConfig` field has a flag with help text (``--n-per-class``
alias ``--per-class``; ``--data-option key=value`` repeatable). Without ``--out`` the run goes
to ``runs/<arch>-L<depth>-<dataset>-s<seed>-<hash>`` (the hash of the config, so the same
command resumes the same folder and another config gets its own). Prints a summary (objective
split, accuracies, stationarity, the folder), or the metrics as strict JSON with ``--json``.
The output policy is :mod:`deepcollapse.output`'s: a user error prints one line ``error: …`` and
exits 2; a diverging run prints one line and exits 3; Ctrl-C says how to resume and exits 130;
the progress bar shows only on a terminal and never with ``--quiet``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepcollapse.output import (
    ArgumentParser,
    add_standard_options,
    print_json,
    progress_enabled,
    run_command,
)

from .config import CHOICE_FIELDS, RESUME_FREE, RunConfig, RunResult, choices

#: folder under the working directory that holds runs trained without --out
DEFAULT_RUNS = "runs"

#: help text of every RunConfig field (a test checks that none is missing); the registered
#: architectures, optimizers and datasets are listed from their registries (:func:`field_help`)
FIELD_HELP: dict[str, str] = {
    "arch": "architecture",
    "depth": "number of blocks L (0 = no blocks: embedding, LayerNorm, classifier)",
    "width": "feature width d",
    "norm": "LayerNorm placement: post (after the residual sum) or pre",
    "ln_affine": "LayerNorm with affine parameters (then no UFM applies)",
    "ln_eps": "LayerNorm's ε in every LN: LN(z) = (z − z̄)/√(var z + ε) (the UFM bound holds for "
    "any ε > 0)",
    "block_form": "L-RN1 block: relu_of_linear LN(h + σ(W h)) or linear_of_relu LN(h + W σ(h))",
    "heads": "attention heads (transformers; must divide the width)",
    "readout": "transformer readout: cls token, last token (causal) or mean over tokens",
    "patch_size": "transformer patch / chunk size of an image or vector input ('none': the "
    "largest divisor of the input size that is ≤ 7)",
    "dataset": "dataset name",
    "n_per_class": "training samples per class ('none': all)",
    "test_per_class": "test samples per class at most ('none': all)",
    "data_root": "folder holding CIFAR-10 or IMDB (the datasets that are not installed)",
    "data_seed": "seed of the training subset ('none': --seed)",
    "loss": "ce (cross-entropy) or mse",
    "lam": "λ, the weight decay: J = (1/N)Σℓ + (λ/2)Σ‖W‖² over the decayed weights (coupled, as "
    "SGD's weight_decay; never AdamW's decoupled decay)",
    "lam_schedule": "constant λ, or inverse_depth: λ/max(L, 1)",
    "decay_embedding": "also decay the input embedding (it feeds a LayerNorm: THEORY §2)",
    "whiten_embedding": "parametrise the input map as E = V P with P whitening the training "
    "inputs (same functions and objective, better conditioned; 'none': on for lbfgs)",
    "bias": "an (undecayed) classifier bias",
    "optimizer": "optimizer",
    "lr": "learning rate (first-order optimizers, and a full-batch optimizer's warm-up)",
    "lr_schedule": "cosine decay to 0 over the budget, or constant",
    "momentum": "SGD momentum",
    "epochs": "budget: passes over the data (full-batch optimizers: a cap on iterations; they "
    "stop once converged)",
    "batch_size": "minibatch size ('none': full batch)",
    "warmup_epochs": "full-batch optimizers only: first-order warm-up epochs before them",
    "warmup_optimizer": "first-order optimizer of a full-batch optimizer's warm-up",
    "lbfgs_history": "L-BFGS memory (pairs kept)",
    "init": "default (random) or continuation from a finished shallower run (--init-from)",
    "init_from": "folder of the finished shallower run to continue from (relative: to this run's "
    "folder, or to the working directory)",
    "pad_scale": "continuation: scale of the new blocks' weights (they start near the identity)",
    "grad_tol": "converged needs ‖∇J‖ ≤ this (float64)",
    "rel_tol": "converged needs J to move by at most this fraction over the final window",
    "conv_window": "final window over which J's change is measured: a fraction of the chunk "
    "(full-batch optimizers) or of the budget",
    "chunk_epochs": "full-batch optimizers: iterations between convergence checks ('none': 500)",
    "until_converged": "full-batch optimizers: stop at the first check where the criteria hold "
    "(else run the whole cap)",
    "escape_tol": "converged needs the escape probe (fresh L-BFGS, float64 Adam from the final "
    "point) to lower J by at most this fraction",
    "escape_lbfgs_iters": "escape probe: iterations of L-BFGS with empty memory",
    "escape_adam_steps": "escape probe: full-batch float64 Adam steps",
    "escape_adam_lr": "escape probe: Adam's (small) step size",
    "seed": "seed of the initialisation and minibatch order (and of the data subset unless "
    "--data-seed)",
    "device": "auto (a GPU when there is one), cpu or cuda",
    "dtype": "auto (float64 for the optimizers that need it, float32 otherwise), float32 or "
    "float64",
    "checkpoint_every": "write a checkpoint every this many epochs (a rerun resumes from it)",
    "eval_every": "record the objective and accuracies every this many epochs",
    "num_threads": "torch CPU threads during the run ('none': torch's setting)",
}


def field_help(name: str) -> str:
    """The help text of RunConfig field ``name``; the registries' entries are listed with theirs."""
    text = FIELD_HELP.get(name, name.replace("_", " "))
    if name == "arch":
        from .models import ARCHS

        return text + ": " + "; ".join(f"{a.name}: {a.description}" for a in ARCHS.values())
    if name == "optimizer":
        from .optimizers import OPTIMIZERS

        return text + ": " + "; ".join(f"{o.name}: {o.description}" for o in OPTIMIZERS.values())
    if name == "dataset":
        from .data import available_datasets

        return f"{text}: {', '.join(available_datasets())}"
    return text


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
    """One flag per RunConfig field, typed from the field's annotation, with its help text."""
    defaults = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name == "data_options":
            continue
        flags = [f"--{f.name.replace('_', '-')}"]
        if f.name == "n_per_class":
            flags.append("--per-class")
        default = getattr(defaults, f.name)
        text = field_help(f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": default,
                              "help": f"{text} (default: {default})"}
        kind = str(f.type).replace(" ", "")
        if kind == "bool":
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.name in CHOICE_FIELDS:
            kw["choices"] = list(choices(f.name))
        if kind == "int|None":
            kw["type"] = _optional_int
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
    p.add_argument(
        "--out",
        default=None,
        help=f"run folder (checkpoint, metrics, features); default {DEFAULT_RUNS}/<arch>-L<depth>-"
        "<dataset>-s<seed>-<config hash> under the working directory; rerunning resumes it",
    )
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if the folder holds a checkpoint")
    add_standard_options(p, json_help="print the run's metrics as strict JSON",
                         quiet_help="no progress bar (it is also off when stderr is not a "
                         "terminal)")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if f.name != "data_options"
    }
    values["data_options"] = dict(args.data_option)
    return RunConfig(**values)


def default_run_dir(config: RunConfig, root: str | Path = DEFAULT_RUNS) -> Path:
    """``root/<arch>-L<depth>-<dataset>-s<seed>-<hash>``: the hash (8 hex digits of SHA-256) is of
    the config without the fields a resumption may change (RESUME_FREE), so the same command
    resumes the same folder and a different config gets another."""
    d = {k: v for k, v in config.to_dict().items() if k not in RESUME_FREE}
    digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"{config.arch}-L{config.depth}-{config.dataset}-s{config.seed}-{digest}"
    return Path(root) / name


def summary(result: RunResult, run_dir: Path | None = None) -> str:
    """Human-readable summary of a run."""
    c = result.config
    st = result.stationarity
    rel = st.get("rel_change", math.nan)
    unit = "iterations" if c.full_batch else "epochs"
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
    if run_dir is not None:
        lines.append(f"saved in       {run_dir} (rerun the same command to resume or extend it)")
    return "\n".join(lines)


def _interrupted(run_dir: Path | None, config: RunConfig | None) -> str:
    if run_dir is None or config is None:
        return "nothing was saved; rerun the command to start again"
    if (run_dir / "checkpoint.pt").exists():
        return (f"rerun the same command to resume from the last checkpoint in {run_dir} "
                f"(one every {config.checkpoint_every} epochs)")
    return (f"no checkpoint in {run_dir} yet (one every {config.checkpoint_every} epochs); rerun "
            "the same command to start again")


def train_main(argv: Sequence[str] | None = None, prog: str = "deepcollapse train") -> int:
    """``deepcollapse train ...``: returns the exit status (0; 2 user error; 3 diverged; 130)."""
    parser = ArgumentParser(
        prog=prog,
        description="Train one deep LayerNorm network on the exact coupled-L2 objective "
        "(THEORY §2) and record its stationarity (§9).",
    )
    add_train_arguments(parser)
    return _run(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deepnet train ...``."""
    parser = ArgumentParser(prog="deepcollapse", description=__doc__.split("\n")[0])
    add_standard_options(parser, json_help=None, quiet_help=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="train")
    add_train_arguments(sub.add_parser("train", help="train one network"))
    return _run(parser, argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    from deepcollapse.output import require

    state: dict[str, Any] = {}

    def body() -> int:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        config = config_from_args(args)
        require("torch", "torch", "deepcollapse train")
        from .train import train

        run_dir = Path(args.out) if args.out is not None else default_run_dir(config)
        state.update(run_dir=run_dir, config=config)
        show = progress_enabled(args.quiet)
        if show:
            print(f"train: run folder {run_dir} (rerun the same command to resume)",
                  file=sys.stderr)
        result = train(config, run_dir=run_dir, resume=not args.no_resume, progress=show)
        if args.json:
            print_json({"run_dir": str(run_dir), **result.to_dict()})
        else:
            print(summary(result, run_dir))
        return 0

    from .io import CorruptCheckpointError
    from .runstate import TrainingDivergedError

    return run_command(
        body,
        interrupted=lambda: _interrupted(state.get("run_dir"), state.get("config")),
        diverged=(TrainingDivergedError,),
        user_errors=(CorruptCheckpointError,),
    )
