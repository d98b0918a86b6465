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

__all__ = ["OK_ROW_KEYS", "ROW_KEYS", "STATUSES", "SweepResult", "read_row"]

#: keys every row has; a row.json without them (cut short, edited) is unfinished and redone
ROW_KEYS = ("depth", "seed", "status", "run_dir", "config")
#: keys every finished ("ok") row has: what the certificates, rates and tables read
OK_ROW_KEYS = (
    "arch", "dataset", "lam", "objective", "fit", "ufm_value", "objective_gap", "grad_norm",
    "converged", "nc1", "nc3",
)  # fmt: skip
STATUSES = ("ok", "diverged", "failed")


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
    fingerprint: str = ""  # of the settings every row in ``rows`` was made with
    excluded: list[dict[str, Any]] = field(default_factory=list)  # rows of other settings
    written: bool = True  # False: report wrote nothing (a read-only folder)


def read_row(run_dir: Path) -> dict[str, Any] | None:
    """The unit's row, or None when it is unfinished: no row, or one that is not a complete row
    of this folder (corrupt, cut short, missing keys, another folder's): it is redone."""
    path = run_dir / "row.json"
    if not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None  # a corrupt row is treated as unfinished and redone
    if not isinstance(row, dict) or not set(ROW_KEYS) <= set(row):
        return None
    if row["status"] not in STATUSES or not isinstance(row["config"], dict):
        return None
    if f"L{row['depth']}-s{row['seed']}" != run_dir.name:
        return None
    if row["status"] == "ok" and not set(OK_ROW_KEYS) <= set(row):
        return None
    return row
