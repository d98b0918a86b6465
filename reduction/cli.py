"""Command line: ``deepcollapse {sweep, report, presets, measure}`` (also ``python -m reduction``).

Examples::

    deepcollapse presets
    deepcollapse sweep --preset cpu-rn1-mnist --out results/cpu-rn1-mnist
    deepcollapse sweep --preset cpu-rn1-mnist --depths 2,8,34 --seeds 0 --set epochs=1000
    deepcollapse report results/cpu-rn1-mnist
    deepcollapse measure features.npz --lam 0.005

Output, errors, progress and Ctrl-C follow :mod:`deepcollapse.output`; a sweep's result is shown
by :mod:`reduction.render` (text, or ``--markdown``). ``presets``, ``report`` and ``measure``
import no torch until they need it (``measure`` needs it for the metrics; ``report`` to check
the runs' fingerprints).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepcollapse.output import (
    ArgumentParser,
    UserError,
    add_standard_options,
    print_json,
    progress_enabled,
    require,
    run_command,
)
from reduction.measure import add_measure_arguments


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _parse_value(text: str) -> Any:
    """``--set key=value``: JSON when it parses (numbers, true/false/null, dicts), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _overrides(items: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    for name in ("epochs", "lr", "device", "data_root", "n_per_class"):
        flag = getattr(args, name, None)
        if flag is not None:
            out[name] = flag
    return out


def build_parser(prog: str = "deepcollapse") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_standard_options(p, json_help=None, quiet_help=None)
    sub = p.add_subparsers(dest="command", required=True, metavar="{sweep,report,presets,measure}")

    s = sub.add_parser("sweep", help="run or resume a depth sweep",
                       description="Run or resume a depth sweep (a preset's depths × seeds); "
                       "rerunning the same command resumes it, finished runs are kept.")
    add_standard_options(s, json_help="print the summary as strict JSON")
    s.add_argument("--preset", required=True, help="preset name (see `deepcollapse presets`)")
    s.add_argument("--out", help="sweep folder (default results/<preset>); reuse it to resume")
    s.add_argument("--depths", type=_int_list, help="comma-separated depths (default: preset's)")
    s.add_argument("--seeds", type=_int_list, help="comma-separated seeds (default: preset's)")
    s.add_argument("--epochs", type=int, help="epochs (L-BFGS: iterations) per run")
    s.add_argument("--lr", type=float, help="learning rate")
    s.add_argument("--per-class", dest="n_per_class", type=int, help="training samples per class")
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--data-root", dest="data_root", help="folder holding CIFAR-10 / IMDB")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any RunConfig field, e.g. --set width=128 --set norm=pre",
    )
    s.add_argument(
        "--budget-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rerun the shallowest depth with blocks and the deepest (first seed) with twice the "
        "budget and check that J no longer moves (default: the preset's choice)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        help="units run side by side, one single-threaded process each (default: one per core; "
        "the depths of one seed form a chain and run in order)",
    )
    s.add_argument("--backend", choices=("local", "ray"), default="local", help="where units run")
    s.add_argument("--address", help="Ray cluster address (HOST:PORT or ray://HOST:PORT)")
    s.add_argument(
        "--gpus-per-unit",
        type=float,
        default=None,
        help="GPUs per unit on Ray (fractions allowed; default 0.25 on a GPU cluster, else 0)",
    )
    s.add_argument(
        "--batch-seeds",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the seeds of one depth as one batched model (first-order optimizers; "
        "default: on when a GPU is present)",
    )

    r = sub.add_parser("report", help="re-aggregate a (partial) sweep folder",
                       description="Rebuild a sweep folder's tables, certificates, rates, "
                       "verdict and figures from its run folders.")
    add_standard_options(r, json_help="print the summary as strict JSON", quiet_help=None)
    r.add_argument("out", help="sweep folder")
    r.add_argument("--markdown", action="store_true", help="print the summary as Markdown tables")

    ps = sub.add_parser("presets", help="list the presets", description="List the sweep presets.")
    add_standard_options(ps, json_help="print the presets as strict JSON", quiet_help=None)

    add_measure_arguments(
        sub.add_parser(
            "measure", help="metrics and distance to the UFM optimum of saved features (.npz)",
            description="Collapse metrics of saved last-layer features and their distance to the "
            "optimum of the LayerNorm UFM of the same data (THEORY §6, §10).",
        )
    )
    return p


def _interrupted(args: argparse.Namespace) -> str:
    if getattr(args, "command", None) == "sweep":
        out = args.out or f"results/{args.preset}"
        return (f"rerun the same command to resume the sweep in {out} (finished runs are kept, "
                "each unfinished one restarts from its last checkpoint)")
    return "nothing was changed; rerun the command to start again"


def main(argv: Sequence[str] | None = None, prog: str = "deepcollapse") -> int:
    """Run a subcommand; returns the exit status (0; 1 every run of a sweep failed; 2 user error;
    130 interrupted)."""
    state: dict[str, argparse.Namespace] = {}

    def body() -> int:
        args = build_parser(prog).parse_args(argv)
        state["args"] = args
        return _run(args)

    return run_command(
        body, interrupted=lambda: _interrupted(state["args"]) if "args" in state else "stopped"
    )


def _run(args: argparse.Namespace) -> int:
    if args.command == "measure":
        from reduction.measure import run_measure

        return run_measure(args)
    from reduction.presets import PRESETS

    if args.command == "presets":
        if args.json:
            from dataclasses import asdict

            print_json({"presets": {n: asdict(p) for n, p in PRESETS.items()}})
            return 0
        for name, preset in PRESETS.items():
            tag = "GPU" if preset.gpu_sized else "CPU"
            depths = ",".join(map(str, preset.depths))
            print(f"{name:<26} [{tag}] depths {depths}; {len(preset.seeds)} seeds")
            print(f"{'':<26} {preset.description}")
        return 0

    if args.command == "report":
        require("matplotlib", "plots", "deepcollapse report (its figures)")
        from reduction.aggregate import report

        result = report(Path(args.out))
    else:
        require("torch", "train", "deepcollapse sweep")
        require("matplotlib", "plots", "deepcollapse sweep (its figures)")
        from reduction.sweep import run_sweep

        result = run_sweep(
            args.preset,
            args.out,
            depths=args.depths,
            seeds=args.seeds,
            overrides=_overrides(args.set, args),
            budget_check=args.budget_check,
            progress=progress_enabled(args.quiet),
            workers=args.workers,
            backend=args.backend,
            address=args.address,
            gpus_per_unit=args.gpus_per_unit,
            batch_seeds=args.batch_seeds,
        )
    from reduction.render import to_markdown, to_text

    if getattr(args, "markdown", False):
        print(to_markdown(result))
        return 0
    if args.json:
        print_json(
            {
                "out_dir": str(result.out_dir),
                "preset": result.preset.name,
                "n_runs": len(result.rows),
                "summary": result.summary,
                "rates": result.rates,
                "verdict": result.verdict,
                "monotone": result.monotone,
                "budget_checks": result.budget_checks,
                "paths": {k: str(v) for k, v in result.paths.items()},
            }
        )
    else:
        print(to_text(result))
    from reduction.rates import row_ok

    failed = [r for r in result.rows if not row_ok(r)]
    if args.command == "sweep" and result.rows and len(failed) == len(result.rows):
        # a sweep with no finished run has no result: say so, and exit non-zero for scripts
        print(
            f"error: all {len(failed)} runs failed; first error: {failed[0].get('error')} "
            f"(every error is in {Path(result.out_dir) / 'results.csv'}, column error)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
