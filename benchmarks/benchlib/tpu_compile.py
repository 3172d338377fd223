"""Compile a step for a TPU this machine does not have, and read what the compiler says about it.

libtpu can compile for any TPU generation it knows from a topology description alone
(``jax.experimental.topologies``): no chip is needed, nothing runs. This module is the lab's core,
importable on its own so that any step or single layer can be measured the same way:

    from benchlib.tpu_compile import chip_mesh, compile_stats, on_chip
    mesh = chip_mesh("v5e")                      # one chip of that generation
    stats = compile_stats(on_chip(fn, mesh), args)   # args: ShapeDtypeStructs

``compile_stats`` returns XLA's memory analysis (per device), its cost analysis (FLOPs and bytes
accessed) and the seconds it took to compile. The per-generation figures of a chip (HBM, bf16
peak, HBM bandwidth) are in :data:`CHIPS`, each with the Google Cloud TPU page it comes from.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchlib.xla_stats import bytes_fields, costs, required_bytes

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: its topology name in libtpu and its published per-chip figures.

    ``hbm`` (as the page writes it, in ``hbm_bytes``; a "GB" is read as 10^9 bytes, the smaller
    reading), ``bf16_tflops`` and ``hbm_gb_s`` are per chip as Google Cloud's TPU page of the
    generation (``source``) states them. On v3 and v4 a chip holds two TensorCores and libtpu's
    topology description lists each core as a device; the per-device share is the per-chip figure
    divided by the devices per chip (which :func:`chip_devices` reads from the topology itself).
    """

    generation: str
    topology: str  # one chip, in libtpu's naming
    accelerator_type: str  # TPU_ACCELERATOR_TYPE of a small slice, only to quiet libtpu
    hbm: str
    bf16_tflops: float
    hbm_gb_s: float
    source: str

    @property
    def hbm_bytes(self) -> float:
        value, unit = self.hbm.split()
        return float(value) * {"GiB": GIB, "GB": 1e9}[unit]


_DOCS = "https://cloud.google.com/tpu/docs/"
CHIPS: dict[str, Chip] = {
    chip.generation: chip
    for chip in (
        Chip("v3", "v3:1x1", "v3-8", "32 GiB", 123, 900, _DOCS + "v3"),
        Chip("v4", "v4:1x1x1", "v4-8", "32 GiB", 275, 1200, _DOCS + "v4"),
        Chip("v5e", "v5e:1x1", "v5litepod-1", "16 GB", 197, 819, _DOCS + "v5e"),
        Chip("v5p", "v5p:1x1x1", "v5p-8", "95 GB", 459, 2765, _DOCS + "v5p"),
        Chip("v6e", "v6e:1x1", "v6e-1", "32 GB", 918, 1638, _DOCS + "v6e"),
    )
}


def libtpu_available() -> bool:
    """Whether libtpu is importable here (the lab needs it; no TPU chip is needed)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


def versions() -> dict[str, str]:
    """jax's and libtpu's versions: part of every cache key (another compiler, another answer)."""
    try:
        libtpu = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        libtpu = "none"
    return {"jax": jax.__version__, "libtpu": libtpu}


def quiet_libtpu(generation: str) -> None:
    """Environment that stops libtpu from looking for a TPU VM's metadata (call before jax
    first touches the TPU backend; values already set are kept)."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", CHIPS[generation].accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Compiling needs no chip, so several compiling processes may share the machine.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def chip_devices(generation: str) -> list[Any]:
    """The devices of one chip of ``generation`` (two TensorCores on v3 and v4, else one)."""
    quiet_libtpu(generation)
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=CHIPS[generation].topology, chips_per_host_bounds=(1, 1, 1)
    )
    return list(topology.devices)


def chip_mesh(generation: str, axis: str = "data") -> Mesh:
    """A one-device mesh on the first device of one chip: the per-device program of a data-parallel
    step, without collectives (the per-device batch is what sets its memory and cost)."""
    return Mesh(np.array(chip_devices(generation)[:1]), (axis,))


def devices_per_chip(generation: str) -> int:
    """How many devices libtpu's topology lists on one chip of ``generation``."""
    return len(chip_devices(generation))


def on_chip(fn: Callable, mesh: Mesh) -> Callable:
    """``fn`` jitted with every argument and result placed whole on ``mesh``'s device."""
    whole = NamedSharding(mesh, PartitionSpec())
    return jax.jit(fn, in_shardings=whole, out_shardings=whole)


def compile_stats(step_fn, args: tuple, hlo_path: str | None = None) -> dict[str, Any]:
    """Lower and compile ``step_fn(*args)`` (a jitted function whose shardings name the target
    devices, e.g. from :func:`on_chip` or ``make_train_step`` on :func:`chip_mesh`).

    Returns, per device: ``memory`` (XLA's memory analysis, bytes), ``hbm_bytes`` (arguments +
    outputs - donated aliases + temporaries + code: what the step holds in HBM at its peak),
    ``flops`` and ``bytes_accessed`` (XLA's cost analysis), and ``lower_s``/``compile_s``.
    ``hlo_path``: also write the optimised HLO module there (to see which ops move the bytes).
    """
    start = time.perf_counter()
    lowered = step_fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(compiled.as_text())
    memory = bytes_fields(compiled)
    return {
        "memory": memory,
        "hbm_bytes": required_bytes(memory),
        **costs(compiled),
        "lower_s": round(lowered_at - start, 2),
        "compile_s": round(done - lowered_at, 2),
    }
