"""MNIST-1D, generated procedurally (``mnist1d.data.make_dataset``; never its downloader)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..registry import register_dataset


def read_mnist1d(root: Path | None) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset  # never get_dataset: it downloads

    # make_dataset reseeds the global numpy/random RNGs; restore them to stay side-effect free.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return {
        "kind": "vector",
        "source": "mnist1d.data.make_dataset(default args, seed 42)",
        "class_names": [str(i) for i in range(10)],
        "x_train": np.asarray(d["x"]),
        "y_train": np.asarray(d["y"]),
        "x_test": np.asarray(d["x_test"]),
        "y_test": np.asarray(d["y_test"]),
    }


register_dataset(
    "mnist1d",
    read_mnist1d,
    kind="vector",
    description="MNIST-1D vectors of length 40, 4,000/1,000 (procedural, default args)",
    aliases=("mnist-1d",),
)
