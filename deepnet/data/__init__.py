"""Deterministic, offline datasets for the deep networks (THEORY §8).

Layout: :mod:`.container` (:class:`Dataset`), :mod:`.registry` (:func:`register_dataset`,
:func:`available_datasets`), :mod:`.load` (:func:`load_dataset`), :mod:`.pipeline` (dedup,
split, balanced subsets, scaling, the cache), :mod:`.text` (tokeniser, vocabulary, encoding),
:mod:`.nexttoken` (next-token contexts, :func:`load_nexttoken`), and :mod:`.sources` (one
reader module per source, each registering itself). Adding a dataset is one reader module in
:mod:`.sources` that calls :func:`register_dataset`, and its import in ``sources/__init__.py``.
"""

from .container import Dataset
from .load import load_dataset
from .nexttoken import load_nexttoken
from .registry import DatasetSpec, available_datasets, dataset_spec, register_dataset
from .sources import cifar10, fashion, imdb, wordnet  # registers every built-in reader
from .text import PAD_ID, UNK_ID, tokenize

CIFAR10_CLASSES = cifar10.CIFAR10_CLASSES
FASHION_CLASSES = fashion.FASHION_CLASSES
FASHION_MNIST_DIR = fashion.FASHION_MNIST_DIR
WORDNET_DIR = wordnet.WORDNET_DIR
WORDNET_LEXNAMES = wordnet.WORDNET_LEXNAMES
read_idx = fashion.read_idx
IMDB_URL = imdb.IMDB_URL

__all__ = [
    "CIFAR10_CLASSES",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "IMDB_URL",
    "PAD_ID",
    "UNK_ID",
    "WORDNET_DIR",
    "WORDNET_LEXNAMES",
    "Dataset",
    "DatasetSpec",
    "available_datasets",
    "dataset_spec",
    "load_dataset",
    "load_nexttoken",
    "read_idx",
    "register_dataset",
    "tokenize",
]
