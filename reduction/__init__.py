"""deepcollapse.reduction: collapse metrics, distance to the UFM optimum, depth rates and plots.

Every public name is loaded on first use (PEP 562), so ``import reduction`` is instant and a
command that needs only the presets, the report or the UFM never imports torch or matplotlib:
the metrics, ``collect`` and the distance load torch, the plots load matplotlib, the rates
scipy.stats, the sweep all of them.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: public name -> the module that defines it
_NAMES: dict[str, str] = {
    "collect": "collect",
    "classifier_features": "collect",
    "NegativeGapError": "distance",
    "distance_to_optimum": "distance",
    "problem_from_features": "distance",
    "procrustes_distance": "distance",
    "Report": "explain",
    "format_report": "explain",
    "measure_features": "measure",
    "measure_npz": "measure",
    "CollapseAccumulator": "metrics",
    "collapse_metrics": "metrics",
    "stream_collapse_metrics": "metrics",
    "plot_depth": "plots",
    "plot_history": "plots",
    "plot_layer_profile": "plots",
    "RateFit": "rates",
    "fit_rate": "rates",
    "preset_verdict": "rates",
    "rate_table": "rates",
    "summarize_by_depth": "rates",
    "verdict": "rates",
    "run_sweep": "sweep",
    "Sweep": "plan",
    "ufm_problem_for": "compare",
    "measure_run": "compare",
    "SweepResult": "results",
    "report": "aggregate",
    "read_rows": "layout",
    "monotone_certificate": "aggregate",
    "load_results": "aggregate",
    "to_markdown": "render",
    "to_text": "render",
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
}


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'reduction' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"reduction.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


class _Package(types.ModuleType):
    """The import system binds a submodule as an attribute of its package when it is first
    imported; ``reduction.collect`` is the function (as when this package imported it eagerly),
    so a submodule of the same name as a public function binds the function instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _NAMES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = ["__version__", *sorted(_NAMES)]
