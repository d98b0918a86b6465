"""Report a sweep folder: results table, sandwich and monotone certificate, summary, rates,
verdict and figures (THEORY §10, §12). Everything is rebuilt from the run folders, so a partial
or finished sweep can be re-reported at any time (``deepcollapse report OUT``); the words are
:mod:`reduction.render`'s. Torch-free at import: the fingerprints are checked through
:class:`deepnet.RunConfig` when a report is made.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from deepcollapse.files import atomic_write, json_default, write_json
from reduction.layout import RUNS, SPEC, read_rows
from reduction.plan import Sweep, SweepIdentity, config_disagreement
from reduction.plots import plot_depth
from reduction.presets import Preset
from reduction.rates import (
    GAP_FRACTION,
    preset_verdict,
    rate_table,
    row_ok,
    summarize_by_depth,
)
from reduction.registry import Row, rate_metrics, summary_metrics
from reduction.results import SweepResult

__all__ = ["load_results", "monotone_certificate", "read_rows", "report", "split_rows"]

#: metrics aggregated per depth, and those fitted for a log–log rate (see reduction.registry)
SUMMARY_METRICS: tuple[str, ...] = summary_metrics()
RATE_METRICS: tuple[str, ...] = rate_metrics()
#: J_L may exceed the best shallower J_{L'} by this relative amount (float rounding) before the
#: monotone certificate flags the run as "not at the optimum" (THEORY §10)
MONOTONE_TOL = 1e-6
#: a run may exceed the best run at its depth or shallower on the same data by this relative
#: amount before the seed certificate calls it materially suboptimal [choice] (THEORY §10): twice
#: the largest run-to-run difference of J measured on the main job between 1 and 2 threads per
#: run (0.9%: another summation order, as on another CPU), so that a flag is never noise
SEED_TOL = 2e-2

log = logging.getLogger("deepcollapse")


def split_rows(
    out: Path, rows: Sequence[Row], identity: SweepIdentity
) -> tuple[list[Row], list[dict[str, Any]]]:
    """(rows of the sweep ``identity``, the others with why): a row is the sweep's when the
    fingerprint of its config is the sweep's and, for a finished run, the config.json beside it
    says the same. Each kept row's ``fingerprint`` is set to the one recomputed from its config
    (a stored value is never trusted)."""
    from deepnet import RunConfig

    keep: list[Row] = []
    excluded: list[dict[str, Any]] = []
    for row in rows:
        why = ""
        config: RunConfig | None
        try:
            config = RunConfig.from_dict(dict(row.get("config") or {}))
        except (ValueError, TypeError) as err:
            why, config = f"its config is unreadable ({err})", None
        if config is not None:
            why = identity.diff(config)
            if not why and row_ok(row) and not row.get("unsaved"):
                why = _config_json_disagrees(out / row["run_dir"], config)
        if why:
            excluded.append(
                {k: row.get(k) for k in ("run_dir", "depth", "seed", "status", "fingerprint")}
                | {"why": why}
            )
            continue
        keep.append({**row, "fingerprint": identity.fingerprint})
    return keep, excluded


def _config_json_disagrees(run_dir: Path, config: Any) -> str:
    """Why the config.json beside a finished row does not say what the row says ('' if it does)."""
    from deepnet import RunConfig

    path = run_dir / "config.json"
    if not path.exists():
        return ""
    try:  # through RunConfig: fields a later version added take their defaults on both sides
        written = RunConfig.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return "its config.json is not a readable run config (an edited or damaged folder)"
    d = config_disagreement(written, config.to_dict(), ("config.json", "row.json"))
    return f"config.json disagrees with row.json ({d}): an edited folder" if d else ""


def monotone_certificate(rows: list[Row]) -> dict[str, Any]:
    """Add the sandwich and monotone columns to ``rows`` (in place) and summarise violations.

    Zero blocks are the identity, so J_L* ≤ J_{L'}* ≤ J_{L'}(run) for L' ≤ L (THEORY §10), and
    per seed: j_upper(L) = min_{L' ≤ L} J_{L'}(run) ≥ J_L* ≥ UFM*. A run with
    J_L(run) > min_{L' < L} J_{L'}(run) (1 + MONOTONE_TOL) is provably not at the optimum.
    The returned summary also carries the seed certificate across seeds on the same data
    (``seed_tolerance``, ``seed_violations``, ``seed_ok``; see :func:`_seed_certificate`).
    """
    violations = []
    for seed in sorted({r["seed"] for r in rows}):
        best: float = math.inf
        best_depth = None
        for r in sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["depth"]):
            if not row_ok(r):
                continue
            J = float(r["objective"])
            excess = (J - best) / abs(best) if math.isfinite(best) else 0.0
            r["monotone_excess"] = excess
            r["monotone_ok"] = bool(excess <= MONOTONE_TOL)
            if not r["monotone_ok"]:
                violations.append(
                    {
                        "seed": seed,
                        "depth": r["depth"],
                        "objective": J,
                        "shallower_depth": best_depth,
                        "shallower_objective": best,
                        "rel_excess": excess,
                    }
                )
            if J < best:
                best, best_depth = J, r["depth"]
            r["j_upper"] = best
            r["sandwich_gap"] = best - float(r["ufm_value"])
    seeds = _seed_certificate(rows)
    return {"tolerance": MONOTONE_TOL, "violations": violations, "ok": not violations, **seeds}


def _seed_certificate(rows: list[Row]) -> dict[str, Any]:
    """Across seeds: runs with the same fixed ``data_seed`` train on the same data, so every one
    of them bounds J_L* from above; j_best(L) = min over those runs at depths L' ≤ L. A run with
    J_L(run) > j_best(L)(1 + SEED_TOL) sits at a materially worse stationary point than another
    seed found (columns ``seed_excess``, ``seed_ok``); rate fits leave it out. Rows carry the
    subset seed they trained on as ``data_seed``; where each seed draws its own data, a group
    holds one seed and the check compares it with its own shallower runs only."""
    shared = [r for r in rows if row_ok(r) and r.get("data_seed") not in (None, "")]
    above = []
    for data_seed in sorted({str(r["data_seed"]) for r in shared}):
        group = sorted(
            (r for r in shared if str(r["data_seed"]) == data_seed), key=lambda r: r["depth"]
        )
        best, best_run = math.inf, None
        for depth in sorted({r["depth"] for r in group}):
            at = [r for r in group if r["depth"] == depth]
            for r in at:  # shallower runs and the other seeds at this depth
                if float(r["objective"]) < best:
                    best, best_run = float(r["objective"]), r
            for r in at:
                excess = (float(r["objective"]) - best) / abs(best)
                r["seed_excess"] = excess
                r["seed_ok"] = bool(excess <= SEED_TOL)
                if not r["seed_ok"]:
                    assert best_run is not None
                    above.append(
                        {
                            "seed": r["seed"],
                            "depth": depth,
                            "objective": float(r["objective"]),
                            "best_seed": best_run["seed"],
                            "best_depth": best_run["depth"],
                            "best_objective": best,
                            "rel_excess": excess,
                        }
                    )
    return {"seed_tolerance": SEED_TOL, "seed_violations": above, "seed_ok": not above}


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    atomic_write(path, lambda fh: fh.write(buf.getvalue()), mode="w")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=json_default)
    if value is None:
        return ""
    return value


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the nested config and traceback (the CSV's columns)."""
    return [{k: v for k, v in r.items() if k not in ("config", "traceback")} for r in rows]


def _load_sweep(out: Path) -> Sweep:
    """The sweep recorded in OUT/sweep.json (ValueError, one line, without)."""
    path = out / SPEC
    if not path.exists():
        raise ValueError(f"{out} is not a sweep folder (no sweep.json)")
    try:
        return Sweep.from_spec(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is unreadable ({type(err).__name__}: {err}); rerun the sweep command to "
            "check the run folders against it and write it anew"
        ) from None


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (a read-only folder or file system: no)."""
    return os.access(folder, os.W_OK | os.X_OK)


def report(
    out_dir: str | os.PathLike[str],
    *,
    sweep: Sweep | None = None,
    budget_checks: Sequence[Mapping[str, Any]] | None = None,
    tables_only: bool = False,
    extra_rows: Sequence[Row] = (),
    write: bool | None = None,
    dest: str | os.PathLike[str] | None = None,
) -> SweepResult:
    """Rebuild results.csv from the run folders; unless ``tables_only``, also the summary
    (mean ± std per depth over the runs that finished), the rates (converged runs at depths > 0
    only, t-intervals over seeds, fit quality), the verdict against the preset's expectation,
    the monotone certificate, summary.json and the figure (PNG and PDF).

    Only rows made with the settings of ``sweep`` (default: the one sweep.json records) enter;
    the others are listed in summary.json under ``excluded``. ``extra_rows``: rows that exist
    only in memory (their folder could not be written). When no run finished, the tables hold
    the failed rows and the verdict names their first causes. The files go to ``dest`` (default
    OUT); ``write=False``, or a read-only OUT without ``dest``, writes nothing. With
    ``tables_only`` only results.csv is rebuilt and the result holds the rows alone.
    """
    out = Path(out_dir)
    if sweep is None:
        sweep = _load_sweep(out)
    preset, identity = sweep.preset, sweep.identity
    target = Path(dest) if dest is not None else out
    if write is None:
        write = dest is not None or _writable(out)
        if not write:
            log.warning(
                "notice: %s is read-only: report writes nothing (dest= writes elsewhere)", out
            )
    on_disk = read_rows(out)
    seen = {r["run_dir"] for r in on_disk}
    extra = [cast(Row, dict(r)) for r in extra_rows if r.get("run_dir") not in seen]
    everything = sorted([*on_disk, *extra], key=lambda r: (r["depth"], r["seed"]))
    rows, excluded = split_rows(out, everything, identity)
    monotone = monotone_certificate(rows)
    paths = {
        "results": target / "results.csv",
        "summary": target / "summary.csv",
        "rates": target / "rates.csv",
        "json": target / "summary.json",
        "png": target / "figure.png",
        "pdf": target / "figure.pdf",
        "layers_png": target / "figure_layers.png",
        "history_png": target / "figure_history.png",
    }
    if write:
        _write_csv(paths["results"], table_rows(rows))
    ok = [r for r in rows if row_ok(r)]
    if tables_only:
        return SweepResult(out, preset, list(rows), [], [], fingerprint=identity.fingerprint,
                           excluded=excluded, written=bool(write))  # fmt: skip
    if budget_checks is None:
        old = out / "summary.json"
        try:
            budget_checks = json.loads(old.read_text()).get("budget_checks", [])
        except (OSError, ValueError, AttributeError):
            budget_checks = []
    failed = [
        {k: r.get(k) for k in ("depth", "seed", "status", "error", "run_dir")}
        for r in rows
        if not row_ok(r)
    ]
    if ok:
        metrics = [m for m in SUMMARY_METRICS if m in ok[0]]
        summary = summarize_by_depth(ok, metrics)
        for s in summary:
            group = [r for r in ok if r["depth"] == s["depth"]]
            s["n_converged"] = sum(bool(r.get("converged")) for r in group)
        rates = rate_table(
            ok, [m for m in RATE_METRICS if m in ok[0]], converged_only=True, targets=_targets(ok)
        )
        verdict = preset_verdict(rates, preset.expect, list(preset.verdict_metrics))
    else:
        metrics, summary, rates = [], [], []
        verdict = _no_runs_verdict(out, preset, failed, excluded)
    payload = {
        "preset": asdict(preset),
        "expect": preset.expect,
        "fingerprint": identity.fingerprint,
        "n_runs": len(rows),
        "n_ok": len(ok),
        "n_converged": sum(bool(r.get("converged")) for r in ok),
        "failed": failed,
        "excluded": excluded,
        "monotone": monotone,
        "verdict": verdict,
        "summary": summary,
        "rates": rates,
        "budget_checks": list(budget_checks),
        "budget_ok": all(c.get("ok") for c in budget_checks) if budget_checks else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if write:
        _write_csv(paths["summary"], long_summary(summary, metrics))
        _write_csv(paths["rates"], rates)
        write_json(paths["json"], payload)
    if write and ok:
        fig_metrics = tuple(m for m in preset.metrics if m in ok[0])
        if any(r["depth"] > 0 for r in ok):
            fig = plot_depth(table_rows(ok), metrics=fig_metrics, title=_title(preset, ok))
            for key in ("png", "pdf"):  # plot_depth's Figure holds no pyplot state
                _save_figure(paths[key], fig, key)
        _extra_figures(out, ok, paths)
    return SweepResult(
        out_dir=out,
        preset=preset,
        rows=list(rows),
        summary=summary,
        rates=rates,
        budget_checks=[dict(c) for c in budget_checks],
        monotone=monotone,
        verdict=verdict,
        paths=paths,
        fingerprint=identity.fingerprint,
        excluded=excluded,
        written=bool(write),
    )


def _targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Where the depth estimate looks (THEORY §12): the gap J_L − UFM* at GAP_FRACTION·UFM*
    (when every row shares one UFM*), the relative gap at GAP_FRACTION."""
    out = {"objective_rel_gap": GAP_FRACTION}
    values = {float(r["ufm_value"]) for r in rows if r.get("ufm_value") is not None}
    if len(values) == 1:
        out["objective_gap"] = GAP_FRACTION * values.pop()
    return out


#: how many failed runs the verdict of a sweep without finished runs names
FIRST_CAUSES = 3


def _no_runs_verdict(
    out: Path,
    preset: Preset,
    failed: Sequence[Mapping[str, Any]],
    excluded: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The verdict when no run finished: what happened instead, with the first causes, and the
    failed rows themselves (so that ``--json`` shows every error)."""
    if failed:
        causes = "; ".join(
            f"L{f['depth']} s{f['seed']}: {f['status']}: {f.get('error') or '?'}"
            for f in failed[:FIRST_CAUSES]
        )
        more = f" (and {len(failed) - FIRST_CAUSES} more)" if len(failed) > FIRST_CAUSES else ""
        reason = f"all {len(failed)} run(s) failed or diverged; first causes: {causes}{more}"
    elif excluded:
        reason = f"every run under {out / RUNS} was made with other settings ({len(excluded)})"
    else:
        reason = f"no run under {out / RUNS} has finished yet"
    return {
        "expect": preset.expect,
        "verdict": "no finished runs",
        "reason": reason,
        "per_metric": [],
        "failed": list(failed),
    }


def long_summary(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict]:
    """The per-depth summary in long form: one row per (depth, metric, statistic), statistic in
    n, mean, std (over seeds, ddof 1), min, max."""
    out = []
    for s in summary:
        for m in metrics:
            for stat in ("n", "mean", "std", "min", "max"):
                key = f"{m}_{stat}"
                if key in s:
                    out.append(
                        {"depth": s["depth"], "metric": m, "statistic": stat, "value": s[key]}
                    )
    return out


def load_results(out_dir: str | os.PathLike[str], table: str = "results") -> Any:
    """A sweep's table as a pandas DataFrame.

    - ``"results"``: one row per run; the columns are described in docs/COLUMNS.md.
    - ``"summary"``: long form (depth, metric, statistic, value); ``.pivot_table(index="depth",
      columns=["metric", "statistic"], values="value")`` gives the wide view.
    - ``"rates"``: one row per metric.
    - ``"layers"``: the per-layer profiles of every run (its profile.json), long form: one row per
      (depth, seed, layer) with rel_layer = l/L, nc1, nc3, block_sq_norm, displacement, and the
      run's converged.
    - ``"history"``: the training histories (each run's metrics.json), long form: one row per
      (depth, seed, epoch, metric, split) with its value; split is "train" or "test" for the
      NC metrics recorded on both (nc1_train → metric nc1, split train) and "train" otherwise;
      ``optimizer`` says whether an epoch is an L-BFGS iteration.

    Cells the CSV holds as JSON (lists such as local_slopes, dicts) come back as lists and dicts.
    """
    from deepcollapse.output import require

    pd = require("pandas", "train", "load_results")
    names = {"results": "results.csv", "summary": "summary.csv", "rates": "rates.csv"}
    out = Path(out_dir)
    if table in ("layers", "history"):
        if not (out / "results.csv").exists():
            raise FileNotFoundError(f"{out / 'results.csv'} does not exist: run or report the "
                                    "sweep first")
        return pd.DataFrame(_layers(out) if table == "layers" else _history(out))
    if table not in names:
        raise ValueError(f"table must be one of {sorted([*names, 'layers', 'history'])}, "
                         f"got {table!r}")
    path = out / names[table]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run or report the sweep first")
    df = pd.read_csv(path)
    for col in df.columns:
        if pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            continue
        cells = df[col].dropna()
        if len(cells) and cells.map(lambda v: isinstance(v, str) and v[:1] in "[{").all():
            df[col] = df[col].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return df


def _finished(out: Path) -> list[Row]:
    return [r for r in read_rows(out) if row_ok(r)]


def _layers(out: Path) -> list[dict[str, Any]]:
    rows = []
    for r in _finished(out):
        path = out / r["run_dir"] / "profile.json"
        if path.exists():
            for layer in json.loads(path.read_text()):
                rows.append({"depth": r["depth"], "seed": r["seed"],
                             "converged": r.get("converged"), **layer})
    return rows


def _history(out: Path) -> list[dict[str, Any]]:
    rows = []
    for r in _finished(out):
        path = out / r["run_dir"] / "metrics.json"
        if not path.exists():
            continue
        for h in json.loads(path.read_text()).get("history", []):
            base = {"depth": r["depth"], "seed": r["seed"], "optimizer": r.get("optimizer"),
                    "epoch": h["epoch"], "phase": h.get("phase")}
            for key, value in h.items():
                if key in ("epoch", "phase", "lr") or not isinstance(value, int | float):
                    continue
                metric, split = key, "train"
                for suffix in ("_train", "_test"):
                    if key.endswith(suffix):
                        metric, split = key[: -len(suffix)], suffix[1:]
                rows.append({**base, "metric": metric, "split": split, "value": float(value)})
    return rows


def _save_figure(path: Path, fig: Any, fmt: str = "png") -> None:
    def save(fh: Any) -> None:
        fig.savefig(fh, format=fmt, dpi=150, bbox_inches="tight")

    atomic_write(path, save)


def _extra_figures(out: Path, rows: Sequence[Mapping[str, Any]], paths: dict[str, Path]) -> None:
    """Progressive collapse (NC1 against l/L, one curve per depth) from each run's
    profile.json, and collapse over training (train and test NC1, NC3) of the deepest run of the
    first seed, from its history."""
    from reduction.plots import plot_history, plot_layer_profile

    profiles = []
    for r in rows:
        path = out / r["run_dir"] / "profile.json"
        if path.exists():
            for layer in json.loads(path.read_text()):
                profiles.append({"depth": r["depth"], "seed": r["seed"], **layer})
    if profiles:
        _save_figure(paths["layers_png"], plot_layer_profile(profiles, "nc1"))
    seed = min(r["seed"] for r in rows)
    deepest = max((r for r in rows if r["seed"] == seed), key=lambda r: r["depth"])
    metrics_file = out / deepest["run_dir"] / "metrics.json"
    if metrics_file.exists():
        history = json.loads(metrics_file.read_text()).get("history", [])
        points = []
        for h in history:
            for split in ("train", "test"):
                if f"nc1_{split}" in h:
                    points.append(
                        {"epoch": h["epoch"], "split": split, "nc1": h[f"nc1_{split}"],
                         "nc3": h[f"nc3_{split}"]}
                    )  # fmt: skip
        if points:
            fig = plot_history(
                points, ("nc1", "nc3"), title=f"depth {deepest['depth']}, seed {seed}",
                xlabel=_unit(deepest.get("optimizer")),
            )
            _save_figure(paths["history_png"], fig)


def _unit(optimizer: str | None) -> str:
    """The x axis of a history: a full-batch optimizer's iterations (its label), else epochs."""
    from deepnet import OPTIMIZERS

    spec = OPTIMIZERS.get(optimizer or "")
    return f"{spec.label} iteration" if spec is not None and spec.full_batch else "epoch"


def _title(preset: Preset, rows: Sequence[Mapping[str, Any]]) -> str:
    r = rows[0]
    lam = f"λ={r['lam']:g}" + ("/L" if r.get("lam_schedule") == "inverse_depth" else "")
    seeds = len({x["seed"] for x in rows})
    return (f"{preset.name}: {r['arch']} ({r['norm']}-LN) on {r['dataset']}, {lam}, {seeds} "
            f"seed{'' if seeds == 1 else 's'}")
