"""deepcollapse.reduction: collapse metrics, distance to the UFM optimum, depth rates and plots."""

from importlib.metadata import PackageNotFoundError, version

from .collect import collect
from .distance import (
    NegativeGapError,
    distance_to_optimum,
    problem_from_features,
    procrustes_distance,
)
from .measure import measure_features, measure_npz
from .metrics import CollapseAccumulator, collapse_metrics, stream_collapse_metrics
from .plots import plot_depth, plot_history, plot_layer_profile
from .rates import RateFit, fit_rate, preset_verdict, rate_table, summarize_by_depth, verdict

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_SWEEP_NAMES = {"run_sweep", "SweepResult", "ufm_problem_for"}
_REPORT_NAMES = {"report", "read_rows", "monotone_certificate", "load_results"}
_PRESET_NAMES = {"PRESETS", "Preset", "get_preset"}


def __getattr__(name: str) -> object:
    """The sweep imports torch (through deepnet): load it only when one of its names is used."""
    if name in _SWEEP_NAMES:
        from . import sweep

        return getattr(sweep, name)
    if name in _REPORT_NAMES:
        from . import aggregate

        return getattr(aggregate, name)
    if name in _PRESET_NAMES:
        from . import presets

        return getattr(presets, name)
    raise AttributeError(f"module 'reduction' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "CollapseAccumulator",
    "NegativeGapError",
    "Preset",
    "RateFit",
    "SweepResult",
    "__version__",
    "collapse_metrics",
    "collect",
    "distance_to_optimum",
    "fit_rate",
    "get_preset",
    "load_results",
    "measure_features",
    "measure_npz",
    "monotone_certificate",
    "plot_depth",
    "plot_history",
    "plot_layer_profile",
    "preset_verdict",
    "problem_from_features",
    "procrustes_distance",
    "rate_table",
    "read_rows",
    "report",
    "run_sweep",
    "stream_collapse_metrics",
    "summarize_by_depth",
    "ufm_problem_for",
    "verdict",
]
