"""Timing loops: compile time, rounds of steps with their median rate, and the peak matmul
FLOP/s of the device that MFU is measured against."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchlib.models import DTYPES


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def compile_timed(fn, *args) -> tuple[Any, float]:
    """(compiled executable, seconds to lower and compile the jitted ``fn`` for ``args``)."""
    start = time.perf_counter()
    return fn.lower(*args).compile(), time.perf_counter() - start


def time_rounds(
    run: Callable[[int], None],
    batch: int,
    rounds: int,
    warmup: int,
    round_seconds: float,
    deadline: float,
) -> dict[str, Any]:
    """Warm up, then time ``rounds`` rounds of k steps (k so a round takes ~round_seconds).

    ``run(k)`` runs k steps and blocks until they are done. Stops early at ``deadline``
    (time.monotonic) after at least one round.
    """
    start = time.perf_counter()
    run(max(warmup, 1))
    per_step = (time.perf_counter() - start) / max(warmup, 1)
    steps = max(1, int(round(round_seconds / max(per_step, 1e-6))))
    rates, step_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        run(steps)
        seconds = time.perf_counter() - start
        rates.append(steps * batch / seconds)
        step_times.append(seconds / steps)
        if time.monotonic() > deadline:
            break
    return {
        "img_s": median(rates),
        "step_ms": 1e3 * median(step_times),
        "rounds_img_s": rates,
        "steps_per_round": steps,
    }


def timed_repeats(call: Callable[[], None], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call`` (which blocks), after one untimed call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def peak_record(times: Sequence[float], size: int, framework: str) -> dict[str, Any]:
    """The peak FLOP/s fields of a size^3 matmul timed ``times``."""
    return {
        "flops_per_s": 2 * size**3 / median(times),
        "matmul_size": size,
        "framework": framework,
        "best_flops_per_s": 2 * size**3 / min(times),
    }


def measure_peak_jax(dtype: str, size: int, repeats: int) -> dict[str, Any]:
    """Median FLOP/s of a size^3 matmul in ``dtype`` on the default device (default precision)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (size, size), DTYPES[dtype])
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), DTYPES[dtype])
    matmul = jax.jit(jnp.matmul)
    return peak_record(
        timed_repeats(lambda: jax.block_until_ready(matmul(a, b)), repeats), size, "jax"
    )
