"""What a sweep produced, readable without torch: :class:`SweepResult` and :func:`read_row`.

``deepcollapse report`` rebuilds a sweep folder's tables and figures from these alone, so it
needs neither torch nor the training code (reduction.sweep re-exports both names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reduction.presets import Preset

__all__ = ["SweepResult", "read_row"]


@dataclass
class SweepResult:
    """What a sweep produced: one row per run, the per-depth summary, the rates and the files."""

    out_dir: Path
    preset: Preset
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    rates: list[dict[str, Any]]
    budget_checks: list[dict[str, Any]] = field(default_factory=list)
    monotone: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    trained: int = 0  # units trained (not skipped) in this call


def read_row(run_dir: Path) -> dict[str, Any] | None:
    """The unit's row, or None when it is unfinished (no row, or one that is not a row)."""
    path = run_dir / "row.json"
    if not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None  # a corrupt row is treated as unfinished and redone
    if not isinstance(row, dict) or not {"depth", "seed", "status"} <= set(row):
        return None
    return row
