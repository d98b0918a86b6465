"""Atomic file writes and JSON of numpy values, shared by every package (imports no numpy/torch).

Every file is written to a temporary name in the same folder and renamed over the target, so a
kill never leaves a partial file; files get the permissions the umask gives a new file (0644
under the usual umask 022), not mkstemp's private 0600.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "json_default", "write_json"]


@functools.cache
def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write a temporary file in the same folder, then os.replace: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_default(obj: Any) -> Any:
    """JSON for numpy scalars/arrays, paths and read-only mappings such as a run's
    ``Stationarity`` record (everything else is an error)."""
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # np.generic, np.ndarray
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path, obj: Any) -> None:
    """A run's or sweep's JSON file (NaN kept as the JSON extension ``NaN``: these files are read
    back by Python; the commands' ``--json`` output is strict, see :mod:`deepcollapse.output`)."""
    text = json.dumps(obj, indent=2, default=json_default, allow_nan=True)
    atomic_write(path, lambda fh: fh.write(text), mode="w")
