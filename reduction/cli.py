"""Command line: ``python -m reduction {sweep, report, presets}``.

Examples::

    python -m reduction presets
    python -m reduction sweep --preset cpu-rn1-mnist --out results/cpu-rn1-mnist
    python -m reduction sweep --preset cpu-rn1-mnist --depths 2,8,34 --seeds 0 --set epochs=1000
    python -m reduction report results/cpu-rn1-mnist
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


class CliError(Exception):
    """A user error: printed as one ``error: …`` line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(message)


def build_parser() -> argparse.ArgumentParser:
    from reduction import __version__

    p = ArgumentParser(prog="python -m reduction", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"deepcollapse {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    s = sub.add_parser("sweep", help="run or resume a depth sweep")
    s.add_argument("--preset", required=True, help="preset name (see `presets`)")
    s.add_argument("--out", help="sweep folder (default results/<preset>); reuse it to resume")
    s.add_argument("--depths", type=_int_list, help="comma-separated depths (default: preset's)")
    s.add_argument("--seeds", type=_int_list, help="comma-separated seeds (default: preset's)")
    s.add_argument("--epochs", type=int, help="epochs per run")
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
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")

    r = sub.add_parser("report", help="re-aggregate a (partial) sweep folder")
    r.add_argument("out", help="sweep folder")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--markdown", action="store_true", help="print the summary as Markdown tables")

    ps = sub.add_parser("presets", help="list the presets")
    ps.add_argument("--json", action="store_true", help="print the presets as JSON")

    from reduction.measure import add_measure_arguments

    add_measure_arguments(
        sub.add_parser(
            "measure", help="metrics and distance to the UFM optimum of saved features (.npz)"
        )
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "measure":
        from reduction.measure import run_measure

        return run_measure(args)
    from reduction.presets import PRESETS

    if args.command == "presets":
        if args.json:
            from dataclasses import asdict

            print(json.dumps({n: asdict(p) for n, p in PRESETS.items()}, indent=2))
            return 0
        for name, preset in PRESETS.items():
            tag = "GPU" if preset.gpu_sized else "CPU"
            depths = ",".join(map(str, preset.depths))
            print(f"{name:<26} [{tag}] depths {depths}; {len(preset.seeds)} seeds")
            print(f"{'':<26} {preset.description}")
        return 0

    from reduction.aggregate import report
    from reduction.sweep import run_sweep

    try:
        if args.command == "report":
            result = report(Path(args.out))
        else:
            result = run_sweep(
                args.preset,
                args.out,
                depths=args.depths,
                seeds=args.seeds,
                overrides=_overrides(args.set, args),
                budget_check=args.budget_check,
                progress=not args.quiet,
                workers=args.workers,
                backend=args.backend,
                address=args.address,
                gpus_per_unit=args.gpus_per_unit,
                batch_seeds=args.batch_seeds,
            )
    except (ValueError, FileNotFoundError, CliError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --out, a full disk: one line, nothing lost
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    if getattr(args, "markdown", False):
        from reduction.aggregate import markdown_summary

        print(markdown_summary(result))
        return 0
    if args.json:
        from deepnet.io import json_default

        payload = {
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
        print(json.dumps(payload, indent=2, default=json_default))
    else:
        print_summary(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
