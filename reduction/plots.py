"""Collapse metrics against depth in the style of the paper's figures (log–log, seed band)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .rates import Rows, fit_rate, load_rows, summarize_by_depth, values_matrix

__all__ = ["plot_depth"]

_LABELS = {
    "nc1": r"NC1  tr$\Sigma_W$/tr$\Sigma_B$",
    "nc1_papyan": r"NC1  tr$(\Sigma_W\Sigma_B^+)/K$",
    "cdnv": "CDNV",
    "nc2": "NC2  (W vs ETF)",
    "nc2_means": "NC2  (means vs ETF)",
    "nc2_ortho": "NC2  (W vs orthogonal)",
    "nc3": r"NC3  1 − mean cos$(h_i, w_{y_i})$",
    "nc3_papyan": "NC3 (Papyan)",
    "nc4": "NC4  (1 − NCM agreement)",
    "gap": r"objective gap $J_L - \mathrm{UFM}^*$",
    "objective_gap": r"objective gap $J_L - \mathrm{UFM}^*$",
    "classifier_gap": r"fit + $\frac{\lambda}{2}\|W\|^2 - \mathrm{UFM}^*$",
    "body_penalty": "body penalty",
}


def plot_depth(
    table: Rows,
    metrics: Sequence[str] = ("nc1", "nc2", "nc3"),
    *,
    band: Literal["std", "minmax", "none"] = "std",
    single_axis: bool = False,
    slope: bool = True,
    title: str | None = None,
    xlabel: str = "depth L",
    labels: dict[str, str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot each metric's mean over seeds against depth on log–log axes.

    table: rows with "depth", "seed" and metric columns, or a CSV path (see summarize_by_depth).
    band: shaded band over seeds, "std" = mean ± sample std (lower edge clipped to the smallest
    seed value when mean − std ≤ 0, since a log axis cannot show it), "minmax" = min–max over
    seeds, "none". single_axis: all metrics on one axis (one colour each) instead of one panel per
    metric. slope: fit_rate on the per-seed values and draw the fitted power law dashed, with
    "slope s [lo, hi]" (95% bootstrap CI over seeds) in the legend; metrics with values ≤ 0 are
    fitted on their positive values only.

    Returns a matplotlib Figure (no pyplot state, safe under the Agg backend); each panel holds one
    mean line per metric plus one dashed fit line per metric when ``slope``.
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("need at least one metric to plot")
    if band not in ("std", "minmax", "none"):
        raise ValueError(f"band must be 'std', 'minmax' or 'none', got {band!r}")
    rows = load_rows(table)
    summary = summarize_by_depth(rows, metrics)
    names = {**_LABELS, **(labels or {})}
    n_ax = 1 if single_axis else len(metrics)
    if figsize is None:
        figsize = (5.0, 3.8) if single_axis else (3.6 * n_ax, 3.4)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, n_ax, squeeze=False)[0]
    depth = np.array([r["depth"] for r in summary], dtype=np.float64)
    for i, m in enumerate(metrics):
        ax = axes[0 if single_axis else i]
        colour = f"C{i}" if single_axis else "C0"
        mean = np.array([r[f"{m}_mean"] for r in summary])
        ok = np.isfinite(mean) & (mean > 0)
        label = names.get(m, m) if single_axis else "mean over seeds"
        ax.plot(depth[ok], mean[ok], "o-", color=colour, lw=1.8, ms=4, label=label)
        if band != "none":
            lo, hi = _band(summary, m, band)
            keep = ok & np.isfinite(lo) & np.isfinite(hi)
            if keep.any():
                ax.fill_between(depth[keep], lo[keep], hi[keep], color=colour, alpha=0.2, lw=0)
        if slope:
            _draw_fit(ax, rows, m, colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        # label the depths themselves: log-axis minor labels (2×10⁰, 3×10⁰, …) overlap
        ax.set_xticks(depth, [f"{d:g}" for d in depth])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        if not single_axis:
            ax.set_title(names.get(m, m), fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, frameon=False)
    if single_axis:
        axes[0].set_ylabel("metric")
    if title:
        fig.suptitle(title)
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


def _draw_fit(ax: Any, rows: list[dict[str, Any]], m: str, colour: str) -> None:
    L, V = values_matrix(rows, m)
    try:
        fit = fit_rate(L, V, drop_invalid=True)
    except ValueError:
        return  # fewer than two usable depths: nothing to fit, the mean line still shows
    grid = np.geomspace(L.min(), L.max(), 50)
    ax.plot(
        grid,
        fit.prefactor * grid**fit.slope,
        "--",
        color=colour,
        lw=1.0,
        alpha=0.8,
        label=f"slope {fit.slope:+.2f} [{fit.ci_low:+.2f}, {fit.ci_high:+.2f}]",
    )
