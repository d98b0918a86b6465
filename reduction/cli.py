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
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
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


def print_summary(result: Any, file: Any = sys.stdout) -> None:
    """Mean ± std per depth of NC1–NC3 and the objective gap, then the fitted rates."""
    cols = ["nc1", "nc2", "nc3", "objective_gap", "train_acc"]
    print(f"\n{result.preset.name}: {len(result.rows)} runs -> {result.out_dir}", file=file)
    header = "depth  seeds  " + "  ".join(f"{c:>22}" for c in cols)
    print(header, file=file)
    for s in result.summary:
        cells = []
        for c in cols:
            m, sd = s.get(f"{c}_mean"), s.get(f"{c}_std")
            if m is None:
                cells.append(f"{'-':>22}")
            elif sd is None or not math.isfinite(sd):  # one seed: no spread to show
                cells.append(f"{_fmt(m):>10}{'':<12}")
            else:
                cells.append(f"{_fmt(m):>10} ± {_fmt(sd):<9}")
        print(f"{s['depth']:>5}  {s['n_seeds']:>5}  " + "  ".join(cells), file=file)
    print("\nlog–log slope vs depth (95% bootstrap interval over seeds):", file=file)
    for r in result.rates:
        if "slope" not in r:
            print(f"  {r['metric']:>15}: {r.get('note', 'n/a')}", file=file)
        elif math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]):
            print(
                f"  {r['metric']:>15}: {r['slope']:+.3f}  "
                f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                file=file,
            )
        else:
            print(f"  {r['metric']:>15}: {r['slope']:+.3f}  (one seed: no interval)", file=file)
    for c in result.budget_checks:
        print(
            f"  plateau check L={c['depth']}: J {c['objective']:.5g} -> {c['objective_2x']:.5g} "
            f"with 2x epochs ({100 * c['rel_improvement_2x']:+.2f}%)",
            file=file,
        )
    from reduction.sweep import BUDGET_PLATEAU_TOL

    moved = [c for c in result.budget_checks if abs(c["rel_improvement_2x"]) >= BUDGET_PLATEAU_TOL]
    if moved:
        print(
            f"  WARNING: twice the epochs still moved J by ≥ {100 * BUDGET_PLATEAU_TOL:g}% at "
            f"depth {', '.join(str(c['depth']) for c in moved)}: these runs have not reached a "
            "plateau; read the depth trends as budget-limited (raise --epochs).",
            file=file,
        )
    unsettled = [r for r in result.rows if not r.get("plateaued")]
    if unsettled:
        print(
            f"  WARNING: {len(unsettled)} run(s) changed J by ≥ 0.5% over their last 10% of "
            "epochs (column plateaued = False).",
            file=file,
        )
    for key in ("results", "summary", "rates", "png", "pdf"):
        print(f"{key:>8}: {result.paths[key]}", file=file)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reduction", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

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
        help="rerun the shallowest and deepest depth (first seed) with 2x epochs to test the "
        "plateau (default: the preset's choice)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("report", help="re-aggregate a (partial) sweep folder")
    r.add_argument("out", help="sweep folder")

    sub.add_parser("presets", help="list the presets")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from reduction.presets import PRESETS

    if args.command == "presets":
        for name, preset in PRESETS.items():
            tag = "GPU" if preset.gpu_sized else "CPU"
            depths = ",".join(map(str, preset.depths))
            print(f"{name:<26} [{tag}] depths {depths}; {len(preset.seeds)} seeds")
            print(f"{'':<26} {preset.description}")
        return 0

    from reduction.sweep import report, run_sweep

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
            )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
