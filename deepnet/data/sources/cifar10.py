"""CIFAR-10 from the official python pickle batches in a folder the user gives (``root=``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..registry import register_dataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        d = pickle.load(f, encoding="bytes")  # the official batches are Python-2 pickles
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar10(root: Path | None) -> dict:
    if root is None:
        raise FileNotFoundError(
            "CIFAR-10 needs root=: a folder holding cifar-10-batches-py/ (data_batch_1..5, "
            f"test_batch, batches.meta); download and extract it from {CIFAR10_URL}"
        )
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: expected cifar-10-batches-py/{missing[0]} "
            f"(missing: {', '.join(missing)}); download and extract it from {CIFAR10_URL}"
        )

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = _unpickle(folder / name)
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / name}: data must be (N, 3072) uint8, got {x.shape}")
        return x.reshape(-1, 3, 32, 32), np.asarray(d["labels"], dtype=np.int64)

    parts = [batch(n) for n in names[:5]]
    x_test, y_test = batch("test_batch")
    class_names = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = _unpickle(folder / "batches.meta")
        class_names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in meta.get("label_names", class_names)
        ]
    return {
        "kind": "image",
        "source": f"CIFAR-10 python batches in {folder}",
        "class_names": class_names,
        "x_train": np.concatenate([p[0] for p in parts]),
        "y_train": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
    }


register_dataset(
    "cifar10",
    read_cifar10,
    kind="image",
    description="CIFAR-10 32x32 RGB, 50k/10k (python batches under root=; never downloaded)",
    aliases=("cifar-10",),
)
