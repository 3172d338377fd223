"""Compile a jitted function and read what XLA says about it: its memory and cost analyses."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

MEMORY_FIELDS = {
    "temp_bytes": "temp_size_in_bytes",
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "peak_memory_bytes": "peak_memory_in_bytes",
}


def _analysis(compiled, method: str):
    """``compiled.<method>()`` (one per device in older jax: the first), or None."""
    try:
        found = getattr(compiled, method)()
    except Exception:  # not implemented on some backends / versions
        return None
    return (found[0] if found else None) if isinstance(found, (list, tuple)) else found


def bytes_fields(compiled) -> dict[str, int | None]:
    """XLA's memory analysis of a compiled function, each field None where unavailable."""
    analysis = _analysis(compiled, "memory_analysis")
    values = {key: getattr(analysis, attr, None) for key, attr in MEMORY_FIELDS.items()}
    return {k: int(v) if isinstance(v, (int, np.integer)) else None for k, v in values.items()}


def required_bytes(memory: dict[str, int | None]) -> int | None:
    """Device bytes a compiled step needs: arguments + outputs - donated aliases + temp + code."""
    if memory["temp_bytes"] is None or memory["argument_bytes"] is None:
        return None
    total = memory["argument_bytes"] + memory["temp_bytes"] + (memory["output_bytes"] or 0)
    return total + (memory["generated_code_bytes"] or 0) - (memory["alias_bytes"] or 0)


def costs(compiled) -> dict[str, float | None]:
    """``flops`` and ``bytes_accessed`` of ``cost_analysis()``, each None where unavailable."""
    found = _analysis(compiled, "cost_analysis") or {}
    return {
        "flops": float(found["flops"]) if "flops" in found else None,
        "bytes_accessed": float(found["bytes accessed"]) if "bytes accessed" in found else None,
    }


def compile_stats(fn, args: tuple) -> dict[str, Any]:
    """Lower and compile the jitted ``fn`` for ``args`` (abstract ones may name absent devices):
    per device ``memory``, ``hbm_bytes``, ``flops`` and ``bytes_accessed``; the seconds taken."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    memory = bytes_fields(compiled)
    return {
        "memory": memory,
        "hbm_bytes": required_bytes(memory),
        **costs(compiled),
        "lower_s": round(lowered_at - start, 2),
        "compile_s": round(done - lowered_at, 2),
    }
