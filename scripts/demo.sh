#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the converged CPU depth sweep of L-RN1 on MNIST-1D
# (one worker per core; about 8 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg
.venv/bin/deepcollapse sweep --preset cpu-rn1-mnist1d --out results/cpu-rn1-mnist1d "$@"
