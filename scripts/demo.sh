#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the CPU depth sweep of L-RN1 on MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
.venv/bin/python -m reduction sweep --preset cpu-rn1-mnist --out results/cpu-rn1-mnist "$@"
