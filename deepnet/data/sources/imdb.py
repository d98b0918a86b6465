"""IMDB movie reviews (binary sentiment) from an ``aclImdb`` folder the user gives (``root=``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..registry import register_dataset
from ._files import read_folder_texts

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


def read_imdb(root: Path | None) -> dict:
    if root is None:
        raise FileNotFoundError(
            f"IMDB needs root=: a folder holding aclImdb/ (train/pos, "
            f"train/neg, test/pos, test/neg); download it from {IMDB_URL}"
        )
    folder = root / "aclImdb" if (root / "aclImdb").is_dir() else root
    subdirs = [f"{s}/{c}" for s in ("train", "test") for c in ("neg", "pos")]
    missing = [s for s in subdirs if not (folder / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"IMDB (aclImdb) not found under {root}: expected aclImdb/"
            f"{missing[0]}/*.txt (missing: {', '.join(missing)}); "
            f"download and extract it from {IMDB_URL}"
        )
    out: dict[str, Any] = {
        "kind": "text",
        "language": "en",
        "class_names": ["neg", "pos"],
        "source": f"aclImdb folder {folder}",
    }
    for split in ("train", "test"):
        texts, labels = [], []
        for c, cname in enumerate(("neg", "pos")):
            t = read_folder_texts(folder / split / cname)
            texts += t
            labels += [c] * len(t)
        out[f"x_{split}"], out[f"y_{split}"] = texts, np.asarray(labels, dtype=np.int64)
    return out


register_dataset(
    "imdb",
    read_imdb,
    kind="text",
    description="IMDB reviews, binary sentiment, 25k/25k (aclImdb folder under root=)",
)
