"""The :class:`Dataset` container every loader returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .text import PAD_ID

__all__ = ["Dataset"]


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
    vocab: list[str] | None = None  # text only; index = token id (0 = "<pad>")
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


def check_labels(y: np.ndarray, K: int, what: str, *, every_class: bool = True) -> None:
    """Labels in [0, K); with ``every_class``, every class occurs at least once."""
    if len(y) and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"{what}: labels outside [0, {K}): min {y.min()}, max {y.max()}")
    if not every_class:
        return
    missing = np.flatnonzero(np.bincount(y, minlength=K)[:K] == 0) if len(y) else np.arange(K)
    if len(missing):
        raise ValueError(f"{what}: classes {missing.tolist()} have no samples")


def validate(ds: Dataset, *, every_test_class: bool = True) -> None:
    """Shape, dtype and class-count checks on the final arrays (every class must occur in the
    training split; in the test split too unless ``every_test_class`` is False)."""
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
        every = split == "train" or every_test_class
        check_labels(y, ds.num_classes, f"{ds.name} {split}", every_class=every)
        if ds.kind == "text":
            if x.dtype != np.int64 or (x.size and (x.min() < 0 or x.max() >= len(ds.vocab or []))):
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
