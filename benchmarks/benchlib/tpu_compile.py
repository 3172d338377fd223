"""TPU chips this machine does not have, to compile for: libtpu compiles for any generation it
knows from a topology description alone (``jax.experimental.topologies``; nothing runs).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: its topology name in libtpu and its HBM per chip as Google Cloud's TPU
    page of the generation (``source``) states it (``hbm`` as written there; a "GB" is read as
    10^9 bytes, the smaller reading). On v3 and v4 a chip holds two TensorCores and libtpu
    lists each core as a device: the per-device share is the per-chip figure over the devices."""

    generation: str
    topology: str  # one chip, in libtpu's naming
    accelerator_type: str  # TPU_ACCELERATOR_TYPE of a small slice, only to quiet libtpu
    hbm: str
    source: str

    @property
    def hbm_bytes(self) -> float:
        value, unit = self.hbm.split()
        return float(value) * {"GiB": 2**30, "GB": 1e9}[unit]


_DOCS = "https://cloud.google.com/tpu/docs/"
CHIPS: dict[str, Chip] = {
    chip.generation: chip
    for chip in (
        Chip("v3", "v3:1x1", "v3-8", "32 GiB", _DOCS + "v3"),
        Chip("v4", "v4:1x1x1", "v4-8", "32 GiB", _DOCS + "v4"),
        Chip("v5e", "v5e:1x1", "v5litepod-1", "16 GB", _DOCS + "v5e"),
        Chip("v5p", "v5p:1x1x1", "v5p-8", "95 GB", _DOCS + "v5p"),
        Chip("v6e", "v6e:1x1", "v6e-1", "32 GB", _DOCS + "v6e"),
    )
}


def versions(libtpu: str | None = None) -> dict[str, str]:
    """jax's and libtpu's versions (``libtpu``: read another's cache), part of every cache key."""
    out = {}
    for name in ("jax", "libtpu"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "none"
    return {**out, "libtpu": libtpu} if libtpu else out


def quiet_libtpu(generation: str) -> None:
    """Environment that stops libtpu from looking for a TPU VM's metadata (call before JAX starts
    a backend; values already set are kept)."""
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
