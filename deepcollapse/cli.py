"""``deepcollapse``: the one command, with a subcommand per job.

    deepcollapse ufm solve ...     the UFM optimum (and --certify)
    deepcollapse train ...         train one network (resumable; default folder runs/<name>)
    deepcollapse sweep ...         run or resume a depth sweep
    deepcollapse report OUT        re-aggregate a sweep folder
    deepcollapse presets           list the sweep presets
    deepcollapse measure FILE.npz  metrics and distance to the UFM optimum of saved features

Every subcommand takes --help, --version, --json (strict JSON with a schema_version) and
--quiet. A user error prints one line `error: …` and exits 2, a diverging run exits 3, Ctrl-C
says how to resume and exits 130. `deepcollapse COMMAND --help` lists a command's flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import __version__
from .output import run_command

USAGE = __doc__.split("\n\n")[1]
COMMANDS = ("ufm", "train", "sweep", "report", "presets", "measure")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; only the chosen one's modules are imported (``--help``,
    ``presets``, ``ufm`` and ``report`` import no torch)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: deepcollapse {{{','.join(COMMANDS)}}} ...\n\n{USAGE}\n\n"
              + __doc__.split("\n\n")[2])
        return 0 if args else 2
    if args[0] == "--version":
        print(f"deepcollapse {__version__}")
        return 0
    command, rest = args[0], args[1:]

    def body() -> int:
        if command == "ufm":
            from ufm.cli import main as ufm_main

            return ufm_main(rest, prog="deepcollapse ufm")
        if command == "train":
            from deepnet.cli import train_main

            return train_main(rest, prog="deepcollapse train")
        if command in ("sweep", "report", "presets", "measure"):
            from reduction.cli import main as reduction_main

            return reduction_main([command, *rest], prog="deepcollapse")
        from .output import UserError

        raise UserError(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")

    # the subcommands apply the policy themselves; this catches what happens before they run
    # (an extra that is not installed, an unknown command)
    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
