"""The layout of a sweep folder, and reading and writing its rows (torch-free: the report and
every executor read it). The one place that knows the folder and file names::

    OUT/sweep.json            the preset and overrides that define the sweep (reduction.plan)
    OUT/.lock                 one sweep per folder
    OUT/runs/L{depth}-s{seed}/config.json, metrics.json, checkpoint.pt, features.npz  (deepnet)
    OUT/runs/L{depth}-s{seed}/row.json    the finished unit: config + objective split + metrics
    OUT/runs/L{depth}-s{seed}/.running    while a process trains it: {"pid": …}
    OUT/budget2x/runs/...     the 2×-budget reruns of the extreme depths (reduction.budget)
    OUT/results.csv, summary.csv, rates.csv, summary.json, figure*.png/.pdf  (reduction.aggregate)

A unit is finished exactly when its ``row.json`` exists, is complete (every key a row must have)
and is written atomically, last: a sweep that is killed and restarted skips finished units.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import cast

from deepcollapse.files import write_json
from reduction.registry import Row

__all__ = [
    "BUDGET",
    "OK_ROW_KEYS",
    "ROW",
    "ROW_KEYS",
    "RUNNING",
    "RUNS",
    "SPEC",
    "STATUSES",
    "budget_out",
    "clear_running",
    "mark_running",
    "parse_unit",
    "quarantine",
    "read_row",
    "read_rows",
    "run_dir_of",
    "running_pid",
    "unit_folder",
    "unit_name",
    "write_row",
]

SPEC = "sweep.json"
RUNS = "runs"
BUDGET = "budget2x"
ROW = "row.json"
RUNNING = ".running"
LOCK = ".lock"
WORKER_DEATHS = "worker_deaths.json"

#: keys every row has; a row.json without them (cut short, edited) is unfinished and redone
ROW_KEYS = ("depth", "seed", "status", "run_dir", "config")
#: keys every finished ("ok") row has: what the certificates, rates and tables read
OK_ROW_KEYS = (
    "arch", "dataset", "lam", "objective", "fit", "ufm_value", "objective_gap", "grad_norm",
    "converged", "nc1", "nc3",
)  # fmt: skip
STATUSES = ("ok", "diverged", "failed")


def unit_name(depth: int, seed: int) -> str:
    return f"L{depth}-s{seed}"


def parse_unit(name: str) -> tuple[int, int]:
    """(depth, seed) of a unit folder's name ``L{depth}-s{seed}``."""
    depth, seed = (int(x[1:]) for x in name.split("-"))
    return depth, seed


def run_dir_of(out_dir: Path, depth: int, seed: int) -> Path:
    return Path(out_dir) / RUNS / unit_name(depth, seed)


def budget_out(out_dir: Path) -> Path:
    """The sweep folder of the 2×-budget reruns, inside the sweep's own."""
    return Path(out_dir) / BUDGET


def unit_folder(depth: int, seed: int, budget: bool = False) -> str:
    """A unit's folder relative to the sweep folder: ``runs/L2-s0``, ``budget2x/runs/L2-s0``."""
    return f"{BUDGET + '/' if budget else ''}{RUNS}/{unit_name(depth, seed)}"


def read_row(run_dir: Path) -> Row | None:
    """The unit's row, or None when it is unfinished: no row, or one that is not a complete row
    of this folder (corrupt, cut short, missing keys, another folder's): it is redone."""
    path = run_dir / ROW
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
    if unit_name(row["depth"], row["seed"]) != run_dir.name:
        return None
    if row["status"] == "ok" and not set(OK_ROW_KEYS) <= set(row):
        return None
    return cast(Row, row)


def write_row(run_dir: Path, row: Row) -> None:
    """Write the unit's row.json (last: its presence marks the unit finished)."""
    write_json(run_dir / ROW, row)


def read_rows(out: Path) -> list[Row]:
    """Every finished unit's row under OUT/runs, one per (depth, seed), sorted."""
    found = (read_row(d) for d in sorted((Path(out) / RUNS).glob("L*-s*")))
    return sorted((r for r in found if r), key=lambda r: (r["depth"], r["seed"]))


def quarantine(path: Path) -> Path:
    """Move a corrupt file aside (kept, renamed) so its unit can restart from scratch."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def mark_running(run_dir: Path) -> None:
    """Say which process trains this unit (how the driver tells which unit a dead worker ran)."""
    write_json(run_dir / RUNNING, {"pid": os.getpid(), "started": time.time()})


def clear_running(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (run_dir / RUNNING).unlink(missing_ok=True)


def running_pid(run_dir: Path) -> int | None:
    """The pid of the process that started training this unit and has not finished it."""
    try:
        return int(json.loads((run_dir / RUNNING).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
