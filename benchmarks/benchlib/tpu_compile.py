"""TPU chips this machine does not have, to compile for: libtpu compiles for any generation it
knows from a topology description alone (``jax.experimental.topologies``; nothing runs)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: its one-chip topology, a small slice's ``TPU_ACCELERATOR_TYPE`` (to
    quiet libtpu) and its HBM per chip as its Google Cloud page (``source``) writes it."""

    topology: str
    accelerator_type: str
    hbm: str
    source: str

    @property
    def hbm_bytes(self) -> float:
        value, unit = self.hbm.split()
        return float(value) * {"GiB": 2**30, "GB": 1e9}[unit]


_DOCS = "https://cloud.google.com/tpu/docs/"
CHIPS: dict[str, Chip] = {
    "v3": Chip("v3:1x1", "v3-8", "32 GiB", _DOCS + "v3"),
    "v4": Chip("v4:1x1x1", "v4-8", "32 GiB", _DOCS + "v4"),
    "v5e": Chip("v5e:1x1", "v5litepod-1", "16 GB", _DOCS + "v5e"),
    "v5p": Chip("v5p:1x1x1", "v5p-8", "95 GB", _DOCS + "v5p"),
    "v6e": Chip("v6e:1x1", "v6e-1", "32 GB", _DOCS + "v6e"),
}


def versions(libtpu: str | None = None) -> dict[str, str]:
    """jax's and libtpu's versions (``libtpu``: read another's cache), part of every cache key."""
    if not libtpu:
        try:
            libtpu = importlib.metadata.version("libtpu")
        except importlib.metadata.PackageNotFoundError:
            libtpu = "none"
    return {"jax": importlib.metadata.version("jax"), "libtpu": libtpu}


def chip_devices(generation: str) -> list[Any]:
    """The devices of one chip of ``generation`` (two TensorCores on v3 and v4, else one)."""
    # No TPU VM's metadata to look for; compiling needs no chip, so processes may share libtpu.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", CHIPS[generation].accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=CHIPS[generation].topology, chips_per_host_bounds=(1, 1, 1)
    )
    return list(topology.devices)
