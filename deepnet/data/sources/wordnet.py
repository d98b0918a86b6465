"""WordNet glosses (Debian ``wordnet-base``), labelled by lexicographer file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..pipeline import dedup, key_ids
from ..registry import register_dataset
from ._files import read_text, require

WORDNET_DIR = Path("/usr/share/wordnet")
# WordNet 3.0 lexicographer files, index = lex_filenum (lexnames(5WN)).
WORDNET_LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_POS_FILE = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}


def read_wordnet(root: Path | None, classes: Sequence[str] | None = None) -> dict:
    """Glosses of the lexicographer files ``classes`` (default: the 10 largest noun files, by
    gloss count after the pipeline's dedup; ties by file number)."""
    folder = WORDNET_DIR if root is None else root
    if classes is not None:
        classes = list(classes)
        unknown = [c for c in classes if c not in WORDNET_LEXNAMES]
        if unknown:
            raise ValueError(
                f"unknown WordNet lexicographer file(s) {unknown}; choose from {WORDNET_LEXNAMES}"
            )
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must be >= 2 distinct lexicographer files, got {classes}")
    pos_needed = ["noun"] if classes is None else sorted({c.split(".")[0] for c in classes})
    glosses, lexfiles = [], []
    for pos in pos_needed:
        path = require(
            folder / _POS_FILE[pos],
            f"WordNet not found: expected {folder / _POS_FILE[pos]}; install "
            "the Debian package wordnet-base (apt-get install wordnet-base) or pass "
            "root= the folder holding data.noun/data.verb/data.adj/data.adv",
        )
        for line in read_text(path).splitlines():
            if not line or line.startswith("  ") or " | " not in line:
                continue  # license header
            head, gloss = line.split(" | ", 1)
            glosses.append(gloss.strip())
            lexfiles.append(int(head.split(" ", 2)[1]))
    lex = np.asarray(lexfiles, dtype=np.int64)
    if classes is None:
        keep, _, _ = dedup(key_ids(glosses), lex)
        counts = np.bincount(lex[keep], minlength=len(WORDNET_LEXNAMES))
        top = sorted(range(len(counts)), key=lambda i: (-counts[i], i))[:10]
        chosen = sorted(top)
    else:
        chosen = sorted(WORDNET_LEXNAMES.index(c) for c in classes)
    remap = np.full(len(WORDNET_LEXNAMES), -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    y = remap[lex]
    sel = np.flatnonzero(y >= 0)
    return {
        "kind": "text",
        "language": "en",
        "class_names": [WORDNET_LEXNAMES[i] for i in chosen],
        "source": f"WordNet glosses {folder}",
        "x": [glosses[i] for i in sel],
        "y": y[sel],
    }


register_dataset(
    "wordnet",
    read_wordnet,
    kind="text",
    description="WordNet glosses labelled by lexicographer file (Debian wordnet-base); "
    "option classes= a list of lexicographer files (default: the 10 largest noun files)",
    options=("classes",),
)
