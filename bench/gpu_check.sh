#!/usr/bin/env bash
# The one GPU check (H100/H200): tests, auto's dispatch, the benchmark; under 4 minutes.
#
# Run from the repository root on the GPU machine (headwise is not pip-installed
# there; PYTHONPATH=src is set here):
#
#     bash bench/gpu_check.sh              # ~225 s in all (GPU_CHECK_BUDGET_S)
#     DRY_RUN=1 bash bench/gpu_check.sh    # print the steps and their arguments, run nothing
#
# Steps, each under its own `timeout`, inside one overall budget (GPU_CHECK_BUDGET_S,
# default 225 s; a step gets at most what is left of it, minus a reserve for the
# steps after it). A step that fails or times out does not stop the others.
#   0. in the background from the start: compile every autotune config of the
#      benchmark's kernels into Triton's on-disk cache (bench/gpu_attention.py
#      --precompile, PRECOMPILE_JOBS processes) while the tests run, so that the
#      timed steps spend their time measuring             -> $OUT/precompile.log
#   1. versions: nvidia-smi, python, torch, triton, CUDA, flash-attn-4 -> $OUT/gpu_env.log
#   2. the `gpu`-marked tests of tests/kernels and tests/attention, split over
#      TEST_JOBS processes (their time is Triton compiling)  -> $OUT/gpu_tests.log
#   3. the dispatch check: bench/gpu_dispatch.py (auto's choice against sdpa and tiled
#      measured per shape class, and the cache file's round trip; DISPATCH_ARGS)
#                                        -> $OUT/gpu_dispatch.log, $OUT/gpu_dispatch.json
#   4. the benchmark (BENCH_ARGS; default D=128 then 64, causal and not, 16k/4k/1k
#      tokens, against flash, cuDNN and FlashAttention-4 (its column only when
#      flash-attn-4 imports), with the sdpa and auto columns and the kernel
#      variants ws, desc (forward: device-side descriptors, warp-specialised loop) and
#      pers (persistent dK/dV); the autotuner's picks (a 128x128 dQ tile among them)
#      are in the JSON)
#                                        -> $OUT/gpu_attention.log, $OUT/gpu_attention.json
#   5. optional, RUN_INT8=1 (default 0): the int8 kernel's benchmark -> $OUT/gpu_int8_attention.log
#   6. optional, RUN_PLANNER=1 (default 0): tile planner vs torch.matmul
# Then a summary of every step (exit code, seconds, the dispatch check's agreement and
# the benchmark's auto / best ratios) -> stdout and $OUT/gpu_check_summary.json.
#
# Environment (defaults): GPU_CHECK_BUDGET_S=225 TEST_TIMEOUT=75 TEST_JOBS=6
# HEADWISE_GPU_CASES=8 PRECOMPILE_JOBS=6 PRECOMPILE_TIMEOUT=75 DISPATCH_TIMEOUT=55
# DISPATCH_ARGS="" BENCH_ARGS="--head-dims 128 64 --causal both --seqs 16384 4096 1024
# --peers flash cudnn fa4 --variants ws desc pers --warmup-ms 10 --rep-ms 50" RUN_INT8=0 INT8_TIMEOUT=40
# INT8_ARGS="--budget-s 20" RUN_PLANNER=0 PYTHON=python OUT=bench/results DRY_RUN=0
# The kernels' options are explicit here: the tests set each one they exercise, and the
# benchmark's variant columns (--variants in BENCH_ARGS) pass theirs to tiled_attention.
# HEADWISE_TILED_* variables, if exported, change only the benchmark's base options (its
# headwise column, which each variant then changes): bench/gpu_attention.py reads them once
# at start, as the headwise command does; the tests never read them.
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT="${OUT:-bench/results}"
export OUT
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export HEADWISE_GPU_CASES="${HEADWISE_GPU_CASES:-8}"
BUDGET="${GPU_CHECK_BUDGET_S:-225}"
BENCH_ARGS="${BENCH_ARGS:---head-dims 128 64 --causal both --seqs 16384 4096 1024 --peers flash cudnn fa4 --variants ws desc pers --warmup-ms 10 --rep-ms 50}"
DISPATCH_ARGS="${DISPATCH_ARGS:-}"
DISPATCH_TIMEOUT="${DISPATCH_TIMEOUT:-55}"
INT8_TIMEOUT="${INT8_TIMEOUT:-40}"
RUN_INT8="${RUN_INT8:-0}"
[ -f bench/gpu_int8_attention.py ] || RUN_INT8=0
DRY="${DRY_RUN:-0}"

left() { echo $(( BUDGET - (SECONDS - START) )); }
# cap a step's timeout at what is left of the budget minus a reserve for later steps
cap() {  # cap WANT RESERVE
  local l=$(( $(left) - $2 ))
  [ "$l" -lt 5 ] && l=5
  [ "$1" -lt "$l" ] && echo "$1" || echo "$l"
}
# the summary: one "name rc seconds" line per step
STEPS=()
record() { STEPS+=("$1 $2 $3"); }
# run a step's command under timeout, its output to the terminal and LOG: step NAME T LOG CMD...
step() {
  local name=$1 t=$2 log=$3; shift 3
  local t0=$SECONDS rc
  echo "== $name (t=$((SECONDS - START)) s, timeout ${t} s): $*" | tee -a "$log"
  if [ "$DRY" = "1" ]; then
    record "$name" dry-run 0
    return 0
  fi
  timeout -k 5 "$t" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  record "$name" "$rc" $((SECONDS - t0))
  return 0
}
: > "$OUT/gpu_env.log"; : > "$OUT/gpu_tests.log"; : > "$OUT/gpu_dispatch.log"
: > "$OUT/gpu_attention.log"

# -- 0: background precompile (CPU work; the tests' GPU work is tiny)
PRE_PID=""
if [ "$DRY" != "1" ]; then
  # shellcheck disable=SC2086
  timeout -k 5 "${PRECOMPILE_TIMEOUT:-75}" "$PY" bench/gpu_attention.py --precompile \
    --precompile-jobs "${PRECOMPILE_JOBS:-6}" $BENCH_ARGS > "$OUT/precompile.log" 2>&1 &
  PRE_PID=$!
fi

# -- 1: versions
echo "== 1 environment" | tee -a "$OUT/gpu_env.log"
if [ "$DRY" != "1" ]; then
  {
    timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    timeout 30 "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); \
print('triton', triton.__version__); print('device', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'NO CUDA')"
    timeout 30 "$PY" -c "from importlib.metadata import version; print('flash-attn-4', version('flash-attn-4'))" \
      2>/dev/null || echo "flash-attn-4 not installed (no fa4 column)"
  } 2>&1 | tee -a "$OUT/gpu_env.log"
fi

# -- 2: the gpu-marked tests, dealt round-robin to TEST_JOBS pytest processes
RESERVE_AFTER_TESTS=$(( DISPATCH_TIMEOUT + 60 + (RUN_INT8 == 1 ? INT8_TIMEOUT : 0) ))
TEST_T=$(cap "${TEST_TIMEOUT:-75}" "$RESERVE_AFTER_TESTS")
echo "== 2 gpu tests (t=$((SECONDS - START)) s, timeout ${TEST_T} s)" | tee -a "$OUT/gpu_tests.log"
if [ "$DRY" = "1" ]; then
  record gpu_tests dry-run 0
else
  t0=$SECONDS
  mapfile -t TEST_IDS < <(timeout 60 "$PY" -m pytest -q -m gpu tests/kernels tests/attention \
    -p no:cacheprovider --collect-only 2>/dev/null | grep '::')
  JOBS="${TEST_JOBS:-6}"
  [ "${#TEST_IDS[@]}" -lt "$JOBS" ] && JOBS="${#TEST_IDS[@]}"
  echo "${#TEST_IDS[@]} gpu tests in $JOBS processes" | tee -a "$OUT/gpu_tests.log"
  pids=()
  for ((j = 0; j < JOBS; j++)); do
    mine=()
    for ((i = j; i < ${#TEST_IDS[@]}; i += JOBS)); do mine+=("${TEST_IDS[$i]}"); done
    timeout -k 5 "$TEST_T" "$PY" -m pytest -q "${mine[@]}" -p no:cacheprovider --durations=5 \
      > "$OUT/gpu_tests.$j.log" 2>&1 &
    pids+=($!)
  done
  tests_rc=0
  for pid in "${pids[@]}"; do wait "$pid" || tests_rc=$?; done
  [ "$JOBS" -eq 0 ] && tests_rc=5  # pytest's "no tests collected"
  for ((j = 0; j < JOBS; j++)); do cat "$OUT/gpu_tests.$j.log"; done | tee -a "$OUT/gpu_tests.log"
  record gpu_tests "$tests_rc" $((SECONDS - t0))
fi

# the timed steps need the compile workers done (they normally are by now)
if [ -n "$PRE_PID" ]; then
  wait "$PRE_PID"
  pre_rc=$?
  record precompile "$pre_rc" "-"
  echo "== precompile rc=$pre_rc (t=$((SECONDS - START)) s): $(tail -n 1 "$OUT/precompile.log")" \
    | tee -a "$OUT/gpu_tests.log"
fi

# -- 3: the dispatch check (its --budget-s leaves time for the case in flight)
DISPATCH_T=$(cap "$DISPATCH_TIMEOUT" $(( 45 + (RUN_INT8 == 1 ? INT8_TIMEOUT : 0) )))
# shellcheck disable=SC2086
step dispatch "$DISPATCH_T" "$OUT/gpu_dispatch.log" "$PY" bench/gpu_dispatch.py \
  --budget-s $(( DISPATCH_T > 25 ? DISPATCH_T - 15 : 10 )) $DISPATCH_ARGS

# -- 4: the benchmark; it stops starting shapes early enough for the one in flight
# to finish (~15 s at 16k with autotuning); every finished shape is in the JSON
BENCH_T=$(cap 600 $(( 3 + (RUN_INT8 == 1 ? INT8_TIMEOUT : 0) )))
# shellcheck disable=SC2086
step benchmark "$BENCH_T" "$OUT/gpu_attention.log" "$PY" bench/gpu_attention.py $BENCH_ARGS \
  --budget-s $(( BENCH_T > 30 ? BENCH_T - 20 : 10 ))

# -- 5 (optional): the int8 attention kernel's benchmark
if [ "$RUN_INT8" = "1" ]; then
  : > "$OUT/gpu_int8_attention.log"
  # shellcheck disable=SC2086
  step int8 "$(cap "$INT8_TIMEOUT" 0)" "$OUT/gpu_int8_attention.log" "$PY" bench/gpu_int8_attention.py \
    ${INT8_ARGS:---budget-s 20}
fi

# -- 6 (optional): the tile planner against torch.matmul
if [ "${RUN_PLANNER:-0}" = "1" ]; then
  : > "$OUT/planner_gpu.log"
  step planner "$(cap 90 0)" "$OUT/planner_gpu.log" "$PY" bench/planner.py --device cuda
fi

# -- summary
TOTAL=$((SECONDS - START))
printf '%s\n' "${STEPS[@]}" > "$OUT/gpu_check_steps.txt"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
timeout 30 "$PY" - "$OUT" "$TOTAL" "$COMMIT" <<'EOF' || echo "(summary script failed; steps: ${STEPS[*]})"
import json, sys
from pathlib import Path

out, total, commit = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
steps = []
for line in (out / "gpu_check_steps.txt").read_text().splitlines():
    name, rc, secs = line.split()
    steps.append({"step": name, "rc": rc, "seconds": secs})
summary = {"total_s": total, "commit": commit, "steps": steps}
for name in ("gpu_dispatch.json", "gpu_attention.json"):
    try:
        data = json.loads((out / name).read_text())
    except (OSError, ValueError):
        continue
    if name == "gpu_dispatch.json":
        summary["dispatch"] = data.get("summary")
    else:
        ratios = {}
        for r in data.get("rows", []):
            for mode in ("fwd", "fwd+bwd"):
                tf = r["tflops"][mode]
                best = max((tf[n] for n in ("sdpa", "headwise") if n in tf), default=None)
                if best and "auto" in tf:
                    ratios[f"D={r['head_dim']} causal={r['causal']} T={r['seq']} {mode}"] = round(tf["auto"] / best, 3)
        summary["benchmark"] = {"shapes": len(data.get("rows", [])), "auto_over_best": ratios,
                                "skipped_for_time": data.get("skipped_for_time"),
                                "fa4": data.get("fa4_error") or data.get("fa4_version")}
(out / "gpu_check_summary.json").write_text(json.dumps(summary, indent=1))
print(f"== summary ({total} s, commit {commit}; rc 124 = timed out)")
for s in steps:
    print(f"  {s['step']:<12} rc={s['rc']:<8} {s['seconds']} s")
for key in ("dispatch", "benchmark"):
    if key in summary:
        print(f"  {key}: {json.dumps(summary[key])}")
EOF
# exit 0 only when every step that ran passed
for s in "${STEPS[@]}"; do  # shellcheck disable=SC2086
  set -- $s
  [ "$2" = "0" ] || [ "$2" = "dry-run" ] || exit 1
done
exit 0
