#!/usr/bin/env bash
# The one-shot GPU check for the tiled Triton attention kernels (H100/H200).
#
# Run from the repository root on the GPU machine (headwise is not pip-installed
# there; PYTHONPATH=src is set here):
#
#     bash bench/gpu_check.sh                    # ~150 s in all (GPU_CHECK_BUDGET_S)
#
# Steps, each under `timeout`, inside one overall budget (GPU_CHECK_BUDGET_S,
# default 150 s; a step gets at most what is left of it):
#   0. in the background from the start: compile every autotune config of the
#      benchmark's kernels into Triton's on-disk cache (bench/gpu_attention.py
#      --precompile, PRECOMPILE_JOBS processes) while the tests run, so that the
#      benchmark spends its time measuring                 -> $OUT/precompile.log
#   1. versions: nvidia-smi, python, torch, triton, CUDA    -> $OUT/gpu_env.log
#   2. the CUDA tests: pytest -m gpu tests/kernels, split over TEST_JOBS processes
#      (their time is Triton compiling, which is CPU work) -> $OUT/gpu_tests.log
#   3. the focused benchmark (BENCH_ARGS; default D=128 then 64, causal and not,
#      16k/4k/1k tokens, against flash and cuDNN, with the kernel variants
#      ptr+split and tma+fused beside the default) -> $OUT/gpu_attention.log,
#      $OUT/gpu_attention.json (rewritten after every shape)
#   4. optional, only if bench/gpu_int8_attention.py exists and RUN_INT8=1 (default):
#      the int8 kernel's benchmark, INT8_TIMEOUT (40 s)      -> $OUT/gpu_int8_attention.log
#   5. optional, RUN_PLANNER=1 (default 0): tile planner vs torch.matmul
# Step 3 runs even if step 2 fails, so that one run gives both answers.
#
# Environment (defaults): GPU_CHECK_BUDGET_S=150 TEST_TIMEOUT=60 TEST_JOBS=4
# HEADWISE_GPU_CASES=8 PRECOMPILE_JOBS=4 PRECOMPILE_TIMEOUT=75 BENCH_ARGS="--head-dims 128 64 --causal both
# --seqs 16384 4096 1024 --peers flash cudnn --variants ptr+split tma+fused
# --warmup-ms 10 --rep-ms 50" RUN_INT8=1 INT8_TIMEOUT=40 INT8_ARGS="--budget-s 20"
# RUN_PLANNER=0 PYTHON=python OUT=bench/results
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT="${OUT:-bench/results}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export HEADWISE_GPU_CASES="${HEADWISE_GPU_CASES:-8}"
BUDGET="${GPU_CHECK_BUDGET_S:-150}"
BENCH_ARGS="${BENCH_ARGS:---head-dims 128 64 --causal both --seqs 16384 4096 1024 --peers flash cudnn --variants ptr+split tma+fused --warmup-ms 10 --rep-ms 50}"
INT8_TIMEOUT="${INT8_TIMEOUT:-40}"
RUN_INT8="${RUN_INT8:-1}"
[ -f bench/gpu_int8_attention.py ] || RUN_INT8=0

left() { echo $(( BUDGET - (SECONDS - START) )); }
# cap a step's timeout at what is left of the budget minus a reserve for later steps
cap() {  # cap WANT RESERVE
  local l=$(( $(left) - $2 ))
  [ "$l" -lt 5 ] && l=5
  [ "$1" -lt "$l" ] && echo "$1" || echo "$l"
}

# -- 0: background precompile (CPU work; the tests' GPU work is tiny)
# shellcheck disable=SC2086
timeout "${PRECOMPILE_TIMEOUT:-75}" "$PY" bench/gpu_attention.py --precompile --precompile-jobs "${PRECOMPILE_JOBS:-4}" \
  $BENCH_ARGS > "$OUT/precompile.log" 2>&1 &
PRE_PID=$!

echo "== 1 environment" | tee "$OUT/gpu_env.log"
{
  timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  timeout 30 "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); \
print('triton', triton.__version__); print('device', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'NO CUDA')"
} 2>&1 | tee -a "$OUT/gpu_env.log"

echo "== 2 CUDA tests (t=$((SECONDS - START)) s)" | tee "$OUT/gpu_tests.log"
RESERVE_AFTER_TESTS=$(( 45 + (RUN_INT8 == 1 ? INT8_TIMEOUT : 0) ))
# the test ids, dealt round-robin to TEST_JOBS pytest processes sharing the GPU
mapfile -t TEST_IDS < <(timeout 60 "$PY" -m pytest -q -m gpu tests/kernels -p no:cacheprovider \
  --collect-only 2>/dev/null | grep '::')
JOBS="${TEST_JOBS:-4}"
[ "${#TEST_IDS[@]}" -lt "$JOBS" ] && JOBS="${#TEST_IDS[@]}"
echo "${#TEST_IDS[@]} gpu tests in $JOBS processes" | tee -a "$OUT/gpu_tests.log"
TEST_T=$(cap "${TEST_TIMEOUT:-60}" "$RESERVE_AFTER_TESTS")
pids=()
for ((j = 0; j < JOBS; j++)); do
  mine=()
  for ((i = j; i < ${#TEST_IDS[@]}; i += JOBS)); do mine+=("${TEST_IDS[$i]}"); done
  timeout "$TEST_T" "$PY" -m pytest -q "${mine[@]}" -p no:cacheprovider --durations=5 \
    > "$OUT/gpu_tests.$j.log" 2>&1 &
  pids+=($!)
done
tests_rc=0
for pid in "${pids[@]}"; do wait "$pid" || tests_rc=$?; done
[ "$JOBS" -eq 0 ] && tests_rc=5
for ((j = 0; j < JOBS; j++)); do cat "$OUT/gpu_tests.$j.log"; done | tee -a "$OUT/gpu_tests.log"

# the benchmark times the GPU: the compile workers must be done (they normally are)
wait "$PRE_PID"
pre_rc=$?
echo "== precompile rc=$pre_rc (t=$((SECONDS - START)) s): $(tail -n 1 "$OUT/precompile.log")" \
  | tee -a "$OUT/gpu_tests.log"

echo "== 3 benchmark (t=$((SECONDS - START)) s): $BENCH_ARGS" | tee "$OUT/gpu_attention.log"
bench_timeout=$(cap 600 $(( RUN_INT8 == 1 ? INT8_TIMEOUT : 0 )))
# stop starting shapes early enough for the one in flight to finish (~15 s at 16k
# with autotuning); every finished shape is in the JSON even if the timeout hits
bench_budget=$(( bench_timeout > 30 ? bench_timeout - 20 : 10 ))
# shellcheck disable=SC2086
timeout "$bench_timeout" "$PY" bench/gpu_attention.py $BENCH_ARGS --budget-s "$bench_budget" \
  2>&1 | tee -a "$OUT/gpu_attention.log"
bench_rc=${PIPESTATUS[0]}

# ---------------------------------------------------------------------------------
# 4 (optional, separate): the int8 attention kernel's benchmark (another engineer's)
int8_rc=skipped
if [ "$RUN_INT8" = "1" ] && [ -f bench/gpu_int8_attention.py ]; then
  echo "== 4 int8 attention benchmark (t=$((SECONDS - START)) s)" | tee "$OUT/gpu_int8_attention.log"
  # shellcheck disable=SC2086
  timeout "$(cap "$INT8_TIMEOUT" 0)" "$PY" bench/gpu_int8_attention.py ${INT8_ARGS:---budget-s 20} \
    2>&1 | tee -a "$OUT/gpu_int8_attention.log"
  int8_rc=${PIPESTATUS[0]}
fi
# ---------------------------------------------------------------------------------

if [ "${RUN_PLANNER:-0}" = "1" ]; then
  echo "== 5 tile planner against torch.matmul" | tee "$OUT/planner_gpu.log"
  timeout "$(cap 90 0)" "$PY" bench/planner.py --device cuda 2>&1 | tee -a "$OUT/planner_gpu.log"
fi

echo "== done in $((SECONDS - START)) s: tests rc=$tests_rc, benchmark rc=$bench_rc, int8 rc=$int8_rc (124 = timed out)" \
  | tee -a "$OUT/gpu_attention.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
