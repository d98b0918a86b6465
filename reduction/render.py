"""One renderer of a sweep's result, with two front ends: plain text (``deepcollapse report``,
``deepcollapse sweep``) and Markdown (``deepcollapse report --markdown``, docs/RESULTS.md, the
notebooks).

:func:`document` states the result once, as blocks: the per-depth table (mean ± std over seeds,
converged runs out of all; columns from :mod:`reduction.registry`), UFM*, the certificates, the
2×-budget checks, warnings about runs that did not converge, failed or sit at the trivial point,
the rates table and the verdict. :func:`to_markdown` and :func:`to_text` only lay the blocks
out. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reduction.rates import row_ok
from reduction.registry import markdown_columns
from reduction.results import SweepResult

__all__ = [
    "Line",
    "Table",
    "document",
    "seed_certificate_lines",
    "to_markdown",
    "to_text",
    "ufm_line",
]


@dataclass(frozen=True)
class Table:
    """A table; ``caption`` (text front end only) says what it holds."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Line:
    """One line of prose; ``parts`` are (text, strong) pairs. An empty line separates blocks."""

    parts: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def of(cls, text: str) -> Line:
        return cls(((text, False),)) if text else cls()

    def plain(self) -> str:
        return "".join(t for t, _ in self.parts)


Block = Table | Line


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _depth(x: Any) -> str:
    x = float(x)
    if math.isnan(x):
        return "–"
    return "∞" if math.isinf(x) else f"{x:.3g}"


def ufm_line(rows: Sequence[Mapping[str, Any]]) -> str:
    """UFM* of the sweep: one value, or (λ/L) its range over the depths."""
    by_depth = {r["depth"]: r["ufm_value"] for r in rows if r.get("ufm_value") is not None}
    if not by_depth:
        return ""
    values = sorted(set(by_depth.values()))
    if len(values) == 1:
        return f"UFM* = {values[0]:.6g} (a lower bound on every J_L*)."
    lo, hi = min(by_depth), max(by_depth)
    return (
        f"UFM* changes with depth (λ depends on L): {by_depth[lo]:.6g} at L = {lo} to "
        f"{by_depth[hi]:.6g} at L = {hi}; each row's gap is to its own UFM*."
    )


def seed_certificate_lines(mono: Mapping[str, Any]) -> list[str]:
    """The seed certificate in words: one line when it holds, else one line per depth."""
    if "seed_ok" not in mono:
        return []
    tol = 100 * float(mono["seed_tolerance"])
    if mono["seed_ok"]:
        return [
            "Seed certificate: no run is more than "
            f"{tol:g}% above the best run at its depth or shallower on the same data."
        ]
    lines = []
    for depth in sorted({v["depth"] for v in mono["seed_violations"]}):
        vs = [v for v in mono["seed_violations"] if v["depth"] == depth]
        worst = max(vs, key=lambda v: v["rel_excess"])
        lines.append(
            f"Above the best run on the same data (> {tol:g}%): L = {depth}, seed(s) "
            f"{', '.join(str(v['seed']) for v in vs)}, up to {100 * worst['rel_excess']:+.1f}% "
            f"above J = {worst['best_objective']:.5g} (seed {worst['best_seed']}, L = "
            f"{worst['best_depth']}); left out of the rates."
        )
    return lines


def _depth_table(result: SweepResult) -> Table:
    rows = [r for r in result.rows if row_ok(r)]
    cols = [(k, h) for k, h in markdown_columns() if any(k in r for r in rows)]
    body = []
    for s in result.summary:
        cells = []
        for k, _ in cols:
            m, sd = s.get(f"{k}_mean"), s.get(f"{k}_std")
            spread = f" ± {_fmt(sd, 2)}" if sd is not None and math.isfinite(sd) else ""
            cells.append(_fmt(m) + spread)
        converged = f"{s.get('n_converged', 0)}/{s['n_seeds']}"
        body.append((str(s["depth"]), converged, *cells))
    headers = ("L", "converged", *(h for _, h in cols))
    return Table(headers, tuple(body), f"{result.preset.name}: mean ± std over seeds")


def _certificate_lines(result: SweepResult) -> list[str]:
    mono = result.monotone or {}
    out = []
    if mono.get("ok"):
        out.append(
            "Monotone certificate: every run is at or below every shallower run of its seed "
            f"(tolerance {mono.get('tolerance'):g})."
        )
    for v in mono.get("violations", []):
        out.append(
            f"Not at the optimum: seed {v['seed']}, depth {v['depth']}: J = {v['objective']:.5g} "
            f"> {v['shallower_objective']:.5g} at depth {v['shallower_depth']}."
        )
    out += seed_certificate_lines(mono)
    for c in result.budget_checks:
        if c.get("status") == "ok":
            ran = c.get("iterations_run")
            out.append(
                f"2×-budget rerun at L = {c['depth']}"
                + (f" ({ran} more iterations, fresh optimiser state)" if ran is not None else "")
                + f": J {c['objective']:.5g} → {c['objective_2x']:.5g} "
                f"({100 * c['rel_improvement_2x']:+.2f}%; rerun converged: {c['converged_2x']}) → "
                f"{'passes' if c['ok'] else 'fails'} (tolerance {100 * c['tolerance']:g}%)."
            )
        else:
            out.append(f"2×-budget rerun at L = {c['depth']}: {c.get('status')} → fails.")
    return out


def _warning_lines(result: SweepResult) -> list[str]:
    """Runs that did not converge, failed or sit at the trivial point (nothing when none)."""
    ok = [r for r in result.rows if row_ok(r)]
    out = []
    unconverged = [r for r in ok if not r.get("converged")]
    if unconverged:
        out.append(
            f"Not converged: {len(unconverged)} run(s) did not meet the convergence criteria "
            "(column converged = False; not_converged_because says why); the rates use "
            "converged runs only."
        )
    # J = log K is the value at W = 0: a stationary point, not the optimum when classes differ
    trivial = [
        r for r in ok
        if r.get("num_classes") and abs(r["objective"] / math.log(r["num_classes"]) - 1) < 1e-4
    ]  # fmt: skip
    if trivial:
        out.append(f"Trivial point: {len(trivial)} run(s) sit at J ≈ log K (W = 0).")
    for r in result.rows:
        if not row_ok(r):
            out.append(
                f"Failed: depth {r['depth']} seed {r['seed']}: {r['status']}: {r.get('error')}"
            )
    return out


def _rates_table(result: SweepResult) -> Table:
    body = []
    for r in result.rates:
        if r.get("note"):
            body.append((r["metric"], "–", r["note"], "", "", "", ""))
            continue
        ci = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}] ({r['ci_method']}, {r['n_seeds']} seeds)"
        local = ", ".join(f"{x[2]:+.2f}" for x in r.get("local_slopes", []))
        if r.get("limit_note") or not math.isfinite(float(r.get("limit", math.nan))):
            limit, alpha = f"– ({r.get('limit_note') or 'no fit'})", "–"
        else:
            limit = f"{r['limit']:.3g} [{r['limit_ci_low']:.3g}, {r['limit_ci_high']:.3g}]"
            alpha = f"{r['limit_alpha']:.2f}"
        target = float(r.get("limit_target", math.nan))
        if math.isfinite(target) and math.isfinite(float(r.get("limit", math.nan))):
            lo, hi = r["depth_at_target_ci"]
            depth = f"{_depth(r['depth_at_target'])} [{_depth(lo)}, {_depth(hi)}] (to {target:.3g})"
        else:
            depth = "–"
        body.append((r["metric"], f"{r['slope']:+.3f}", ci, local, limit, alpha, depth))
    headers = (
        "metric", "slope", "95% interval", "local slopes", "limit a of a + C·L^−α [95%]", "α",
        "depth where the fit reaches the target",
    )  # fmt: skip
    return Table(
        headers,
        tuple(body),
        "log–log slope vs depth (converged runs at depths > 0; interval over seeds; local slopes "
        "between consecutive depths), and the fit of a limit a + C·L^−α",
    )


def document(result: SweepResult) -> list[Block]:
    """The result as blocks, in the order both front ends show them."""
    rows = [r for r in result.rows if row_ok(r)]
    blocks: list[Block] = [_depth_table(result), Line(), Line.of(ufm_line(rows))]
    blocks += [Line.of(s) for s in _certificate_lines(result)]
    blocks += [Line.of(s) for s in _warning_lines(result)]
    blocks += [Line(), _rates_table(result)]
    v = result.verdict or {}
    if v:
        parts = (
            ("Verdict", True), (f" (expect {v['expect']}): ", False), (v["verdict"], True),
            (f": {v['reason']}", False),
        )  # fmt: skip
        blocks += [Line(), Line(parts)]
        blocks += [
            Line.of(f"- {m['metric']}: {m['verdict']}: {m['reason']}")
            for m in v.get("per_metric", [])
        ]
    return blocks


def _md_row(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def to_markdown(result: SweepResult) -> str:
    """The result as Markdown (tables as pipes, strong parts in ``**``)."""
    out: list[str] = []
    for block in document(result):
        if isinstance(block, Table):
            out.append(_md_row(block.headers))
            out.append("|" + "---|" * len(block.headers))
            out += [_md_row(row) for row in block.rows]
        else:
            out.append("".join(f"**{t}**" if strong else t for t, strong in block.parts))
    return "\n".join(out)


def to_text(result: SweepResult, *, files: bool = True) -> str:
    """The result as plain text: a title, aligned tables with their captions, the same lines,
    and (``files``) where the tables and figures were written."""
    out = [f"{result.preset.name}: {len(result.rows)} runs -> {result.out_dir}", ""]
    for block in document(result):
        if isinstance(block, Table):
            grid = [block.headers, *block.rows]
            widths = [max(len(r[i]) for r in grid) for i in range(len(block.headers))]
            if block.caption:
                out.append(block.caption + ":")
            for r in grid:
                out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        else:
            out.append(block.plain())
    if files:
        out.append("")
        out += [f"{key:>8}: {result.paths[key]}" for key in ("results", "summary", "rates", "png")]
        out.append(f"{'pdf':>8}: {result.paths['pdf']}")
    return "\n".join(out)
