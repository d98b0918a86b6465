#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: Debian data packages (where apt-get exists, after asking),
# a virtual environment in .venv, and the package with every extra and the test tools
# (pip install -e '.[all,test]'). A second run only checks and returns.
#
# apt-get runs only with consent: DEEPCOLLAPSE_ASSUME_YES=1 says yes (scripts/test.sh and CI set
# it), DEEPCOLLAPSE_ASSUME_YES=0 says no; otherwise setup asks when stdin is a terminal and skips
# the Debian packages (saying how to add them) when it is not.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.setup-stamp"

# --- Debian data packages (Fashion-MNIST IDX files, WordNet glosses) -------------------------
DEB_PKGS=(dataset-fashion-mnist wordnet-base)
missing=()
for p in "${DEB_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
consent() {
    case "${DEEPCOLLAPSE_ASSUME_YES:-}" in
        1|y|yes|true) return 0 ;;
        0|n|no|false) return 1 ;;
    esac
    if [ -t 0 ]; then
        read -r -p "setup: install the Debian data packages ${missing[*]} with apt-get (sudo)? [y/N] " answer
        case "$answer" in [yY]*) return 0 ;; esac
        return 1
    fi
    return 1
}
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null 2>&1 && ! consent; then
        echo "setup: skipping the Debian data packages ${missing[*]} (the fashion-mnist and wordnet datasets will be unavailable; their tests skip); to add them: DEEPCOLLAPSE_ASSUME_YES=1 bash scripts/setup.sh"
    elif command -v apt-get >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
        fi
        echo "setup: installing Debian data packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if ! $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; then
            $SUDO apt-get update -q >/dev/null 2>&1 || true
            $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
                || echo "setup: WARNING: could not install ${missing[*]}; the fashion-mnist and wordnet datasets will be unavailable (their tests skip)"
        fi
    else
        echo "setup: apt-get not found; skipping Debian data packages ${missing[*]} (fashion-mnist and wordnet datasets will be unavailable; their tests skip)"
    fi
fi

# --- Python environment ---------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
echo "setup: installing Python packages into $VENV (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch is pinned for this machine: the CPU wheel of 2.13.0 is on disk; an unpinned torch would
# pull a multi-GB CUDA build. The package itself only asks torch>=2.1.
"$VENV/bin/python" -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
# PYTHONWARNINGS reaches the build backend: no setuptools warning boxes in the install log
PYTHONWARNINGS=ignore "$VENV/bin/python" -m pip install -q -e ".[all,test]" "torch==2.13.0" 2>&1 \
    | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, cvxpy, matplotlib, pandas, deepcollapse, ufm, deepnet, reduction" \
    || { echo "setup: FAILED: the package does not import after installation"; exit 1; }
echo "$want" > "$STAMP"
echo "setup: done"
