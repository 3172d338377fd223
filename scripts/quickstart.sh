#!/usr/bin/env bash
# Trains the quickstart from a fresh clone: makes a virtual environment (.venv, or $VENV),
# installs the project with its training extras (no torch), then runs
#   python main.py --config=configs/quickstart.py --workdir=WORKDIR
# on the built-in handwritten digits (no download). About 2 minutes of training on a 2-core CPU.
#   bash scripts/quickstart.sh                       # workdir: workdirs/quickstart
#   bash scripts/quickstart.sh /tmp/qs --config.batch_size=128   # a workdir, then any main.py flags
# Running it again with the same workdir resumes from the latest checkpoint (or only evaluates
# when the run had finished). PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
WORKDIR="${1:-workdirs/quickstart}"
shift || true

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[train]"
exec "$VENV/bin/python" main.py --config=configs/quickstart.py --workdir="$WORKDIR" "$@"
