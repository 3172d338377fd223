"""Compile time, and the peak matmul FLOP/s of the device that MFU is measured against."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp


def compile_timed(fn, *args) -> tuple[Any, float]:
    """(compiled executable, seconds to lower and compile the jitted ``fn`` for ``args``)."""
    start = time.perf_counter()
    return fn.lower(*args).compile(), time.perf_counter() - start


def measure_peak_jax(dtype: str, size: int, repeats: int) -> dict[str, Any]:
    """Median FLOP/s of a size^3 matmul in ``dtype`` on the default device (default precision),
    after one untimed call."""
    key = jax.random.key(0)
    dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return {"flops_per_s": 2 * size**3 / statistics.median(times), "matmul_size": size}
