"""The public dataset registry: a name, a reader of the raw source, and what the pipeline does.

Adding a dataset is one reader plus one call::

    def read_mine(root: Path | None, **options) -> dict:
        return {"kind": "vector", "source": "...", "class_names": [...], "x": X, "y": y}

    register_dataset("mine", read_mine, kind="vector", description="my vectors")

A reader takes ``root`` (a resolved local path or None) and its own ``options`` (declared at
registration) and returns a dict: ``kind``, ``class_names``, ``source``, and either ``x``/``y``
(no official split; the pipeline splits) or ``x_train``/``y_train``/``x_test``/``y_test``.
Images are (N, C, H, W) (uint8, or float with ``scale`` telling how to reach [0, 1]); vectors
(N, D) float; texts a list of str plus ``language`` ("en" or "zh"). A reader of kind
``"nexttoken"`` returns ``documents`` (list of str), ``language`` and ``source`` instead: the
next-token pipeline (:mod:`deepnet.data.nexttoken`) turns documents into contexts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "DatasetSpec",
    "available_datasets",
    "dataset_spec",
    "known_options",
    "register_dataset",
]

KINDS = ("image", "vector", "text", "nexttoken")

#: options the pipeline understands, per registry kind (the reader's own options come on top)
PIPELINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "image": ("cache", "test_fraction", "split_seed", "drop_test_overlap", "standardize", "pool"),
    "vector": ("cache", "test_fraction", "split_seed", "drop_test_overlap", "standardize"),
    "text": (
        "cache",
        "test_fraction",
        "split_seed",
        "drop_test_overlap",
        "max_len",
        "max_vocab",
        "min_freq",
        "dedup_encoded",
    ),
    "nexttoken": (
        "cache",
        "test_fraction",
        "split_seed",
        "context",
        "level",
        "positions",
        "vocab_size",
        "input_vocab_size",
        "max_contexts",
        "max_test_contexts",
    ),
}


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset."""

    name: str
    reader: Callable[..., dict]
    kind: str
    description: str
    aliases: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # the reader's own keyword options


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(
    name: str,
    reader: Callable[..., dict],
    *,
    kind: str,
    description: str,
    aliases: Sequence[str] = (),
    options: Sequence[str] = (),
) -> DatasetSpec:
    """Register ``reader`` under ``name`` (lower case) and ``aliases``; returns the spec.

    Re-registering a name replaces it (so a notebook can redefine a reader); a name or alias
    that is already another dataset's alias is an error.
    """
    key = name.lower()
    if not key or not callable(reader):
        raise ValueError(f"register_dataset needs a non-empty name and a callable reader: {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    clash = [a for a in (key, *(a.lower() for a in aliases)) if _ALIASES.get(a, key) != key]
    clash += [a.lower() for a in aliases if a.lower() in _REGISTRY and a.lower() != key]
    if clash:
        raise ValueError(f"dataset name(s) {sorted(set(clash))} already registered elsewhere")
    reserved = set(PIPELINE_OPTIONS[kind]) & set(options)
    if reserved:
        raise ValueError(f"reader options {sorted(reserved)} clash with pipeline options")
    spec = DatasetSpec(
        key, reader, kind, description, tuple(a.lower() for a in aliases), tuple(options)
    )
    _REGISTRY[key] = spec
    for a in spec.aliases:
        _ALIASES[a] = key
    return spec


def available_datasets() -> list[str]:
    """Names accepted by :func:`deepnet.data.load_dataset` (sources are checked when loaded)."""
    return sorted(_REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered under ``name`` or one of its aliases (case-insensitive)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}")
    return _REGISTRY[key]


def known_options(spec: DatasetSpec) -> list[str]:
    """Every option ``load_dataset(spec.name, **options)`` accepts."""
    return sorted({*PIPELINE_OPTIONS[spec.kind], *spec.options})


def check_options(spec: DatasetSpec, options: dict[str, Any]) -> None:
    unknown = set(options) - set(known_options(spec))
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for dataset {spec.name!r}; "
            f"known: {known_options(spec)}"
        )
