"""Files of a run: checkpoints, provenance, and reading a finished run back.

Every file is written atomically (:func:`deepcollapse.files.atomic_write`): to a temporary name
in the same folder, then renamed over the target, so a kill never leaves a partial file. The
checkpoint's layout is :mod:`deepnet.runstate`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepcollapse import __version__
from deepcollapse.files import atomic_write, write_json

from .config import RunConfig, RunResult, Stationarity


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, not a checkpoint)."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors, numbers, strings, lists, dicts:
    nothing executable). A file that cannot be read raises :class:`CorruptCheckpointError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle errors, ...: all mean "not usable"
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint ({err})") from err
    if not isinstance(state, dict) or not {"config", "epoch", "model"} <= set(state):
        raise CorruptCheckpointError(f"{path} is not a deepnet checkpoint")
    return state


class CorruptSourceError(ValueError):
    """The finished shallower run a continuation starts from cannot be used: its checkpoint is
    missing or unreadable. ``source`` is its folder; a sweep quarantines the checkpoint and
    trains that run again (a plain ValueError everywhere else: one line)."""

    def __init__(self, source: Path, message: str) -> None:
        super().__init__(message)
        self.source = Path(source)


def checkpoint_summary(path: Path) -> dict[str, Any]:
    """The stored config, epoch and parameter shapes of a checkpoint, read without loading its
    tensors (memory-mapped: cheap even for large models). Raises CorruptCheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint ({err})") from err
    if not isinstance(state, dict) or not {"config", "epoch", "model"} <= set(state):
        raise CorruptCheckpointError(f"{path} is not a deepnet checkpoint")
    model = state["model"]
    if not isinstance(state["config"], dict) or not isinstance(model, dict):
        raise CorruptCheckpointError(f"{path} is not a deepnet checkpoint")
    return {
        "config": state["config"],
        "epoch": state["epoch"],
        "shapes": {k: tuple(v.shape) for k, v in model.items() if isinstance(v, torch.Tensor)},
    }


def depth_of_state(state: dict[str, Any]) -> int:
    """The number of blocks a model state holds (its ``blocks.<i>.`` parameters): the depth
    read from the tensors themselves, not from a config that may have been edited."""
    indices = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    return max(indices) + 1 if indices else 0


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "perm": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["perm"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.cache
def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit + ("-dirty" if dirty.stdout.strip() else "") if commit else None


def provenance(device: torch.device, config: RunConfig) -> dict[str, Any]:
    """What produced a run: package, git commit (when installed from a checkout), torch, numpy,
    Python, the device, and the seed of the data subset."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "deepcollapse": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "data_seed": config.subset_seed,
    }


def write_result(run_dir: Path, result: RunResult) -> None:
    """A finished run's metrics.json (everything but the arrays) and features.npz."""
    write_json(Path(run_dir) / "metrics.json", result.to_dict())

    def write_npz(fh: Any) -> None:
        arrays: dict[str, Any] = {
            "features": result.features, "labels": result.labels, "W": result.W
        }
        if result.b is not None:
            arrays["b"] = result.b
        np.savez(fh, **arrays)

    atomic_write(Path(run_dir) / "features.npz", write_npz)


def load_result(run_dir: str | os.PathLike) -> RunResult:
    """Read a finished run (config.json, metrics.json, features.npz) back into a RunResult."""
    path = Path(run_dir)
    missing = [
        n for n in ("config.json", "metrics.json", "features.npz") if not (path / n).exists()
    ]
    if missing:
        raise FileNotFoundError(f"{path} holds no finished run (missing {', '.join(missing)})")
    metrics = json.loads((path / "metrics.json").read_text())
    config = RunConfig.from_dict(json.loads((path / "config.json").read_text()))
    with np.load(path / "features.npz") as z:
        arrays = {k: z[k] for k in z.files}
    names = {f.name for f in dataclasses.fields(RunResult)}
    kwargs = {k: v for k, v in metrics.items() if k in names and k != "config"}
    kwargs["stationarity"] = Stationarity.from_dict(metrics.get("stationarity") or {})
    return RunResult(
        config=config,
        features=arrays["features"],
        labels=arrays["labels"],
        W=arrays["W"],
        b=arrays.get("b"),
        **kwargs,
    )
