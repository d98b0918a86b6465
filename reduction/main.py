"""``deepcollapse``: the one command, with a subcommand per job.

    deepcollapse ufm solve ...     the UFM optimum (and --certify)       = python -m ufm solve
    deepcollapse train ...         train one network                     = python -m deepnet train
    deepcollapse sweep ...         run or resume a depth sweep           = python -m reduction sweep
    deepcollapse report OUT        re-aggregate a sweep folder
    deepcollapse presets           list the sweep presets
    deepcollapse measure FILE.npz  metrics and distance to the UFM optimum of saved features

Every subcommand takes --json and --version; a user error prints one line ``error: …`` and
exits 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = __doc__.split("\n\n")[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: deepcollapse {ufm,train,sweep,report,presets,measure} ...\n\n" + USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        from reduction import __version__

        print(f"deepcollapse {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command == "ufm":
        from ufm.cli import main as ufm_main

        return ufm_main(rest)
    if command == "train":
        from deepnet.cli import main as train_main

        return train_main(["train", *rest])
    if command in ("sweep", "report", "presets", "measure"):
        from reduction.cli import main as reduction_main

        return reduction_main([command, *rest])
    print(
        f"error: unknown command {command!r}; expected one of ufm, train, sweep, report, presets, "
        "measure",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
