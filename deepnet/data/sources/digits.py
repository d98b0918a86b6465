"""scikit-learn's bundled 8x8 digits (1,797 images, no official split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import register_dataset


def read_digits(root: Path | None) -> dict:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    return {
        "kind": "image",
        "source": "sklearn.datasets.load_digits",
        "scale": 16.0,
        "class_names": [str(i) for i in range(10)],
        "x": d.images.astype(np.uint8)[:, None],
        "y": d.target,
    }


register_dataset(
    "digits",
    read_digits,
    kind="image",
    description="scikit-learn digits 8x8, 1,797 images (stratified split)",
)
