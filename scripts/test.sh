#!/usr/bin/env bash
# Set up (idempotent) and run the linter, the type checker (mypy over ufm, deepnet, reduction,
# deepcollapse: pyproject.toml [tool.mypy]) and the test suite; arguments go to pytest (make
# test-fast passes -m "not slow"). Exit status is non-zero when anything fails, including
# pytest's "no tests ran" (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
# non-interactive: the set-up installs the Debian data packages without asking (CI never blocks)
export DEEPCOLLAPSE_ASSUME_YES="${DEEPCOLLAPSE_ASSUME_YES:-1}"
bash scripts/setup.sh
export MPLBACKEND=Agg DEEPCOLLAPSE_SMOKE=1
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
