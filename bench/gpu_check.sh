#!/usr/bin/env bash
# The one-shot GPU check for the tiled Triton attention kernels (H100/H200).
#
# Run from the repository root on the GPU machine (headwise is not pip-installed
# there; PYTHONPATH=src is set here):
#
#     bash bench/gpu_check.sh
#
# Steps, each under its own timeout (about 7 minutes in all):
#   1. versions: nvidia-smi, python, torch, triton, CUDA        -> $OUT/gpu_env.log
#   2. the CUDA tests: pytest -m gpu tests/kernels -x  (~3 min)  -> $OUT/gpu_tests.log
#   3. the benchmark: bench/gpu_attention.py          (~4 min)  -> $OUT/gpu_attention.log,
#      $OUT/gpu_attention.json (and bench/results/gpu_attention.json)
# Step 3 runs even if step 2 fails, so that one run gives both answers.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export HEADWISE_GPU_CASES="${HEADWISE_GPU_CASES:-10}"

echo "== 1/3 environment" | tee "$OUT/gpu_env.log"
{
  timeout 30 nvidia-smi
  timeout 60 "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); \
print('triton', triton.__version__); print('device', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'NO CUDA')"
} 2>&1 | tee -a "$OUT/gpu_env.log"

echo "== 2/3 CUDA tests" | tee "$OUT/gpu_tests.log"
timeout "${TEST_TIMEOUT:-180}" "$PY" -m pytest -q -m gpu tests/kernels -x -p no:cacheprovider --durations=10 \
  2>&1 | tee -a "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== 3/3 benchmark" | tee "$OUT/gpu_attention.log"
timeout $(( ${BENCH_BUDGET:-180} + 45 )) "$PY" bench/gpu_attention.py --budget-s "${BENCH_BUDGET:-180}" 2>&1 | tee -a "$OUT/gpu_attention.log"
bench_rc=${PIPESTATUS[0]}

echo "== 4/4 tile planner against torch.matmul" | tee "$OUT/planner_gpu.log"
timeout 90 "$PY" bench/planner.py --device cuda 2>&1 | tee -a "$OUT/planner_gpu.log"

echo "== done: tests rc=$tests_rc, benchmark rc=$bench_rc (124 = timed out)" \
  | tee -a "$OUT/gpu_attention.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
