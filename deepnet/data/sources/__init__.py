"""The built-in readers; importing this package registers them (one module per source)."""

from . import bbc, cifar10, digits, fashion, imdb, mnist, mnist1d, snownlp, wordnet

__all__ = ["bbc", "cifar10", "digits", "fashion", "imdb", "mnist", "mnist1d", "snownlp", "wordnet"]
