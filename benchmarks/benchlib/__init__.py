"""Pieces the benchmark scripts share: model building, the AdamW step, timing, XLA's memory and
FLOP figures, the JAX and PyTorch measurements of ``throughput.py``, its records and reports.

``benchmarks/`` is not an installed package: a script run as ``python benchmarks/NAME.py`` has
``benchmarks/`` on ``sys.path`` and so finds this package; importing it puts the repository root
there too, so a fresh clone's scripts use this checkout's ``dynamixer_jax`` without installing it.
Imports only jax, flax, optax and numpy (torch only where a baseline asks for it).
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

prefer_memory_saving_scheduler()  # as main.py: before any JAX computation of a benchmark


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""
