"""Fashion-MNIST from IDX files (Debian ``dataset-fashion-mnist``), and the IDX reader."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import register_dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally .gz) into a numpy array (one np.frombuffer, no loops)."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path}: header says {tuple(dims.tolist())} ({expected} bytes of data) "
            f"but the file holds {len(raw) - offset} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(tuple(dims.tolist()))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (
        f"{stem}.gz",
        stem,
        stem.replace("-idx", ".idx") + ".gz",
        stem.replace("-idx", ".idx"),
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def read_fashion_mnist(root: Path | None) -> dict:
    folder = FASHION_MNIST_DIR if root is None else root
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    files = {k: _find_idx(folder, s) for k, s in stems.items()}
    missing = [stems[k] for k, p in files.items() if p is None]
    if missing:
        hint = (
            "install the Debian package dataset-fashion-mnist (apt-get install "
            "dataset-fashion-mnist) or pass root= a folder with the IDX files"
            if root is None
            else "pass root= a folder holding the four IDX files (.gz or raw)"
        )
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {folder}: missing {', '.join(missing)}[.gz]; {hint}"
        )
    arrays = {k: read_idx(p) for k, p in files.items() if p is not None}
    for split in ("train", "test"):
        if arrays[f"x_{split}"].ndim != 3:
            raise ValueError(
                f"Fashion-MNIST {split} images must be 3-D (N, H, W), got "
                f"{arrays[f'x_{split}'].shape}"
            )
        arrays[f"x_{split}"] = arrays[f"x_{split}"][:, None]
    return {
        "kind": "image",
        "source": f"IDX files in {folder}",
        "class_names": FASHION_CLASSES,
        **arrays,
    }


register_dataset(
    "fashion-mnist",
    read_fashion_mnist,
    kind="image",
    description="Fashion-MNIST 28x28, 60k/10k (Debian dataset-fashion-mnist IDX files)",
    aliases=("fashion_mnist", "fashionmnist"),
)
