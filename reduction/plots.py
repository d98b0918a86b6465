"""Collapse metrics against depth in the style of the paper's figures (log–log, seed band), the
progressive collapse through the layers of one network, and collapse over training."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from deepcollapse.output import missing_extra

try:
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
except ImportError:  # the [plots] extra is not installed: one line naming it
    raise missing_extra("matplotlib", "plots", "reduction's figures") from None

from .rates import (
    Rows,
    _depth_key,
    load_rows,
    rate_table,
    row_ok,
    run_status,
    summarize_by_depth,
)
from .registry import labels

__all__ = ["plot_depth", "plot_history", "plot_layer_profile"]

_LABELS = {**labels(), "gap": labels()["objective_gap"]}

BASELINE_LABEL = "no blocks (L = 0)"
FIT_LEGEND = "fitted power law (slope in the panel title)"
#: width of one panel in inches: three panels at the 150 dpi the sweep saves are ≤ 1400 px
PANEL_WIDTH = 3.0
MAX_COLUMNS = 3


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) for n panels: at most MAX_COLUMNS per row, rows as even as possible."""
    rows = math.ceil(n / MAX_COLUMNS)
    return rows, math.ceil(n / rows)


def _plain_log_ticks(ax: Any, axis: str = "y") -> None:
    """Plain numbers at a few ticks of a log axis (0.01, 0.1, 1, or 1, 2, 5 within a decade),
    and no labels on the minor ticks (matplotlib labels them when the range is short)."""
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    subs: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    if lo > 0 and hi > lo:
        for candidate in ((1.0,), (1.0, 2.0, 5.0)):  # the fewest ticks that give two labels
            first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
            inside = [m * 10.0**e for e in range(first, last + 1) for m in candidate
                      if lo <= m * 10.0**e <= hi]
            if len(inside) >= 2:
                subs = candidate
                break
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _shared_legend(fig: Figure, axes: Any, rename: dict[str, str] | None = None) -> None:
    """One legend for the figure, below the panels: each label once (the first handle drawn
    with it), labels renamed by ``rename`` where a prefix matches."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            for prefix, new in (rename or {}).items():
                if label.startswith(prefix):
                    label = new
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncols=min(len(seen), 3), fontsize=7, frameon=False)


def _positive_mean(values: Sequence[Any]) -> float:
    """Mean of the finite values, NaN when there are none or the mean is ≤ 0 (no log)."""
    v = np.array([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    m = float(v.mean()) if v.size else math.nan
    return m if m > 0 else math.nan


def plot_depth(
    table: Rows,
    metrics: Sequence[str] = ("nc1", "nc2", "nc3"),
    *,
    band: Literal["std", "minmax", "none"] = "std",
    single_axis: bool = False,
    slope: bool = True,
    converged_only: bool = True,
    ci: float = 0.95,
    title: str | None = None,
    xlabel: str = "depth L",
    labels: dict[str, str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot each metric's mean over seeds against depth on log–log axes.

    table: rows with "depth", "seed" and metric columns, or a CSV path (see summarize_by_depth),
    optionally "status" and "converged" (see :func:`reduction.rates.run_status`). Rows whose
    status is not "ok" are ignored. Depth-0 rows (the no-block baseline, which a log axis cannot
    place) are drawn as a horizontal dashed grey line at their mean, labelled "no blocks (L = 0)".
    With ``converged_only`` runs whose "converged" or "seed_ok" is False are drawn as hollow
    markers and left out of the mean line, the band and the fit.

    band: shaded band over seeds, "std" = mean ± sample std (lower edge clipped to the smallest
    seed value when mean − std ≤ 0, since a log axis cannot show it), "minmax" = min–max over
    seeds, "none". single_axis: all metrics on one axis (one colour each; the baselines dotted in
    the metric's colour) instead of one panel per metric. slope: the fitted power law of
    :func:`reduction.rates.rate_table` (per-seed slopes, interval at level ``ci``) dashed, with
    "slope s [lo, hi] (95% t)" in the legend; a metric that rate_table cannot fit (values ≤ 0,
    fewer than two depths) gets no line.

    Returns a matplotlib Figure (no pyplot state, safe under the Agg backend). Each panel holds
    one mean line per metric, one dashed fit line per fitted metric when ``slope``, one baseline
    line per metric with depth-0 rows and one hollow-marker line per metric with runs left out
    of the fit (unconverged, or above the best run on the same data).
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("need at least one metric to plot")
    if band not in ("std", "minmax", "none"):
        raise ValueError(f"band must be 'std', 'minmax' or 'none', got {band!r}")
    rows = load_rows(table)
    kinds = [run_status(r, converged_only=converged_only) for r in rows]
    used = [r for r, k in zip(rows, kinds) if k == "used"]
    unconverged = [r for r, k in zip(rows, kinds) if k in ("unconverged", "suboptimal")]
    baseline = [r for r, k in zip(rows, kinds) if k == "baseline" and row_ok(r)]
    if not used and not unconverged:
        raise ValueError("no usable runs at depth > 0 to plot (every row failed or has depth ≤ 0)")
    summary = summarize_by_depth(used, metrics) if used else []
    names = {**_LABELS, **(labels or {})}
    n_ax = 1 if single_axis else len(metrics)
    n_rows, n_cols = _grid(n_ax)
    if figsize is None:
        figsize = (5.0, 4.2) if single_axis else (PANEL_WIDTH * n_cols, 2.9 * n_rows + 0.7)
    fig = Figure(figsize=figsize, layout="constrained")
    grid = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for extra in grid[n_ax:]:
        extra.remove()
    axes = grid[:n_ax]
    depth = np.array([r["depth"] for r in summary], dtype=np.float64)
    ticks = sorted({float(_depth_key(r["depth"])) for r in (*used, *unconverged)})
    for i, m in enumerate(metrics):
        ax = axes[0 if single_axis else i]
        colour = f"C{i}" if single_axis else "C0"
        if summary:
            mean = np.array([r[f"{m}_mean"] for r in summary])
            ok = np.isfinite(mean) & (mean > 0)
            label = names.get(m, m) if single_axis else "mean over seeds"
            ax.plot(depth[ok], mean[ok], "o-", color=colour, lw=1.8, ms=4, label=label)
            if band != "none":
                lo, hi = _band(summary, m, band)
                keep = ok & np.isfinite(lo) & np.isfinite(hi)
                if keep.any():
                    ax.fill_between(depth[keep], lo[keep], hi[keep], color=colour, alpha=0.2, lw=0)
        _draw_unconverged(ax, unconverged, m, colour)
        _draw_baseline(ax, baseline, m, colour, names.get(m, m) if single_axis else None)
        fit_text = _draw_fit(ax, rows, m, colour, converged_only, ci) if slope and used else None
        ys = [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.lines]
        if not any(np.any(np.isfinite(y) & (y > 0)) for y in ys):
            # nothing a log axis can show (e.g. NC1 = inf when the features are constant): an
            # empty panel that says so, rather than a figure that cannot be saved
            ax.text(0.5, 0.5, "no finite positive values", transform=ax.transAxes, ha="center")
            ax.set_title(names.get(m, m), fontsize=10)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        # label the depths themselves: log-axis minor labels (2×10⁰, 3×10⁰, …) overlap
        ax.set_xticks(ticks, [f"{d:g}" for d in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        _plain_log_ticks(ax, "y")
        ax.set_xlabel(xlabel)
        if not single_axis:
            head = names.get(m, m)
            ax.set_title(head if fit_text is None else f"{head}\n{fit_text}", fontsize=9)
        ax.grid(True, which="major", alpha=0.25)
    if single_axis:
        axes[0].set_ylabel("metric")
    # one legend for the figure (the same entries in every panel), below the panels
    _shared_legend(fig, axes, {"slope ": FIT_LEGEND} if not single_axis else None)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _band(summary: list[dict[str, Any]], m: str, band: str) -> tuple[np.ndarray, np.ndarray]:
    mean = np.array([r[f"{m}_mean"] for r in summary])
    mn = np.array([r[f"{m}_min"] for r in summary])
    mx = np.array([r[f"{m}_max"] for r in summary])
    if band == "minmax":
        return np.where(mn > 0, mn, np.nan), np.where(mx > 0, mx, np.nan)
    sd = np.array([r[f"{m}_std"] for r in summary])
    lo = mean - sd
    lo = np.where(lo > 0, lo, np.where(mn > 0, mn, np.nan))  # log axis: clip, see docstring
    return lo, mean + sd


def _draw_unconverged(ax: Any, rows: list[dict[str, Any]], m: str, colour: str) -> None:
    pts = [(float(r["depth"]), float(r.get(m, math.nan))) for r in rows]
    pts = [(d, v) for d, v in pts if math.isfinite(v) and v > 0]
    if pts:
        d, v = zip(*pts)
        kinds = {run_status(r) for r in rows}
        why = {
            frozenset({"unconverged"}): "not converged",
            frozenset({"suboptimal"}): "above another seed",
        }.get(frozenset(kinds), "not converged or above another seed")
        ax.plot(d, v, "o", ls="none", mfc="none", mec=colour, ms=5, label=f"{why} (not fitted)")


def _draw_baseline(
    ax: Any, rows: list[dict[str, Any]], m: str, colour: str, name: str | None
) -> None:
    level = _positive_mean([r[m] for r in rows if m in r])
    if not math.isfinite(level):
        return
    if name is None:  # one panel per metric: the reference line is grey
        ax.axhline(level, ls="--", color="0.5", lw=1.0, label=BASELINE_LABEL)
    else:  # several metrics share the axis: keep the metric's colour, dotted
        ax.axhline(level, ls=":", color=colour, lw=1.0, label=f"{name}: {BASELINE_LABEL}")


def _draw_fit(
    ax: Any, rows: list[dict[str, Any]], m: str, colour: str, converged_only: bool, ci: float
) -> str | None:
    """Draw the fitted power law; return its label ("slope s [lo, hi] (95% t)"), or None."""
    fit = rate_table(rows, [m], converged_only=converged_only, ci=ci)[0]
    if fit["note"] is not None:
        return None  # not fittable (see rate_table): the mean line still shows
    depths = [
        float(_depth_key(r["depth"]))
        for r in rows
        if run_status(r, converged_only=converged_only) == "used"
    ]
    grid = np.geomspace(min(depths), max(depths), 50)
    s = fit["slope"]
    if fit["ci_method"] == "none":
        label = f"slope {s:+.2f} (one seed, no interval)"
    else:
        label = (
            f"slope {s:+.2f} [{fit['ci_low']:+.2f}, {fit['ci_high']:+.2f}] "
            f"({100 * fit['ci_level']:.0f}% {fit['ci_method']})"
        )
    ax.plot(
        grid,
        math.exp(fit["intercept"]) * grid**s,
        "--",
        color=colour,
        lw=1.0,
        alpha=0.8,
        label=label,
    )
    return label


def plot_layer_profile(
    profiles: Rows,
    metric: str = "nc1",
    *,
    cmap: str = "viridis",
    title: str | None = None,
    labels: dict[str, str] | None = None,
    figsize: tuple[float, float] = (5.0, 3.6),
) -> Figure:
    """Progressive collapse: ``metric`` against the relative layer index l/L, one curve per depth.

    profiles: rows (or a CSV path) {"depth": L, "seed": s, "layer": l with 0 ≤ l ≤ L, metric: v,
    ...}; rows whose "status" is not "ok" are ignored. Each curve is the mean over seeds at each
    layer (log y; a non-positive mean is not drawn). Depth 0 (no blocks) has the single layer
    l = 0, placed at l/L = 0 by convention and drawn as a marker. Colours run over the depths in
    increasing order (``cmap``); the legend names the depths.

    Returns a matplotlib Figure (no pyplot state) with one Line2D per depth.
    """
    rows = [r for r in load_rows(profiles) if row_ok(r)]
    if not rows:
        raise ValueError("no layer-profile rows to plot")
    groups: dict[Any, dict[int, list[Any]]] = {}
    for i, r in enumerate(rows):
        for key in ("depth", "layer", metric):
            if key not in r:
                raise ValueError(f"profile row {i} has no {key!r} column (columns: {sorted(r)})")
        depth = _depth_key(r["depth"])
        layer = _depth_key(r["layer"])
        if not isinstance(depth, int) or depth < 0:
            raise ValueError(f"profile row {i}: depth must be an integer ≥ 0, got {r['depth']!r}")
        if not isinstance(layer, int) or not 0 <= layer <= depth:
            raise ValueError(
                f"profile row {i}: layer must be an integer in [0, depth = {depth}], "
                f"got {r['layer']!r}"
            )
        groups.setdefault(depth, {}).setdefault(layer, []).append(r[metric])
    names = {**_LABELS, **(labels or {})}
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    depths = sorted(groups)
    colours = colormaps[cmap](np.linspace(0.0, 0.9, len(depths)))
    for depth, colour in zip(depths, colours):
        layers = sorted(groups[depth])
        mean = np.array([_positive_mean(groups[depth][lay]) for lay in layers])
        rel = np.array([lay / depth if depth else 0.0 for lay in layers])
        ok = np.isfinite(mean)
        if depth == 0:
            ax.plot(
                rel[ok], mean[ok], "D", ls="none", color=colour, ms=6, label="L = 0 (no blocks)"
            )
        else:
            ax.plot(rel[ok], mean[ok], "-", marker=".", color=colour, lw=1.5, label=f"L = {depth}")
    ax.set_yscale("log")
    _plain_log_ticks(ax, "y")
    ax.set_xlabel("relative layer l / L")
    ax.set_ylabel(names.get(metric, metric))
    ax.set_xlim(-0.03, 1.03)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, frameon=False, title="depth", title_fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_history(
    history: Rows,
    metrics: Sequence[str] = ("nc1", "nc3"),
    x: str = "epoch",
    *,
    xlabel: str | None = None,
    title: str | None = None,
    labels: dict[str, str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Collapse over training: one panel per metric, one line per split, log y, one legend.

    ``xlabel``: the x axis's label (default ``x``; "L-BFGS iteration" for an L-BFGS run, whose
    history counts iterations, not epochs).

    history: rows (or a CSV path) {x: e, "split": "train" | "test" | …, metric: v, ...}; a row
    without "split" is a training row, a row without the metric is skipped for it (test metrics
    may be recorded less often). Several rows at one (split, x), e.g. several seeds, are averaged;
    non-positive means are not drawn (log axis). Splits appear train, test, then the rest sorted.

    Returns a matplotlib Figure (no pyplot state) with one Line2D per (metric, split) that has data.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("need at least one metric to plot")
    rows = load_rows(history)
    if not rows:
        raise ValueError("no history rows to plot")
    for i, r in enumerate(rows):
        if x not in r:
            raise ValueError(f"history row {i} has no {x!r} column (columns: {sorted(r)})")
    for m in metrics:
        if not any(m in r for r in rows):
            raise ValueError(f"no history row has a {m!r} column (columns: {sorted(rows[0])})")
    order = {"train": 0, "test": 1}
    splits = sorted(
        {str(r.get("split", "train")) for r in rows}, key=lambda s: (order.get(s, 2), s)
    )
    names = {**_LABELS, **(labels or {})}
    n_rows, n_cols = _grid(len(metrics))
    if figsize is None:
        figsize = (PANEL_WIDTH * n_cols, 2.7 * n_rows + 0.5)
    fig = Figure(figsize=figsize, layout="constrained")
    grid = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for extra in grid[len(metrics):]:
        extra.remove()
    axes = grid[: len(metrics)]
    styles = {"train": "-", "test": "--"}
    for ax, m in zip(axes, metrics):
        for j, split in enumerate(splits):
            by_x: dict[float, list[Any]] = {}
            for r in rows:
                if str(r.get("split", "train")) == split and m in r:
                    by_x.setdefault(float(r[x]), []).append(r[m])
            xs = np.array(sorted(by_x))
            ys = np.array([_positive_mean(by_x[v]) for v in xs])
            ok = np.isfinite(ys)
            if ok.any():
                ax.plot(xs[ok], ys[ok], styles.get(split, ":"), color=f"C{j}", lw=1.5, label=split)
        ax.set_yscale("log")
        _plain_log_ticks(ax, "y")
        ax.set_xlabel(x if xlabel is None else xlabel)
        ax.set_title(names.get(m, m), fontsize=9)
        ax.grid(True, which="major", alpha=0.25)
    _shared_legend(fig, axes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
