"""The metric registry: every quantity a sweep reports, in one place.

A metric has a name (the column of results.csv), a label (plots and tables), a sign (+1: larger
means further from collapse / the optimum, so the theory expects it to fall with depth; 0: no
direction), and whether it is summarised per depth and fitted for a log–log rate. The sweep's
summary and rates, the plots' labels and the CLI's columns read this registry: adding a metric is
one :func:`register_metric` call (and computing it in ``sweep.measure_run``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    sign: int = 1
    summary: bool = True
    fitted: bool = False
    short: str = ""  # column header in the CLI table ("" = not shown)


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def summary_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.summary)


def rate_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.fitted)


def labels() -> dict[str, str]:
    return {m.name: m.label for m in METRICS.values()}


def table_columns() -> list[tuple[str, str]]:
    return [(m.name, m.short) for m in METRICS.values() if m.short]


for _m in (
    Metric("objective", "objective $J_L$", short="J_L"),
    Metric("j_upper", r"best upper bound $\min_{L'\leq L} J_{L'}$"),
    Metric(
        "objective_gap", r"objective gap $J_L - \mathrm{UFM}^*$", fitted=True, short="J_L − UFM*"
    ),
    Metric(
        "objective_rel_gap", r"relative gap $(J_L - \mathrm{UFM}^*)/\mathrm{UFM}^*$", fitted=True
    ),
    Metric("objective_gap_per_lam", r"gap per $\lambda$: $(J_L - \mathrm{UFM}^*)/\lambda$"),
    Metric("classifier_gap", r"fit + $\frac{\lambda}{2}\|W\|^2 - \mathrm{UFM}^*$", fitted=True),
    Metric("classifier_rel_gap", "relative classifier gap"),
    Metric("body_penalty", "body penalty", short="body penalty"),
    Metric("body_bound", "path lower bound on the body penalty", sign=0),
    Metric("body_bound_ratio", "body penalty / path bound (≥ 1)", sign=0),
    Metric("path_length", "feature path length", sign=0),
    Metric("nc1", r"NC1  tr$\Sigma_W$/tr$\Sigma_B$", fitted=True, short="NC1"),
    Metric("nc1_papyan", r"NC1  tr$(\Sigma_W\Sigma_B^+)/K$"),
    Metric("cdnv", "CDNV"),
    Metric("nc2", "NC2  (W vs ETF)", fitted=True, short="NC2"),
    Metric("nc2_means", "NC2  (means vs ETF)"),
    Metric("nc2_ortho", "NC2  (W vs orthogonal)", summary=False),
    Metric("nc2_ufm", "NC2  (W vs UFM optimum)", fitted=True),
    Metric("nc3", r"NC3  1 − mean cos$(h_i, w_{y_i})$", fitted=True, short="NC3"),
    Metric("nc3_papyan", "NC3 (Papyan)"),
    Metric("nc3_ufm", "NC3  (vs UFM optimum)", fitted=True),
    Metric("self_duality", r"self-duality $\|WM^\top/\|WM^\top\| - P_K/\sqrt{K-1}\|$"),
    Metric("nc4", "NC4  (1 − NCM agreement)"),
    Metric("procrustes_groups", "contexts: Procrustes distance to optimum", fitted=True),
    Metric("gram_distance_groups", "contexts: Gram distance to optimum", fitted=True),
    Metric("grad_norm", r"$\|\nabla J\|$ at the end", sign=0, short="‖∇J‖"),
    Metric("train_acc", "training accuracy", sign=-1),
    Metric("test_acc", "test accuracy", sign=-1),
):
    register_metric(_m)
