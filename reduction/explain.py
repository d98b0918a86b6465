"""Reports that explain themselves: the headline numbers of a measurement first, each with its
meaning and which way is better; the rest on request (``all=True``, ``deepcollapse measure
--all``). Used by :func:`reduction.distance_to_optimum` (its result prints this way) and by
``deepcollapse measure``. Imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["HEADLINE", "LAMBDA_NOTE", "Report", "format_report"]

#: (key, better, meaning): the numbers a reader needs first, in this order (THEORY §3, §6, §10)
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("optimum_value", "-", "UFM*: the optimal value of the LayerNorm UFM of this data and λ"),
    ("gap", "lower", "fit + (λ/2)‖W‖² − UFM*: how far the last layer's objective is above the "
     "optimum; ≥ 0 for LayerNorm features (THEORY §3), 0 at the optimum"),
    ("rel_gap", "lower", "gap / UFM*"),
    ("nc1", "lower", "within- over between-class variability tr Σ_W / tr Σ_B; 0 when every "
     "feature sits at its class mean"),
    ("nc2_ufm", "lower", "the classifier's geometry against the optimum's (normalised Gram "
     "matrices, in [0, 2]); 0 = the optimum's shape (a simplex ETF for CE)"),
    ("nc3_ufm", "lower", "1 − mean cos(feature, the optimum's target for its class); 0 = features "
     "aligned with the classifier as at the optimum"),
    ("nc4", "lower", "share of samples whose classifier prediction differs from the nearest class "
     "mean; 0 at collapse"),
    ("w_norm_ratio", "→ 1", "mean classifier row norm over the optimum's"),
)

#: what λ means, printed under every report
LAMBDA_NOTE = (
    "λ is the coefficient of (λ/2)‖W‖² in the training objective, i.e. SGD's (or Adam's) coupled "
    "weight_decay, which adds λW to the gradient. AdamW's decoupled weight decay minimises no "
    "such objective, so this comparison does not apply to a network trained with it."
)


_STATUS = {
    "closed_form": "closed form: the global optimum",
    "certified": "numerical, certified global by the dual bound",
    "not_certified": "numerical, the best found: NOT certified global",
}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, Mapping):
        return "{…}"
    return str(v)


def format_report(result: Mapping[str, Any], *, all: bool = False, title: str | None = None,
                  skip: frozenset[str] = frozenset()) -> str:
    """The headline keys of :data:`HEADLINE` present in ``result`` as ``  key  value  better
    meaning`` lines (``title`` and a UFM line first), :data:`LAMBDA_NOTE`, then, with ``all``,
    every other key as ``  key  value``; else a line saying how to see them."""
    lines = [] if title is None else [title]
    if "radius" in result or "optimum_geometry" in result:
        lines.append(
            f"UFM: LayerNorm sphere of radius {_fmt(result.get('radius'))}"
            f"{', centred' if result.get('centered') else ''}; UFM* = "
            f"{_fmt(result.get('optimum_value'))} ({result.get('optimum_geometry')}; "
            f"{_STATUS.get(str(result.get('optimum_status')), result.get('optimum_method'))})"
        )
    head = [(k, b, m) for k, b, m in HEADLINE if k in result and k != "optimum_value"]
    shown = {k for k, _, _ in head} | {"optimum_value", "problem"} | set(skip)
    rest = [k for k in result if k not in shown]
    width = max([len(k) for k, _, _ in head] + [len(k) for k in rest] + [4])
    values = {k: _fmt(result[k]) for k, _, _ in head}
    vw = max([len(v) for v in values.values()] + [5])
    lines += ["", f"  {'':<{width}}  {'value':<{vw}}  {'better':<6}  meaning"]
    lines += [f"  {k:<{width}}  {values[k]:<{vw}}  {b:<6}  {m}" for k, b, m in head]
    lines += ["", LAMBDA_NOTE]
    if all:
        lines += ["", "everything else:"]
        lines += [f"  {k:<{width}}  {_fmt(result[k])}" for k in rest]
    elif rest:
        lines += [f"({len(rest)} more numbers: all=True, or --all on the command line)"]
    return "\n".join(lines)


class Report(dict):
    """A result dict that prints as :func:`format_report` (headline numbers first). Indexing,
    iteration, JSON and equality are those of the plain dict; :meth:`table` gives every key."""

    def __str__(self) -> str:
        return format_report(self)

    def table(self, all: bool = True) -> str:
        """The report with every number (``all``) or the headline only."""
        return format_report(self, all=all)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython / Jupyter display
        printer.text("Report(...)" if cycle else format_report(self))
