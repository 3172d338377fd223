#!/usr/bin/env bash
# Correctness, throughput and a profile of DynaMixer on one accelerator, in under 7 minutes.
#
#   bash benchmarks/accelerator_check.sh [OUTDIR]      # from the repository root
#
# OUTDIR defaults to $OUT, else ./accelerator_out. Writes there:
#   log.txt           everything printed (kept even if a section times out)
#   environment.txt   nvidia-smi and jax's environment report
#   correctness.json  device vs CPU logits (S, M, L), JAX vs the PyTorch twin, bf16 vs fp32 top-1
#   train_step.json   the training-step race (benchmarks/train_step.py --concurrent): S, M, L in
#                     JAX (S with each remat, scan_layers, cuBLAS-only) and PyTorch (eager,
#                     torch.compile of the model and of each layer), bf16, batch 128, MFU
#   throughput.json   with SWEEP=1: JAX and PyTorch records (benchmarks/throughput.py)
#   step.xplane.pb.gz with PROFILE=1: a jax.profiler trace of one S bf16 training step
#                     (gunzip it; benchmarks/profile_step.py --summarize reads it where TensorFlow is)
# Needs python3 with jax, flax, optax, numpy (torch for the twin and the baseline; no
# TensorFlow). The package is not installed: PYTHONPATH=. is set here.
#
# Each section runs under `timeout` and also stops starting new work at its own budget, so
# one slow compile cannot eat the rest. Environment knobs:
#   CHECK_QUICK=1        tiny models at 56x56, batch 2 (a CPU smoke run of this script)
#   CHECK_TIME_SCALE=1.5 multiply every budget and timeout (e.g. on a slower machine)
#   RACE_SETTINGS="..."  the race's settings (train_step.py's names); RACE_BATCH=128
#   SWEEP=1              also benchmarks/throughput.py's sweep (inference, memory, more batches)
#   CHECK_MODELS="S M L" models of that sweep (default S; M and L need CHECK_TIME_SCALE=3)
#   PROFILE=1            also trace one S bf16 training step
#   PYTHON=python3       the interpreter
#   JAX_EXTRA / TORCH_EXTRA   extra arguments for the two throughput runs; they come last, so
#                        they override, e.g. JAX_EXTRA="--remat minimal none"
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
# The JAX sweep uses init_variables weights (--no-twin-weights): importing CUDA torch into the
# JAX process could clash over CUDA libraries, and the values do not change the speed. The
# correctness section does run both frameworks in one process (JAX first), on the same weights.
if [ "${CHECK_QUICK:-0}" = "1" ]; then
  QUICK=(--quick)
  JAX_SWEEP=(--quick --dtypes fp32 bf16 --remat minimal full --max-batch tiny
             --max-batch-dtypes fp32 --memory-limit-gb 0.012)
  TORCH_SWEEP=(--quick --dtypes fp32 bf16)
  T_CORR=$(secs 120); B_CORR=$(secs 90)
  RACE_DTYPE=bf16; RACE_BATCH=(2); RACE_STEPS=1
  RACE=(peak jax:minimal@tiny jax:none@tiny torch@tiny torch-compile-layers@tiny)
  T_RACE=$(secs 240); B_RACE=$(secs 180); B_RACE_ALL=$(secs 220)
  T_JAX=$(secs 240); B_JAX=$(secs 200)
  T_TORCH=$(secs 120); B_TORCH=$(secs 90)
  PROFILE_ARGS=(--quick); T_PROF=$(secs 120)
else
  QUICK=()
  # Measured on an H200 (2026-11-26): XLA compiles the S training step in ~80 s there, so run
  # one after the other 7 minutes hold only S. The race below compiles all settings at once.
  # SWEEP=1 adds benchmarks/throughput.py's sweep (CHECK_MODELS="S M L" with
  # CHECK_TIME_SCALE=3 covers M and L). PROFILE=1 adds a trace of the S bf16 step (~90 s).
  MODELS=(${CHECK_MODELS:-S})
  JAX_SWEEP=(--models "${MODELS[@]}" --dtypes bf16 --batches S:128,256 M:64,128 L:64,128
             --remat minimal --rounds 3 --round-seconds 0.3 --warmup 2 --no-twin-weights)
  TORCH_SWEEP=(--models "${MODELS[@]}" --dtypes bf16 fp32 --batches S:128,256 M:64,128 L:64,128
               --torch-compile-for S:bf16:128 --compile-reserve-s 50
               --rounds 3 --round-seconds 0.3 --warmup 3)
  T_CORR=$(secs 150); B_CORR=$(secs 130)
  # The race: every setting compiles side by side (16 cores), then each is timed alone.
  RACE_DTYPE=bf16; RACE_BATCH=(${RACE_BATCH:-128}); RACE_STEPS=10
  RACE=(${RACE_SETTINGS:-peak jax:minimal jax:none jax:full jax-scan:minimal jax-cublas:minimal
        torch torch-compile torch-compile-layers
        jax:minimal@M torch@M jax:minimal@L torch@L})
  T_RACE=$(secs 400); B_RACE=$(secs 260); B_RACE_ALL=$(secs 380)
  T_JAX=$(secs 200); B_JAX=$(secs 170)
  T_TORCH=$(secs 90); B_TORCH=$(secs 75)
  PROFILE_ARGS=(--model dynamixer_s --batch 128 --dtype bf16 --steps 1); T_PROF=$(secs 120)
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
# and keeps it to its end; the step race (train_step.py --concurrent) compiles every setting side by
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
STEP_TIMING_LOCK="$LOCK" timeout -k 10 "$T_RACE" "$PY" benchmarks/train_step.py --concurrent \
  --dtype "$RACE_DTYPE" --batches "${RACE_BATCH[@]}" --rounds 1 --inner-rounds 3 \
  --steps "$RACE_STEPS" --warmup 2 --barrier-s "$B_RACE" --setting-timeout-s "$B_RACE_ALL" \
  --settings "${RACE[@]}" --json "$OUTDIR/train_step.json"
echo "training-step race exit code $?"
wait "$CORR_PID"
cat "$OUTDIR/correctness.log"

if [ "${SWEEP:-0}" = "1" ] || [ "${CHECK_QUICK:-0}" = "1" ]; then
  stamp "JAX throughput (timeout ${T_JAX}s)"
  XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.9}" \
  timeout -k 10 "$T_JAX" "$PY" benchmarks/throughput.py --frameworks jax "${JAX_SWEEP[@]}" \
    --budget-s "$B_JAX" --json "$OUTDIR/throughput.json" ${JAX_EXTRA:-}
  echo "JAX throughput exit code $?"

  # PyTorch in its own process, JAX kept off the GPU there (it would preallocate memory).
  stamp "PyTorch throughput (timeout ${T_TORCH}s)"
  JAX_PLATFORMS=cpu timeout -k 10 "$T_TORCH" "$PY" benchmarks/throughput.py --frameworks torch \
    "${TORCH_SWEEP[@]}" --budget-s "$B_TORCH" --append --json "$OUTDIR/throughput.json" \
    ${TORCH_EXTRA:-}
  echo "PyTorch throughput exit code $?"
fi

if [ "${PROFILE:-0}" = "1" ] || [ "${CHECK_QUICK:-0}" = "1" ]; then
  stamp "profile of the S bf16 training step (timeout ${T_PROF}s)"
  XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-.9}" \
  timeout -k 10 "$T_PROF" "$PY" benchmarks/profile_step.py "${PROFILE_ARGS[@]}" --out "$OUTDIR"
  echo "profile exit code $?"
  # Traces outgrow what a sandbox hands back (16 MB a file); compressed they are ~10x smaller.
  [ -f "$OUTDIR/step.xplane.pb" ] && gzip -f "$OUTDIR/step.xplane.pb"
fi

stamp "summary"
[ -f "$OUTDIR/train_step.json" ] && JAX_PLATFORMS=cpu timeout -k 5 60 "$PY" \
  benchmarks/train_step.py --summarize "$OUTDIR/train_step.json"
[ -f "$OUTDIR/throughput.json" ] && JAX_PLATFORMS=cpu timeout -k 5 60 "$PY" \
  benchmarks/throughput.py --summarize "$OUTDIR/throughput.json"
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
