"""deepcollapse: the one command (``deepcollapse``) and the output policy shared by its packages.

The mathematics lives in ``ufm`` (the UFM optimum), ``deepnet`` (the deep networks) and
``reduction`` (measurement); this package holds only what every command shares: the dispatcher
(:mod:`deepcollapse.cli`), the JSON, error, progress and interrupt policy
(:mod:`deepcollapse.output`) and atomic file writes (:mod:`deepcollapse.files`). It imports none of
torch, matplotlib or scipy, so ``deepcollapse --help`` starts in a fraction of a second.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepcollapse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
