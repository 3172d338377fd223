"""What XLA and the device report about a compiled step: memory analysis, FLOP count, device
memory statistics, and the memory a larger batch will need, extrapolated from a smaller one."""

from __future__ import annotations

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


def bytes_fields(compiled) -> dict[str, int | None]:
    """XLA's memory analysis of a compiled function, each field None where unavailable."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not implemented on some backends / versions
        analysis = None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    out = {}
    for key, attr in MEMORY_FIELDS.items():
        value = getattr(analysis, attr, None) if analysis is not None else None
        out[key] = int(value) if isinstance(value, (int, np.integer)) else None
    return out


def required_bytes(memory: dict[str, int | None]) -> int | None:
    """Device bytes a compiled step needs: arguments + outputs - donated aliases + temp + code."""
    if memory.get("temp_bytes") is None or memory.get("argument_bytes") is None:
        return None
    return (
        memory["argument_bytes"]
        + (memory.get("output_bytes") or 0)
        - (memory.get("alias_bytes") or 0)
        + memory["temp_bytes"]
        + (memory.get("generated_code_bytes") or 0)
    )


def xla_flops(compiled) -> float | None:
    """``cost_analysis()['flops']`` (a dict in recent jax, a list of dicts in older), or None."""
    try:
        costs = compiled.cost_analysis()
        if isinstance(costs, (list, tuple)):
            costs = costs[0] if costs else None
        return float(costs["flops"]) if costs and "flops" in costs else None
    except Exception:
        return None


def device_memory_stats(device) -> dict[str, Any]:
    """``device.memory_stats()`` or {} where the backend has none."""
    try:
        return dict(device.memory_stats() or {})
    except Exception:
        return {}


def predicted_bytes(records: list[dict[str, Any]], base: dict[str, Any]) -> int | None:
    """Device bytes ``base`` needs, extrapolated linearly in the batch from the largest smaller
    batch of the same JAX configuration (arguments fixed, the rest per image); None if none."""
    same = [
        r
        for r in records
        if r.get("framework") == "jax"
        and r.get("memory")
        and all(r.get(k) == base[k] for k in ("model", "dtype", "mode", "remat"))
        and isinstance(r.get("batch"), int)
        and r["batch"] < base["batch"]
        and required_bytes(r["memory"])
    ]
    if not same:
        return None
    ref = max(same, key=lambda r: r["batch"])
    need, fixed = required_bytes(ref["memory"]), ref["memory"]["argument_bytes"] or 0
    return int(fixed + (need - fixed) * base["batch"] / ref["batch"])
