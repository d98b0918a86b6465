"""The column registry: every key a sweep's row holds, in one place, and the metrics among them.

A :class:`Column` says what a row key holds (type, meaning, which way the theory wants it to go
with depth, the section of docs/COLUMNS.md); a :class:`Metric` is a column that the tables,
plots and rates read: a label (plots), a sign (+1: larger means further from collapse / the
optimum, so the theory expects it to fall with depth; −1: the reverse; 0: no direction), whether
it is summarised per depth and fitted for a log–log rate, and its header in the CLI table
(``short``) and the Markdown table (``markdown``). The sweep's summary and rates, the plots'
labels, both renderers (:mod:`reduction.render`) and docs/COLUMNS.md (``python -m
reduction.registry > docs/COLUMNS.md``; a test checks it) read this registry, and :class:`Row`
types the rows (a test checks that the two list the same keys). Adding a metric is one
:func:`register_column` call and its :class:`Row` field here, and computing it in
:func:`reduction.compare.measure_run` or the metrics it calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

__all__ = [
    "COLUMNS",
    "METRICS",
    "Column",
    "Metric",
    "Row",
    "columns_markdown",
    "labels",
    "markdown_columns",
    "rate_metrics",
    "register_column",
    "register_metric",
    "summary_metrics",
    "table_columns",
]

#: the sections of docs/COLUMNS.md, in order (THEORY's section numbers)
SECTIONS: dict[str, str] = {
    "run": "The run",
    "objective": "The objective and the UFM optimum (§2, §3, §10)",
    "geometry": "Distance to the optimum's geometry (§10)",
    "collapse": "Collapse metrics of the last layer (§6)",
    "path": "How depth does its work (§10)",
    "convergence": "Convergence (§9)",
}


@dataclass(frozen=True)
class Column:
    """A key of a sweep's rows: its ``type`` (int, float, str, bool, dict), ``meaning``, which
    way is ``better`` as depth grows ("lower", "higher", "true", "→ 1" or "–"), its ``section``
    of docs/COLUMNS.md, and whether results.csv holds it (``in_csv``)."""

    name: str
    type: str
    meaning: str
    better: str = "–"
    section: str = "run"
    in_csv: bool = True


@dataclass(frozen=True)
class Metric(Column):
    """A column the tables, plots and rates read (see the module docstring)."""

    label: str = ""
    sign: int = 1
    summary: bool = True
    fitted: bool = False
    short: str = ""  # header in the CLI table ("" = not shown)
    markdown: str = ""  # header in the Markdown table ("" = not shown)


COLUMNS: dict[str, Column] = {}
METRICS: dict[str, Metric] = {}


def register_column(column: Column) -> Column:
    """Add ``column`` (a :class:`Metric` also to :data:`METRICS`); a name is registered once."""
    if column.name in COLUMNS:
        raise ValueError(f"column {column.name!r} is already registered")
    if column.section not in SECTIONS:
        raise ValueError(f"section must be one of {tuple(SECTIONS)}, got {column.section!r}")
    COLUMNS[column.name] = column
    if isinstance(column, Metric):
        METRICS[column.name] = column
    return column


def register_metric(metric: Metric) -> Metric:
    register_column(metric)
    return metric


def summary_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.summary)


def rate_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS.values() if m.fitted)


def labels() -> dict[str, str]:
    return {m.name: m.label for m in METRICS.values()}


def table_columns() -> list[tuple[str, str]]:
    """(metric, header) of the CLI's per-depth table."""
    return [(m.name, m.short) for m in METRICS.values() if m.short]


def markdown_columns() -> list[tuple[str, str]]:
    """(metric, header) of the Markdown per-depth table."""
    return [(m.name, m.markdown) for m in METRICS.values() if m.markdown]


def _c(name: str, type: str, meaning: str, better: str = "–", section: str = "run",
       in_csv: bool = True) -> None:  # fmt: skip
    register_column(Column(name, type, meaning, better, section, in_csv))


def _m(name: str, type: str, meaning: str, better: str, section: str, label: str,
       **kw: Any) -> None:  # fmt: skip
    register_column(Metric(name, type, meaning, better, section, label=label, **kw))


# ------------------------------------------------------------------------------------ the run
# (metrics are registered in the order the summaries, rates and tables list them)

_c("preset", "str", "the sweep preset's name")
_c("arch", "str", "the architecture (deepnet.ARCHS): rn1, rn2 (ResNets), t11, t12 (transformers) "
   "(§2)")  # fmt: skip
_c("norm", "str", "LayerNorm placement: post or pre (§2)")
_c("dataset", "str", "dataset name (§8)")
_c("depth", "int", "number of blocks L (0 = no blocks, the baseline)")
_c("seed", "int", "seed of the initialisation and minibatch order")
_c("data_seed", "int", "seed of the training subset (runs with the same one train on the same "
   "data)")  # fmt: skip
_c("width", "int", "feature width d")
_c("loss", "str", "ce or mse")
_c("lam", "float", "λ as configured")
_c("lam_schedule", "str", "constant, or inverse_depth (λ/max(L, 1))")
_c("lam_eff", "float", "the λ this run used (λ or λ/max(L, 1))")
_c("optimizer", "str", "the optimizer (deepnet.OPTIMIZERS: adam, sgd, lbfgs, newton_tr; §9); "
   "for a full-batch one (lbfgs, newton_tr) an epoch is an iteration")  # fmt: skip
_c("lr", "float", "learning rate (first-order steps)")
_c("epochs", "int", "budget: epochs, or full-batch iterations")
_c("batch_size", "int", "minibatch size (empty: full batch)")
_c("init", "str", "default (random) or continuation from the shallower run (§10)")
_c("n_train", "int", "training samples N")
_c("num_classes", "int", "classes K")
_c("fingerprint", "str", "16 hex digits of SHA-256 over the settings that produced the run (minus "
   "depth, seed and where it ran); a sweep keeps only rows with its own")  # fmt: skip
_c("status", "str", "ok, diverged (final) or failed (retried by the next sweep)")
_c("error", "str", "why a run diverged or failed (empty when ok)")
_c("worker_deaths", "int", "failed rows: how often the unit's worker process died (a unit that "
   "killed it twice is not retried)")  # fmt: skip
_c("unsaved", "bool", "the row exists only in memory: its folder could not be written")
_c("run_dir", "str", "the run's folder, relative to the sweep folder")
_c("config", "dict", "the run's full config (also in its config.json)", in_csv=False)
_c("traceback", "str", "a failed run's traceback", in_csv=False)
_c("device", "str", "where it trained (cpu, cuda:0)")
_c("wall_time_s", "float", "training time in seconds")
_c("epochs_done", "int", "epochs (full-batch: iterations) actually run")
_c("escape_steps", "int", "steps of escape probes whose points the run adopted; with "
   "epochs_done, what it used of its cap (§9)")  # fmt: skip
_c("lbfgs_resets", "int", "times the full-batch optimizer's state was emptied because it could "
   "make no progress: L-BFGS's memory after a failed line search, Newton-TR's collapsed trust "
   "region (§9)")  # fmt: skip

# ------------------------------------------------------------------------------ the objective

_OBJ = "objective"
_m("objective", "float", "J_L = fit + all penalties, float64", "lower", _OBJ,
   "objective $J_L$", short="J_L", markdown="J_L")  # fmt: skip
_c("fit", "float", "(1/N)Σℓ, the data term", "lower", _OBJ)
_c("classifier_penalty", "float", "(λ/2)‖W‖²", "–", _OBJ)
_c("embedding_penalty", "float", "the input embedding's penalty (0 unless decay_embedding)", "–",
   _OBJ)  # fmt: skip
_c("ufm_value", "float", "UFM*: the optimum of the LayerNorm UFM of this run's data and λ (a lower "
   "bound on J_L*)", "–", _OBJ)  # fmt: skip
_c("ufm_geometry", "str", "the UFM optimum's geometry (simplex_etf, orthogonal_frame, numerical, "
   "…)", "–", _OBJ)  # fmt: skip
_m("j_upper", "float", "min over depths L′ ≤ L of this seed's J_L′: an upper bound on J_L* (§10)",
   "lower", _OBJ, r"best upper bound $\min_{L'\leq L} J_{L'}$")  # fmt: skip
_c("sandwich_gap", "float", "j_upper − UFM*: the sandwich UFM* ≤ J_L* ≤ j_upper", "lower", _OBJ)
_c("monotone_excess", "float", "(J_L − j_upper(L − 1))/j_upper(L − 1); > 0 means J rose with depth",
   "lower", _OBJ)  # fmt: skip
_c("monotone_ok", "bool", "monotone_excess ≤ 1e-6: not provably away from the optimum (§10); runs "
   "that fail it are left out of the rates", "true", _OBJ)  # fmt: skip
_c("seed_excess", "float", "how far J_L is above the best run at its depth or shallower on the "
   "same data", "lower", _OBJ)  # fmt: skip
_c("seed_ok", "bool", "seed_excess ≤ 1%; runs that fail it are left out of the rates", "true", _OBJ)
_m("objective_gap", "float", "J_L − UFM* ≥ 0; the theory says → 0 with depth", "lower", _OBJ,
   r"objective gap $J_L - \mathrm{UFM}^*$", fitted=True, short="J_L − UFM*",
   markdown="J_L − UFM*")  # fmt: skip
_m("objective_rel_gap", "float", "(J_L − UFM*)/UFM* (the λ/L presets compare these)", "lower", _OBJ,
   r"relative gap $(J_L - \mathrm{UFM}^*)/\mathrm{UFM}^*$", fitted=True)  # fmt: skip
_m("objective_gap_per_lam", "float", "(J_L − UFM*)/λ_eff", "lower", _OBJ,
   r"gap per $\lambda$: $(J_L - \mathrm{UFM}^*)/\lambda$")  # fmt: skip
_m("classifier_gap", "float", "fit + (λ/2)‖W‖² − UFM* from the features, ≥ 0 (§3)", "lower", _OBJ,
   r"fit + $\frac{\lambda}{2}\|W\|^2 - \mathrm{UFM}^*$", fitted=True)  # fmt: skip
_m("classifier_rel_gap", "float", "classifier_gap / UFM*", "lower", _OBJ,
   "relative classifier gap")  # fmt: skip
_m("body_penalty", "float", "(λ/2)Σ‖·‖² over the blocks' weights; a lower bound on J_L − UFM* (§3)",
   "lower", _OBJ, "body penalty", short="body penalty", markdown="body penalty")  # fmt: skip

# ------------------------------------------------------------------------------------ the path

_PATH = "path"
_m("body_bound", "float", "the lower bound on the body penalty that the path implies: "
   "λP²/(8dL) (one-layer blocks), λP/(2√d) (two-layer blocks); NaN where it does not apply "
   "(transformers, pre-LN: deepnet.Arch.path_bound)", "–", _PATH,
   "path lower bound on the body penalty", sign=0)  # fmt: skip
_m("body_bound_ratio", "float", "body_penalty / body_bound ≥ 1", "–", _PATH,
   "body penalty / path bound (≥ 1)", sign=0)  # fmt: skip
_m("path_length", "float", "P = Σ_l s_l, the features' path through the blocks, with s_l the RMS "
   "over samples of ‖h_l − h_{l−1}‖", "–", _PATH, "feature path length", sign=0)  # fmt: skip
_c("path_distance", "float", "RMS over samples of ‖h_L − h_0‖, start to end (≤ path_length)", "–",
   _PATH)  # fmt: skip

# ------------------------------------------------------------------------------- collapse (§6)

_NC = "collapse"
_c("n_samples", "float", "samples measured (N)", "–", _NC)
_c("tr_sigma_w", "float", "tr Σ_W, within-class scatter (the features' units)", "lower", _NC)
_c("tr_sigma_b", "float", "tr Σ_B, between-class scatter", "–", _NC)
_m("nc1", "float", "tr Σ_W / tr Σ_B", "lower", _NC, r"NC1  tr$\Sigma_W$/tr$\Sigma_B$",
   fitted=True, short="NC1", markdown="NC1")  # fmt: skip
_m("nc1_papyan", "float", "(1/K) tr(Σ_W Σ_B⁺), rank-(K−1) pseudo-inverse", "lower", _NC,
   r"NC1  tr$(\Sigma_W\Sigma_B^+)/K$")  # fmt: skip
_m("cdnv", "float", "mean over class pairs of (σ_k² + σ_l²)/(2‖μ_k − μ_l‖²)", "lower", _NC, "CDNV")
_m("nc2", "float", "the classifier W against the simplex ETF, ‖G/‖G‖ − P_K/‖P_K‖‖_F", "lower", _NC,
   "NC2  (W vs ETF)", fitted=True, short="NC2")  # fmt: skip
_m("nc2_means", "float", "the centred class means against the simplex ETF", "lower", _NC,
   "NC2  (means vs ETF)")  # fmt: skip
_m("nc2_ortho", "float", "W against an orthogonal frame", "–", _NC, "NC2  (W vs orthogonal)",
   summary=False)  # fmt: skip
_c("nc2_means_ortho", "float", "the uncentred class means against an orthogonal frame", "–", _NC)
_c("equinorm_W", "float", "std/mean of W's row norms", "lower", _NC)
_c("equinorm_means", "float", "std/mean of the centred class means' norms", "lower", _NC)
_c("equiangularity_W", "float", "mean over pairs of abs(cos(w_k, w_l) + 1/(K−1))", "lower", _NC)
_c("equiangularity_means", "float", "the same for the centred class means", "lower", _NC)

# -------------------------------------------------------------------- the optimum's geometry

_GEO = "geometry"
_c("w_norm_ratio", "float", "mean classifier row norm over the optimum's", "→ 1", _GEO)
_c("procrustes_means", "float", "Procrustes distance of the normalised class means to the "
   "optimum's, in [0, 2]", "lower", _GEO)  # fmt: skip
_c("procrustes_W", "float", "the same for the classifier", "lower", _GEO)
_c("procrustes_joint", "float", "means and classifier with one shared rotation", "lower", _GEO)
_c("sphere_violation", "float", "how far the features are from the UFM's sphere (feasibility, "
   "relative)", "lower", _GEO)  # fmt: skip
_m("nc2_ufm", "float", "the classifier's Gram matrix against the optimum's (normalised), in "
   "[0, 2]", "lower", _GEO, "NC2  (W vs UFM optimum)", fitted=True,
   markdown="NC2 (vs optimum)")  # fmt: skip
_c("nc2_means_ufm", "float", "the same for the centred class means", "lower", _GEO)
_m("nc3", "float", "1 − mean cos(h_i, w_{y_i})", "lower", _NC, r"NC3  1 − mean cos$(h_i, w_{y_i})$",
   fitted=True, short="NC3", markdown="NC3")  # fmt: skip
_m("nc3_papyan", "float", "‖Wᵀ/‖W‖ − M̄ᵀ/‖M̄‖‖_F²", "lower", _NC, "NC3 (Papyan)")
_m("nc3_ufm", "float", "1 − mean cos(h_i, the optimum's target for y_i); 0 at any optimum",
   "lower", _GEO, "NC3  (vs UFM optimum)", fitted=True)  # fmt: skip
_m("self_duality", "float", "‖W M̄ᵀ/‖W M̄ᵀ‖_F − P_K/√(K−1)‖_F, in [0, 2]", "lower", _NC,
   r"self-duality $\|WM^\top/\|WM^\top\| - P_K/\sqrt{K-1}\|$")  # fmt: skip
_m("nc4", "float", "share of samples whose classifier argmax differs from the nearest class mean",
   "lower", _NC, "NC4  (1 − NCM agreement)")  # fmt: skip
_c("nc4_agreement", "float", "1 − nc4", "higher", _NC)
_m("procrustes_groups", "float", "contexts (language modelling): Procrustes distance of the "
   "per-context features to the GUFM optimum's (§11)", "lower", _GEO,
   "contexts: Procrustes distance to optimum", fitted=True)  # fmt: skip
_m("gram_distance_groups", "float", "contexts: distance of the normalised Gram matrices, in [0, 2] "
   "(§11)", "lower", _GEO, "contexts: Gram distance to optimum", fitted=True)  # fmt: skip
_c("n_groups", "int", "contexts: number of distinct contexts G", "–", _GEO)
_c("gufm_nc1", "float", "contexts: NC1 of the GUFM optimum itself over majority labels (not 0 in "
   "general)", "–", _GEO)  # fmt: skip
_c("gufm_collapsed", "bool", "contexts: whether the GUFM optimum is collapsed", "–", _GEO)

# -------------------------------------------------------------------------------- convergence

_CONV = "convergence"
_m("grad_norm", "float", "float64 ‖∇J‖ at the end", "lower", _CONV, r"$\|\nabla J\|$ at the end",
   sign=0, short="‖∇J‖", markdown="‖∇J‖")  # fmt: skip
_c("rel_change", "float", "relative decrease of J over the final window, at full step size",
   "lower", _CONV)  # fmt: skip
_c("converged", "bool", "grad_norm ≤ grad_tol, rel_change ≤ rel_tol and escape_rel ≤ escape_tol; "
   "the rates use converged runs only", "true", _CONV)  # fmt: skip
_c("escape_rel", "float", "the larger relative decrease of J that the escape probes (fresh "
   "L-BFGS, float64 Adam) found from the final point", "lower", _CONV)  # fmt: skip
_c("escape_lbfgs_rel", "float", "that of L-BFGS restarted with empty memory", "lower", _CONV)
_c("escape_adam_rel", "float", "that of full-batch float64 Adam at a small step", "lower", _CONV)
_c("stalled", "bool", "the full-batch optimizer could make no progress even from an empty state at "
   "the end", "–", _CONV)  # fmt: skip
_c("not_converged_because", "str", "which criterion failed", "–", _CONV)
_m("train_acc", "float", "training accuracy", "higher", _NC, "training accuracy", sign=-1)
_m("test_acc", "float", "test accuracy", "higher", _NC, "test accuracy", sign=-1,
   markdown="test acc")  # fmt: skip


class Row(TypedDict, total=False):
    """A sweep's row (row.json, a line of results.csv): the keys of :data:`COLUMNS`, typed (a
    test checks that the two agree). Which keys a row holds depends on its status and data."""

    preset: str
    arch: str
    norm: str
    dataset: str
    depth: int
    seed: int
    data_seed: int
    width: int
    loss: str
    lam: float
    lam_schedule: str
    lam_eff: float
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    init: str
    n_train: int
    num_classes: int
    fingerprint: str
    status: str
    error: str
    worker_deaths: int
    unsaved: bool
    run_dir: str
    config: dict[str, Any]
    traceback: str
    device: str
    wall_time_s: float
    epochs_done: int
    escape_steps: int
    lbfgs_resets: int
    objective: float
    fit: float
    classifier_penalty: float
    embedding_penalty: float
    ufm_value: float
    ufm_geometry: str
    j_upper: float
    sandwich_gap: float
    monotone_excess: float
    monotone_ok: bool
    seed_excess: float
    seed_ok: bool
    objective_gap: float
    objective_rel_gap: float
    objective_gap_per_lam: float
    classifier_gap: float
    classifier_rel_gap: float
    body_penalty: float
    body_bound: float
    body_bound_ratio: float
    path_length: float
    path_distance: float
    n_samples: float
    tr_sigma_w: float
    tr_sigma_b: float
    nc1: float
    nc1_papyan: float
    cdnv: float
    nc2: float
    nc2_means: float
    nc2_ortho: float
    nc2_means_ortho: float
    equinorm_W: float
    equinorm_means: float
    equiangularity_W: float
    equiangularity_means: float
    w_norm_ratio: float
    procrustes_means: float
    procrustes_W: float
    procrustes_joint: float
    sphere_violation: float
    nc2_ufm: float
    nc2_means_ufm: float
    nc3: float
    nc3_papyan: float
    nc3_ufm: float
    self_duality: float
    nc4: float
    nc4_agreement: float
    procrustes_groups: float
    gram_distance_groups: float
    n_groups: int
    gufm_nc1: float
    gufm_collapsed: bool
    grad_norm: float
    rel_change: float
    converged: bool
    escape_rel: float
    escape_lbfgs_rel: float
    escape_adam_rel: float
    stalled: bool
    not_converged_because: str
    train_acc: float
    test_acc: float


_INTRO = """\
# The columns of a sweep's results.csv

`results.csv` (and `load_results(out, "results")`) holds one row per (depth, seed) run. A row is
written by the sweep (`reduction/unit.py`, with `reduction/compare.py`'s `measure_run`),
completed by the report's certificates (`reduction/aggregate.py`), and read back by
`deepcollapse report`. "Better" says which way the theory wants a number to go as depth grows
(lower: towards the optimum or collapse); "–" means the column has no direction. Sections are
THEORY's. A number that is undefined for a run (one seed, a failed run, a metric that needs a
classifier) is empty in the CSV and NaN in the frame. Each run's full config is in
`runs/L<depth>-s<seed>/config.json`; the row's copy of it and a failed run's traceback are left
out of the CSV.

This file is generated from the column registry `reduction/registry.py` (`python -m
reduction.registry > docs/COLUMNS.md`); a test checks that the two agree, and that every key a
row holds is registered.

Other tables: `summary.csv` is long form (depth, metric, statistic ∈ n/mean/std/min/max, value)
over the registered summary metrics; `rates.csv` has one row per fitted metric (slope, interval,
r², local slopes, curvature; THEORY §12); `load_results(out, "layers")` and
`load_results(out, "history")` give the per-layer profiles and training histories in long form.
"""


def columns_markdown() -> str:
    """docs/COLUMNS.md: the intro, then one table per section of the registered columns."""
    out = [_INTRO.rstrip("\n")]
    for key, title in SECTIONS.items():
        out += ["", f"## {title}", "", "| column | type | meaning | better |",
                "| --- | --- | --- | --- |"]  # fmt: skip
        for c in COLUMNS.values():
            if c.section == key:
                note = "" if c.in_csv else " (not in the CSV)"
                out.append(f"| `{c.name}` | {c.type} | {c.meaning}{note} | {c.better} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(columns_markdown(), end="")
