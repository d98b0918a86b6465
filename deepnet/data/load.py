"""The one entry point: :func:`load_dataset` dispatches a registered name to its pipeline, the
labelled one (:mod:`.pipeline`) or the next-token one (:mod:`.nexttoken`, which builds on it)."""

from __future__ import annotations

import os
from typing import Any

from .container import Dataset
from .nexttoken import load_nexttoken
from .pipeline import load_labelled
from .registry import check_options, dataset_spec

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    n_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    **options: Any,
) -> Dataset:
    """Load ``name`` (see :func:`available_datasets`) deterministically; see
    :mod:`deepnet.data.pipeline` for the steps and options.

    ``n_per_class`` / ``test_per_class``: balanced seeded subsets of the (deduplicated) train /
    test splits (None = all); ValueError when a class has fewer. ``root``: a local folder (or,
    for mnist, a zarr store) overriding the default location; required for cifar10 and imdb.
    Next-token datasets (``nexttoken-<corpus>``) take no balanced subsets: ``n_per_class`` and
    ``test_per_class`` must be None there (ValueError otherwise), and ``seed`` draws the
    ``max_contexts`` subsample (see :func:`deepnet.data.nexttoken.load_nexttoken`).
    """
    spec = dataset_spec(name)
    check_options(spec, options)
    if spec.kind == "nexttoken":
        if n_per_class is not None or test_per_class is not None:
            raise ValueError(
                f"{spec.name} is a next-token dataset: its classes are the continuation tokens, "
                "so balanced subsets make no sense; pass n_per_class=None and "
                f"test_per_class=None (got {n_per_class!r}, {test_per_class!r}) and bound the "
                "size with max_contexts="
            )
        return load_nexttoken(spec.name, seed=seed, root=root, **options)
    return load_labelled(spec, n_per_class, test_per_class, seed, root, **options)
