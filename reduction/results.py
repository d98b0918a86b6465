"""What a sweep produced, readable without torch: :class:`SweepResult` (built by
:func:`reduction.aggregate.report`, shown by :mod:`reduction.render`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reduction.presets import Preset
from reduction.registry import Row

__all__ = ["SweepResult"]


@dataclass
class SweepResult:
    """What a sweep produced: one row per run, the per-depth summary, the rates and the files."""

    out_dir: Path
    preset: Preset
    rows: list[Row]
    summary: list[dict[str, Any]]
    rates: list[dict[str, Any]]
    budget_checks: list[dict[str, Any]] = field(default_factory=list)
    monotone: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    trained: int = 0  # units trained (not skipped) in this call
    fingerprint: str = ""  # of the settings every row in ``rows`` was made with
    excluded: list[dict[str, Any]] = field(default_factory=list)  # rows of other settings
    written: bool = True  # False: report wrote nothing (a read-only folder)
