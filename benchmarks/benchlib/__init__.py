"""Pieces the benchmark scripts share: model building, the AdamW step, timing, XLA's memory and
FLOP figures, the abstract training step of a run, and the TPU compile lab's core.

``benchmarks/`` is not an installed package: a script run as ``python benchmarks/NAME.py`` has
``benchmarks/`` on ``sys.path`` and so finds this package; importing it puts the repository root
there too, so a fresh clone's scripts use this checkout's ``dynamixer_jax`` (and the PyTorch twin,
``dynamixer_torch``) without installing them. Imports only the standard library here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

prefer_memory_saving_scheduler()  # as main.py: before any JAX computation of a benchmark


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


def short_error(exc: BaseException) -> str:
    """The first line of an exception, for records and logs."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def write_json(path: str, content: Any) -> None:
    """Write ``content`` to ``path`` atomically (a killed run leaves the previous file whole)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(content, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
