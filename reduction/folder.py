"""What a sweep folder holds is checked, not trusted (README, "Reliability"): one sweep at a time
(:func:`sweep_lock`), and no runs of other settings mixed into it (:func:`check_folder`), whether
or not its sweep.json is there. A finished run whose config.json disagrees with its row.json or
checkpoint (an edited folder) is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from deepnet import (
    CorruptCheckpointError,
    RunConfig,
    checkpoint_summary,
    depth_of_state,
    fingerprint_diff,
)
from reduction.layout import LOCK, RUNS, SPEC, budget_out, read_row
from reduction.plan import Sweep, SweepIdentity, config_disagreement

__all__ = ["check_folder", "folder_problems", "run_folder_problem", "sweep_lock"]


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """One sweep per folder: an exclusive lock on OUT/.lock naming the holder's pid. A sweep
    refused before it wrote anything leaves no folder it created behind."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(
                f"{out} is in use by another sweep (pid {holder}); wait for it or use another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    except BaseException:
        if created and {p.name for p in out.iterdir()} == {LOCK}:
            path.unlink()
            out.rmdir()
        raise
    finally:
        fh.close()


def _read_spec_identity(out: Path) -> tuple[str, SweepIdentity | None]:
    """("absent" | "garbage" | "ok", the identity sweep.json records)."""
    path = out / SPEC
    if not path.exists():
        return "absent", None
    try:
        ident = Sweep.from_spec(json.loads(path.read_text())).identity
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return "garbage", None  # json.JSONDecodeError is a ValueError
    return "ok", ident


def _read_config(path: Path) -> RunConfig | None:
    """config.json as a RunConfig; None when absent; ValueError when it is not one."""
    if not path.exists():
        return None
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"config.json is not a readable run config ({err})") from None


def run_folder_problem(run_dir: Path, identity: SweepIdentity) -> str:
    """Why the sweep ``identity`` may not add to this run folder ('' when it may).

    A finished row must be of this sweep's settings and agree with the config.json and the
    checkpoint beside it (what each says the run is); an unfinished folder's config.json and
    checkpoint must be of this sweep's settings (a schedule-free run may be continued to a
    larger budget). An unreadable checkpoint is not a problem here: it is moved aside when the
    unit (or a continuation from it) needs it.
    """
    row = read_row(run_dir)
    try:
        written = _read_config(run_dir / "config.json")
    except ValueError as err:
        if row is not None and row["status"] == "ok":
            return f"{err}: the folder was edited or damaged; restore it or delete the run folder"
        written = None  # an unfinished unit rewrites it from its checkpoint's config
    edited = "the folder was edited; restore it or delete the run folder"
    if row is not None:
        try:
            config = RunConfig.from_dict(dict(row["config"]))
        except (ValueError, TypeError) as err:
            return f"row.json holds no run config this version can read ({err})"
        diff = identity.diff(config)
        if diff:
            return f"holds a run made with other settings ({diff})"
        if row["status"] != "ok":
            return ""
        if written is not None:
            d = config_disagreement(
                written.to_dict(), config.to_dict(), ("config.json", "row.json")
            )
            if d:
                return f"config.json disagrees with row.json ({d}): {edited}"
        ckpt = run_dir / "checkpoint.pt"
        if ckpt.exists():
            try:
                summary = checkpoint_summary(ckpt)
                stored = RunConfig.from_dict(dict(summary["config"])).to_dict()
            except (CorruptCheckpointError, ValueError, TypeError):
                return ""  # unusable: moved aside and redone if a continuation needs it
            d = config_disagreement(stored, config.to_dict(), ("checkpoint.pt", "row.json"))
            if d:
                return f"checkpoint.pt disagrees with row.json ({d}): {edited}"
            held = depth_of_state(summary["shapes"])
            if held != config.depth:
                return f"checkpoint.pt holds {held} blocks, row.json says depth {config.depth}"
        return ""
    configs = [] if written is None else [("config.json", written)]
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists():
        with contextlib.suppress(CorruptCheckpointError, ValueError, TypeError):
            configs.append(
                ("checkpoint.pt", RunConfig.from_dict(checkpoint_summary(ckpt)["config"]))
            )
    for name, config in configs:
        diff = identity.diff(config, unfinished=True)
        if diff:
            return f"{name} is of a run made with other settings ({diff})"
    return ""


def folder_problems(out: Path, sweep: Sweep) -> list[str]:
    """Every run folder under OUT (and OUT/budget2x, against the sweep's 2×-budget reruns)
    that the sweep may not add to, as 'runs/L2-s0: why' (see :func:`run_folder_problem`)."""
    problems = []
    for base, ident in ((out, sweep.identity), (budget_out(out), sweep.budget.identity)):
        for run_dir in sorted((base / RUNS).glob("L*-s*")):
            if run_dir.is_dir():
                why = run_folder_problem(run_dir, ident)
                if why:
                    problems.append(f"{run_dir.relative_to(out)}: {why}")
    return problems


def check_folder(out: Path, sweep: Sweep) -> str:
    """Refuse (ValueError, one line) to add to a folder holding runs of other settings, whether
    or not its sweep.json is present and readable. Returns what sweep.json held: "absent",
    "ok" or "garbage" (unreadable, and the run folders agree: it may be written anew)."""
    identity = sweep.identity
    state, old = _read_spec_identity(out)
    if old is not None and old.fingerprint != identity.fingerprint:
        raise ValueError(
            f"{out} holds a sweep with different run settings "
            f"({fingerprint_diff(identity.fields, old.fields)}); use another --out folder or "
            "delete the old one"
        )
    problems = folder_problems(out, sweep)
    if problems:
        more = f" (and {len(problems) - 1} more run folder(s))" if len(problems) > 1 else ""
        why = "sweep.json is unreadable and " if state == "garbage" else ""
        raise ValueError(
            f"{out}: {why}{problems[0]}{more}; this sweep does not mix runs of other settings "
            "into one folder: use another --out folder or delete those runs"
        )
    return state
