"""Out of memory, said in one line: what the step needs by the compiler's own analysis
(``compiled.memory_analysis()``), what the device has, and what fits instead.

XLA reports a step that does not fit as ``RESOURCE_EXHAUSTED`` (at compile time on TPU, when
the buffers are allocated on GPU); :func:`out_of_memory` turns that into :class:`OutOfMemory`.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from dynamixer_jax.errors import OutOfMemory

log = logging.getLogger(__name__)

_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is XLA's (or the allocator's) out-of-memory error."""
    return any(marker in str(error) for marker in _MARKERS)


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``'s arrays (what lowering a step needs)."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)
        ),
        tree,
    )


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def needed_bytes(step: Any, args: tuple) -> int | None:
    """Peak device memory of the jitted ``step`` on ``args`` (abstract), by the compiler's
    analysis: arguments, outputs (less what they alias) and temporaries; None if unknown."""
    try:
        analysis = step.lower(*args).compile().memory_analysis()
        if analysis is None:
            return None
        size = {
            name: int(getattr(analysis, f"{name}_size_in_bytes", 0) or 0)
            for name in ("argument", "output", "alias", "temp", "generated_code")
        }
        total = (
            size["argument"]
            + size["output"]
            - size["alias"]
            + size["temp"]
            + size["generated_code"]
        )
        return total if total > 0 else None
    except Exception as error:  # the analysis itself may not fit (TPU compiles): go without
        log.debug("no memory analysis: %s", error)
        return None


def device_bytes() -> int | None:
    """The memory one device has for arrays, where the backend says (None on CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def out_of_memory(
    step: Any,
    args: tuple,
    *,
    batch_size: int,
    image_size: Any,
    grad_accum_steps: int,
    remat: str,
) -> OutOfMemory:
    """The one-line error for a training ``step`` (jitted) that ran out of memory on ``args``
    (abstract), with what the compiler says it needs and the settings that need less."""
    devices = jax.device_count()
    per_device = batch_size // devices
    log.info("the first step ran out of memory; compiling it again to measure what it needs")
    needed, has = needed_bytes(step, args), device_bytes()
    need = f" needs {_size(needed)} by the compiler's memory analysis" if needed else ""
    of = f" ({_size(has)} per device)" if has else ""
    accum = f" in {grad_accum_steps} passes" if grad_accum_steps > 1 else ""
    fits = [f"a smaller --config.batch_size (e.g. {max(batch_size // 2, devices)})"]
    more = grad_accum_steps * 2
    if per_device % more == 0:
        fits.append(
            f"--config.grad_accum_steps={more} (the same batch in {more} passes of "
            f"{per_device // more} images)"
        )
    if remat != "full":
        fits.append("--config.remat=full (recomputes activations in the backward pass)")
    return OutOfMemory(
        f"out of memory on {jax.devices()[0].device_kind}{of}: the training step at "
        f"{per_device} images per device{accum} (batch_size {batch_size} over {devices} "
        f"device(s), image_size {image_size}){need}; use {', or '.join(fits)}"
    )


def eval_out_of_memory(step: Any, args: tuple, *, batch_size: int, image_size: Any) -> OutOfMemory:
    """The one-line error for an evaluation ``step`` (jitted) that ran out of memory on
    ``args`` (abstract) at global batch ``batch_size``."""
    devices = jax.device_count()
    log.info("the evaluation step ran out of memory; compiling it again to measure what it needs")
    needed, has = needed_bytes(step, args), device_bytes()
    need = f" needs {_size(needed)} by the compiler's memory analysis" if needed else ""
    of = f" ({_size(has)} per device)" if has else ""
    return OutOfMemory(
        f"out of memory on {jax.devices()[0].device_kind}{of}: the evaluation step at "
        f"{batch_size // devices} images per device (eval_batch_size {batch_size} over "
        f"{devices} device(s), image_size {image_size}){need}; use a smaller "
        f"--config.eval_batch_size (e.g. {max(batch_size // 2, devices)})"
    )
