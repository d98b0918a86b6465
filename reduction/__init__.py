"""deepcollapse.reduction: collapse metrics, distance to the UFM optimum, depth rates and plots."""

from importlib.metadata import PackageNotFoundError, version

from .distance import NegativeGapError, distance_to_optimum, procrustes_distance
from .metrics import CollapseAccumulator, collapse_metrics, stream_collapse_metrics
from .plots import plot_depth
from .rates import RateFit, fit_rate, summarize_by_depth

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CollapseAccumulator",
    "NegativeGapError",
    "RateFit",
    "__version__",
    "collapse_metrics",
    "distance_to_optimum",
    "fit_rate",
    "plot_depth",
    "procrustes_distance",
    "stream_collapse_metrics",
    "summarize_by_depth",
]
