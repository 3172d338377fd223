#!/usr/bin/env bash
# Runs the test suite from a fresh clone: makes a virtual environment (.venv, or $VENV),
# installs torch 2.13.0 (CPU) and the project with its test extras, then runs pytest.
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh --fast          # the fast tier: leaves out tests marked slow (under 2 min)
#   bash scripts/test.sh -k parity       # extra arguments go to pytest
#   TEST_WORKERS=1 bash scripts/test.sh  # one process instead of two pytest-xdist workers
# PYTHON picks the interpreter (default python3; Python 3.11 is what CI uses).
# DYNAMIXER_NO_TORCH=1 installs everything but torch and leaves out the tests that need it
# (CI's second leg, on a Python for which no CPU torch wheel is at hand).
# The installation is skipped when the environment was made from the same pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
NO_TORCH="${DYNAMIXER_NO_TORCH:-0}"

TIER=()
if [ "${1:-}" = "--fast" ]; then
  shift
  TIER=(-m "not slow")
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.dynamixer_installed"
wanted="$(cat pyproject.toml; echo "$TORCH_SPEC no_torch=$NO_TORCH")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  rm -f "$stamp"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  if [ "$NO_TORCH" = 1 ]; then
    "$VENV/bin/python" -m pip install --quiet -e ".[train,notebooks,test-core]"
  else
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    "$VENV/bin/python" -c "import torch" || { echo "torch is missing: the parity tests cannot run" >&2; exit 1; }
  fi
  printf '%s' "$wanted" > "$stamp"
fi
# Two workers, each test file on one (--dist loadfile keeps a file's module fixtures and its
# order), handed out longest first (tests/conftest.py's LONGEST_MODULES; --no-loadscope-reorder
# keeps that order). TEST_WORKERS=1 runs it in one process; any other count goes to xdist's -n.
WORKERS="${TEST_WORKERS:-2}"
XDIST=()
if [ "$WORKERS" != 1 ]; then
  XDIST=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi
exec "$VENV/bin/python" -m pytest "${XDIST[@]}" "${TIER[@]}" "$@"
