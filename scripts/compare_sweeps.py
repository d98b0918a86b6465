"""How far apart are two runs of the same sweep? (THEORY §9: reproducibility tolerances)

    python scripts/compare_sweeps.py SWEEP_A SWEEP_B [--metrics objective,nc1,nc3] [--json]

Two folders of the same preset (e.g. one run with 1 thread per run and one with 2, which sums
in another order as another CPU does) are compared run by run: for every (depth, seed) present
in both, the relative difference |a − b|/|a| of each metric, then its maximum over the runs, and
whether the two agree on which runs converged and on the certificates. The largest relative
difference of J is the run-to-run noise that every tolerance (the seed certificate, a claim that
results reproduce) must sit above.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

DEFAULT_METRICS = ("objective", "objective_gap", "nc1", "nc3", "grad_norm")


def _rows(folder: Path) -> dict[tuple[int, int], dict[str, Any]]:
    from reduction.aggregate import read_rows

    if not (folder / "runs").is_dir():
        raise ValueError(f"{folder} is not a sweep folder (no runs/)")
    return {(int(r["depth"]), int(r["seed"])): r for r in read_rows(folder)}


def compare(a: Path, b: Path, metrics: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, Any]:
    """Per-run relative differences of ``metrics`` between two sweep folders, their maxima, and
    the runs whose convergence verdict differs."""
    ra, rb = _rows(a), _rows(b)
    shared = sorted(set(ra) & set(rb))
    if not shared:
        raise ValueError(f"{a} and {b} share no finished run")
    per_run, worst = [], {m: 0.0 for m in metrics}
    for key in shared:
        x, y = ra[key], rb[key]
        if x.get("status") != "ok" or y.get("status") != "ok":
            continue
        entry: dict[str, Any] = {"depth": key[0], "seed": key[1]}
        for m in metrics:
            u, v = float(x.get(m, math.nan)), float(y.get(m, math.nan))
            rel = abs(u - v) / abs(u) if u else abs(u - v)
            entry[m] = rel
            if math.isfinite(rel):
                worst[m] = max(worst[m], rel)
        entry["converged"] = (bool(x.get("converged")), bool(y.get("converged")))
        per_run.append(entry)
    differs = [(e["depth"], e["seed"]) for e in per_run if e["converged"][0] != e["converged"][1]]
    return {
        "a": str(a),
        "b": str(b),
        "runs_compared": len(per_run),
        "only_in_a": sorted(set(ra) - set(rb)),
        "only_in_b": sorted(set(rb) - set(ra)),
        "max_rel_diff": worst,
        "converged_differs": differs,
        "per_run": per_run,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="a sweep folder")
    ap.add_argument("b", type=Path, help="another run of the same sweep")
    ap.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="columns to compare")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = ap.parse_args(argv)
    try:
        result = compare(args.a, args.b, tuple(m for m in args.metrics.split(",") if m))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{result['runs_compared']} runs in both folders")
    for m, v in result["max_rel_diff"].items():
        print(f"  {m:>15}: largest relative difference {v:.2e}")
    worst = max(result["per_run"], key=lambda e: e.get("objective", 0.0))
    print(f"  J differs most at L = {worst['depth']}, seed {worst['seed']}")
    if result["converged_differs"]:
        print(f"  converged differs at (depth, seed) {result['converged_differs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
