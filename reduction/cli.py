"""Command line: ``deepcollapse {sweep, report, presets, measure}`` (also ``python -m reduction``).

Examples::

    deepcollapse presets
    deepcollapse sweep --preset cpu-rn1-mnist --out results/cpu-rn1-mnist
    deepcollapse sweep --preset cpu-rn1-mnist --depths 2,8,34 --seeds 0 --set epochs=1000
    deepcollapse report results/cpu-rn1-mnist
    deepcollapse measure features.npz --lam 0.005

Output, errors, progress and Ctrl-C follow :mod:`deepcollapse.output`. ``presets``, ``report``
and ``measure`` import no torch until they need it (``measure`` needs it for the metrics).
"""

from __future__ import annotations

import argparse
import json
import math
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
            raise CliError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    for name in ("epochs", "lr", "device", "data_root", "n_per_class"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.4g}"
    return str(x)


def _cell(m: Any, sd: Any) -> str:
    if m is None:
        return f"{'-':>20}"
    if sd is None or not math.isfinite(sd):  # one seed: no spread to show
        return f"{_fmt(m):>10}{'':<10}"
    return f"{_fmt(m):>10} ± {_fmt(sd):<7}"


def print_summary(result: Any, file: Any = sys.stdout) -> None:
    """Per depth: mean ± std of J, the sandwich, NC1–NC3, ‖∇J‖ and the converged count; then
    the monotone certificate, the budget checks and the fitted rates."""
    from reduction.registry import table_columns

    cols = [name for name, _ in table_columns()]
    head = dict(table_columns())
    print(f"\n{result.preset.name}: {len(result.rows)} runs -> {result.out_dir}", file=file)
    print(
        "depth  runs  conv  " + "  ".join(f"{head.get(c, c):>20}" for c in cols),
        file=file,
    )
    for s in result.summary:
        cells = [_cell(s.get(f"{c}_mean"), s.get(f"{c}_std")) for c in cols]
        print(
            f"{s['depth']:>5}  {s['n_seeds']:>4}  {s.get('n_converged', 0):>4}  "
            + "  ".join(cells),
            file=file,
        )
    from reduction.aggregate import seed_certificate_lines, ufm_line

    line = ufm_line([r for r in result.rows if r.get("status", "ok") == "ok"])
    if line:
        print(line, file=file)
    mono = result.monotone
    if mono:
        if mono.get("ok"):
            print(
                "monotone certificate: J_L ≤ min over shallower depths of J_L' for every seed "
                f"(tolerance {mono['tolerance']:g} relative)",
                file=file,
            )
        for v in mono.get("violations", []):
            print(
                f"  NOT AT THE OPTIMUM: seed {v['seed']} depth {v['depth']}: J = "
                f"{v['objective']:.6g} > J = {v['shallower_objective']:.6g} at depth "
                f"{v['shallower_depth']} ({100 * v['rel_excess']:+.3g}%)",
                file=file,
            )
        for line in seed_certificate_lines(mono):
            print(("  " if not mono.get("seed_ok") else "") + line[0].lower() + line[1:], file=file)
    for c in result.budget_checks:
        if c.get("status") != "ok":
            print(f"  2x-budget rerun at L={c['depth']}: {c.get('status')}", file=file)
            continue
        print(
            f"  2x-budget rerun L={c['depth']}: J {c['objective']:.6g} -> {c['objective_2x']:.6g} "
            f"(improvement {100 * c['rel_improvement_2x']:+.3f}%, tolerance "
            f"{100 * c['tolerance']:g}%; rerun converged: {c['converged_2x']}) -> "
            + ("ok" if c["ok"] else "FAILED"),
            file=file,
        )
    unconverged = [r for r in result.rows if r.get("status") == "ok" and not r.get("converged")]
    if unconverged:
        print(
            f"  WARNING: {len(unconverged)} run(s) did not meet the convergence criteria "
            "(column converged = False; not_converged_because says why); rates use converged "
            "runs only.",
            file=file,
        )
    failed = [r for r in result.rows if r.get("status", "ok") != "ok"]
    for r in failed:
        print(
            f"  FAILED: depth {r['depth']} seed {r['seed']}: {r['status']}: {r.get('error')}",
            file=file,
        )
    print(
        "\nlog–log slope vs depth (converged runs at depths > 0; interval over seeds; "
        "local slopes between consecutive depths; one power law = no significant curvature):",
        file=file,
    )
    for r in result.rates:
        if r.get("note"):
            print(f"  {r['metric']:>18}: {r['note']}", file=file)
            continue
        if math.isfinite(r.get("ci_low", math.nan)):
            ci = (
                f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] "
                f"({r['ci_method']}, {r['n_seeds']} seeds)"
            )
        else:
            ci = "(one seed: no interval)"
        local = ", ".join(f"{s:+.2f}" for _, _, s in r.get("local_slopes", []))
        power = {True: "yes", False: "NO (curved)", None: "untestable"}[r.get("one_power_law")]
        print(
            f"  {r['metric']:>18}: {r['slope']:+.3f} {ci}  r² {r['r2']:.3f}  "
            f"local [{local}]  one power law: {power}",
            file=file,
        )
    v = getattr(result, "verdict", None)
    if v:
        print(f"\nverdict (expect {v['expect']}): {v['verdict'].upper()}: {v['reason']}", file=file)
        for m in v.get("per_metric", []):
            print(f"  {m['metric']:>18}: {m['verdict']}: {m['reason']}", file=file)
    for key in ("results", "summary", "rates", "png", "pdf"):
        print(f"{key:>8}: {result.paths[key]}", file=file)


CliError = UserError  # the name earlier versions raised


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
    """Run a subcommand; returns the exit status (0; 2 user error; 130 interrupted)."""
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
    if getattr(args, "markdown", False):
        from reduction.aggregate import markdown_summary

        print(markdown_summary(result))
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
        print_summary(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
