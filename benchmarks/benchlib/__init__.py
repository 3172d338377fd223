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
import platform
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


# The vector extensions worth naming beside a CPU figure (x86 flags, Arm features).
VECTOR_PREFIXES = ("sse4", "avx", "fma", "amx", "asimd", "sve", "sme2")
VECTOR_NAMES = ("sme", "i8mm", "bf16")  # Arm; only whole ("smep" is an x86 security flag)


def cpu_description() -> dict:
    """The CPU's model name, core count and vector extensions (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and value.strip():
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(VECTOR_PREFIXES) or f in VECTOR_NAMES)
    return {"name": name, "cores": os.cpu_count(), "vector_extensions": vector}
