#!/usr/bin/env bash
# Correctness, throughput and a profile of DynaMixer on one accelerator, in under 7 minutes.
#
#   bash benchmarks/accelerator_check.sh [OUTDIR]      # from the repository root
#
# Writes to OUTDIR ($OUT, else ./accelerator_out): log.txt (everything printed), environment.txt,
# correctness.json (benchmarks/accelerator_check.py), throughput.json (the training-step race:
# benchmarks/throughput.py --concurrent, bf16, batch 128: S with each remat and scan_layers, M, L,
# PyTorch eager and torch.compile, MFU); with SWEEP=1 sweep.json (inference and training at a
# larger batch) and memory.json (benchmarks/memory.py, compile only); with PROFILE=1 trace/ (a
# jax.profiler trace of S bf16 steps, *.xplane.pb gzipped, for TensorBoard or XProf).
# Needs python3 with jax, flax, optax, numpy and torch (no TensorFlow); sets PYTHONPATH=.
#
# Each section runs under `timeout` and starts no new work after its own budget. Knobs:
#   CHECK_QUICK=1        tiny models at 56x56, batch 2 (a CPU smoke run of this script)
#   CHECK_TIME_SCALE=1.5 multiply every budget and timeout (e.g. on a slower machine)
#   RACE_SETTINGS="..."  the race's settings (throughput.py's names; e.g. add
#                        torch-compile:max-autotune, a long compile); RACE_BATCH=128
#   SWEEP=1, CHECK_MODELS="S M L" (default S; M and L need CHECK_TIME_SCALE=3), SWEEP_EXTRA
#                        (more sweep arguments, last, so they override); PROFILE=1; PYTHON=python3
set -u
OUTDIR="${1:-${OUT:-./accelerator_out}}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
PY="${PYTHON:-python3}"
SCALE="${CHECK_TIME_SCALE:-1}"
exec > >(tee -a "$OUTDIR/log.txt") 2>&1

secs() { "$PY" -c "import sys; print(int(float(sys.argv[1]) * float(sys.argv[2])))" "$1" "$SCALE"; }
stamp() { echo "=== $(date -u +%H:%M:%S) $* ==="; }
START=$(date +%s)

# Sections: timeout (s) of the process, and the budget after which it starts nothing new.
# Every throughput setting runs in its own process (JAX and CUDA torch never share one); the
# correctness section does run both frameworks in one process (JAX first), on the same weights.
if [ "${CHECK_QUICK:-0}" = "1" ]; then
  QUICK=(--quick)
  SIZE=(--image-size 56)
  T_CORR=$(secs 120); B_CORR=$(secs 90)
  RACE_DTYPE=bf16; RACE_BATCH=(2); RACE_STEPS=1
  RACE=(peak jax:minimal@tiny jax:none@tiny torch@tiny torch-compile@tiny)
  T_RACE=$(secs 240); B_RACE=$(secs 180); B_RACE_ALL=$(secs 220)
  SWEEP_ARGS=(--batches 4 --settings jax:minimal@tiny torch@tiny)
  MEMORY_ARGS=(--models tiny --dtypes bf16 --remat minimal --batches 2 4 --fit-gb 0.05)
  T_SWEEP=$(secs 240); T_MEMORY=$(secs 240)
  PROFILE_ARGS=(--settings jax:minimal@tiny --batches 2 --steps 1); T_PROF=$(secs 120)
else
  QUICK=()
  SIZE=()
  # XLA compiles the S step in ~80 s on an H200 (2026-11-26): 7 minutes one after the other hold
  # only S, so the race compiles all settings at once (16 cores) and then times each alone.
  MODELS=(${CHECK_MODELS:-S})
  T_CORR=$(secs 150); B_CORR=$(secs 130)
  RACE_DTYPE=bf16; RACE_BATCH=(${RACE_BATCH:-128}); RACE_STEPS=10
  RACE=(${RACE_SETTINGS:-peak jax:minimal jax:none jax:full jax-scan:minimal torch torch-compile
        jax:minimal@M torch@M jax:minimal@L torch@L})
  T_RACE=$(secs 400); B_RACE=$(secs 260); B_RACE_ALL=$(secs 380)
  SWEEP_SETTINGS=(peak torch-compile@S)
  for m in "${MODELS[@]}"; do SWEEP_SETTINGS+=("jax:minimal@$m" "torch@$m"); done
  SWEEP_ARGS=(--batches 256 --steps 5 --settings "${SWEEP_SETTINGS[@]}")
  MEMORY_ARGS=(--models "${MODELS[@]}" --dtypes bf16 --remat minimal --batches 64 128)
  T_SWEEP=$(secs 300); T_MEMORY=$(secs 200)
  PROFILE_ARGS=(--settings jax:minimal --batches 128 --steps 1); T_PROF=$(secs 120)
fi

stamp "environment"
{
  date -u
  nvidia-smi 2>&1 | head -20 || true
  "$PY" -c "import jax; print(jax.devices()); jax.print_environment_info()" 2>&1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 || true
} > "$OUTDIR/environment.txt" 2>&1
cat "$OUTDIR/environment.txt"

# The device lock: whoever holds it has the GPU to itself. The correctness check takes it at once
# and keeps it to its end; the step race (throughput.py --concurrent) compiles every setting side by
# side meanwhile and then times one setting at a time under the same lock.
LOCK="$(mktemp /tmp/dynamixer_device_lock.XXXXXX)"
: > "$LOCK"
stamp "correctness (timeout ${T_CORR}s, in the background, holding the device lock)"
(
  exec 9>"$LOCK"
  flock 9 2>/dev/null || true
  XLA_PYTHON_CLIENT_PREALLOCATE=false \
  timeout -k 10 "$T_CORR" "$PY" benchmarks/accelerator_check.py "${QUICK[@]}" \
    --budget-s "$B_CORR" --json "$OUTDIR/correctness.json" > "$OUTDIR/correctness.log" 2>&1
  echo "correctness exit code $?" >> "$OUTDIR/correctness.log"
) &
CORR_PID=$!
sleep 2

stamp "training-step race, ${RACE_DTYPE} (timeout ${T_RACE}s): ${RACE[*]}"
STEP_TIMING_LOCK="$LOCK" timeout -k 10 "$T_RACE" "$PY" benchmarks/throughput.py --concurrent \
  --dtype "$RACE_DTYPE" --batches "${RACE_BATCH[@]}" --rounds 1 --inner-rounds 3 "${SIZE[@]}" \
  --steps "$RACE_STEPS" --warmup 2 --barrier-s "$B_RACE" --setting-timeout-s "$B_RACE_ALL" \
  --settings "${RACE[@]}" --json "$OUTDIR/throughput.json"
echo "training-step race exit code $?"
wait "$CORR_PID"
cat "$OUTDIR/correctness.log"

if [ "${SWEEP:-0}" = "1" ] || [ "${CHECK_QUICK:-0}" = "1" ]; then
  stamp "sweep: inference and training, bf16 (timeout ${T_SWEEP}s)"
  timeout -k 10 "$T_SWEEP" "$PY" benchmarks/throughput.py --concurrent --modes infer train \
    --dtype bf16 --rounds 1 --inner-rounds 3 --warmup 2 "${SIZE[@]}" "${SWEEP_ARGS[@]}" \
    --json "$OUTDIR/sweep.json" ${SWEEP_EXTRA:-}
  echo "sweep exit code $?"
  stamp "memory analysis of the bf16 step, compile only (timeout ${T_MEMORY}s)"
  timeout -k 10 "$T_MEMORY" "$PY" benchmarks/memory.py "${SIZE[@]}" "${MEMORY_ARGS[@]}" \
    --json "$OUTDIR/memory.json"
  echo "memory analysis exit code $?"
fi

if [ "${PROFILE:-0}" = "1" ] || [ "${CHECK_QUICK:-0}" = "1" ]; then
  stamp "trace of the S bf16 training step (timeout ${T_PROF}s)"
  XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.9}" \
  timeout -k 10 "$T_PROF" "$PY" benchmarks/throughput.py --in-process --rounds 1 --dtype bf16 \
    "${SIZE[@]}" "${PROFILE_ARGS[@]}" --trace "$OUTDIR/trace" --json "$OUTDIR/trace/step.json"
  echo "trace exit code $?"
  # Traces outgrow what a sandbox hands back (16 MB a file); compressed they are ~10x smaller.
  find "$OUTDIR/trace" -name '*.xplane.pb' -exec gzip -f {} \;
fi

stamp "summary"
for f in throughput sweep; do
  [ -f "$OUTDIR/$f.json" ] && JAX_PLATFORMS=cpu timeout -k 5 60 "$PY" \
    benchmarks/throughput.py --summarize "$OUTDIR/$f.json"
done
JAX_PLATFORMS=cpu timeout -k 5 30 "$PY" - "$OUTDIR/correctness.json" <<'PYEOF'
import json, sys
try:
    checks = json.load(open(sys.argv[1]))["checks"]
except Exception as exc:
    sys.exit(f"no correctness results: {exc}")
for c in checks:
    if c["status"] != "ok":
        print(f"{c['check']:<14} {c['status']}: {c.get('error')}")
    elif c["check"] == "device_vs_cpu":
        print(f"device_vs_cpu  {c['model']:<12} highest max_rel {c['highest']['max_rel']:.2e}  "
              f"default max_rel {c['default_precision']['max_rel']:.2e}  "
              f"jax_vs_torch max_rel {c['jax_vs_torch']['max_rel']:.2e}")
    else:
        print(f"bf16_vs_fp32   {c['model']:<12} top-1 agreement {100 * c['top1_agreement']:.1f}%  "
              f"max |dlogit| / std {c['max_abs_over_logit_std']:.3f}")
PYEOF
stamp "done in $(( $(date +%s) - START )) s; files in $OUTDIR"
ls -la "$OUTDIR"
