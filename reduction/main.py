"""Former home of the ``deepcollapse`` dispatcher, kept as an alias: the command now lives in the
torch-free :mod:`deepcollapse.cli` (``deepcollapse = "deepcollapse.cli:main"``)."""

from deepcollapse.cli import USAGE, main

__all__ = ["USAGE", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
