"""Devices and processes: one data-parallel ``Mesh`` over every device of every process.

Parameters, optimiser state and EMA are replicated (``PartitionSpec()``) by default, or split
over the ``data`` axis (:func:`state_shardings`: ZeRO-1 shards the optimiser state and the EMA,
FSDP the parameters too; XLA gathers them where the step needs them, and the losses are those
of the replicated run); batches are split along their first axis over the ``data`` axis. Each process holds the part of a global batch
that its own input pipeline produced and :func:`global_batch` assembles the global array without
copying between hosts. Nothing here uses ``pmap``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dynamixer_jax.sharding import MIN_SHARDED_SIZE, param_shardings

log = logging.getLogger(__name__)

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several" to jax.distributed's cluster
# auto-detection (Cloud TPU pods, SLURM, Open MPI, JAX's own coordinator variables).
_CLUSTER_HINTS = (
    "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _several_hosts_hinted() -> bool:
    for name in _CLUSTER_HINTS:
        value = os.environ.get(name, "")
        if name == "TPU_WORKER_HOSTNAMES":
            if len([host for host in value.split(",") if host]) > 1:
                return True
        elif name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            if value.isdigit() and int(value) > 1:
                return True
        elif value:
            return True
    return False


# How long (seconds) a process waits for all the others to join by default: JAX's own default
# is 300 s, spent in silence before the process aborts with a C++ stack trace.
JOIN_TIMEOUT = 120
_STATUS = "dynamixer_jax/start/"  # key-value prefix of each process's start status
_OK = "ok"


def several_processes(coordinator_address: str | None = None) -> bool:
    """Whether this process is one of several: a coordinator was given, or the environment says
    so (a Cloud TPU pod slice, a SLURM or MPI job, ``JAX_COORDINATOR_ADDRESS``)."""
    return coordinator_address is not None or _several_hosts_hinted()


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout: int = JOIN_TIMEOUT,
    announce: bool = True,
) -> None:
    """Call ``jax.distributed.initialize`` when this is one of several processes.

    With explicit arguments (e.g. from ``main.py --coordinator_address=...``) they are used; else
    initialisation happens only where the environment says there are several hosts (a Cloud TPU
    pod slice, a SLURM or MPI job, ``JAX_COORDINATOR_ADDRESS``) and JAX detects the rest. A single
    machine, whatever its number of devices, needs nothing. Must run before any other JAX call;
    a second call does nothing. ``timeout`` bounds JAX's wait for the other processes (past it,
    JAX aborts the process: ``process.start_together`` ends it with one line first). ``announce``
    logs this process's place (:func:`log_place`).
    """
    if not several_processes(coordinator_address) or jax.distributed.is_initialized():
        return
    explicit = coordinator_address is not None
    if explicit:
        # CPU collectives between processes (tests, CPU clusters) go through gloo; the setting
        # does not touch accelerators.
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception:
            pass
    kwargs = {"initialization_timeout": int(timeout)}
    if explicit:
        kwargs.update(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    jax.distributed.initialize(**kwargs)
    if announce:
        log_place()


def log_place() -> None:
    """Log this process's place among the processes and devices."""
    log.info(
        "process %d of %d, %d local devices of %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _coordination_client():
    """The coordination service's client of ``jax.distributed`` (JAX has no public name for it;
    ``jax._src.distributed.global_state.client`` from 0.4 to 0.12 at least), or None."""
    try:
        from jax._src import distributed  # noqa: PLC0415

        return distributed.global_state.client
    except (ImportError, AttributeError):  # pragma: no cover (a JAX that moved it)
        return None


def agree_to_start(problem: str | None, timeout: int = JOIN_TIMEOUT) -> str | None:
    """Every process's start status, exchanged once all have joined: None when all can start,
    else ``process K: <line>`` for the lowest K that cannot (the same text in every process).

    ``problem`` is this process's own one-line error (None: it can start). Each process
    publishes its status in the coordination service's key-value store and then reads every
    other's (waiting up to ``timeout`` seconds for each), so a process that failed on its flags
    stops the others within seconds instead of leaving them waiting in their first collective.
    """
    client = _coordination_client()
    me, count = jax.process_index(), jax.process_count()
    if not hasattr(client, "blocking_key_value_get"):  # pragma: no cover (a JAX without it)
        return None if problem is None else f"process {me}: {problem}"
    client.key_value_set(f"{_STATUS}{me}", _OK if problem is None else problem)
    failures = []
    for index in range(count):
        status = client.blocking_key_value_get(f"{_STATUS}{index}", int(timeout * 1000))
        if status != _OK:
            failures.append((index, status))
    if not failures:
        return None
    index, line = failures[0]
    others = [str(other) for other, _ in failures[1:]]
    also = f" (processes {', '.join(others)} failed too)" if others else ""
    return f"process {index}: {line}{also}"


def leave_together() -> None:
    """After a failed start, leave ``jax.distributed`` with the others (its shutdown waits until
    every process has come to it), so that none ends while another still reads its statuses
    from the coordinator (process 0) and none reports the others' going as a fatal error."""
    try:
        jax.distributed.shutdown()
    except Exception:  # the error line is printed already; the process ends anyway
        pass


def make_mesh() -> Mesh:
    """A one-axis (``data``) mesh over all devices of all processes, in process order."""
    devices = np.array(jax.devices())
    return Mesh(devices, (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters, optimiser state and scalars: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


# How the training state is laid out over the mesh (config.state_sharding).
STATE_SHARDINGS = ("replicated", "zero1", "fsdp")


def state_shardings(
    abstract_state: Any, mesh: Mesh, mode: str = "replicated", *, min_size: int = MIN_SHARDED_SIZE
) -> Any:
    """The sharding of every leaf of a ``TrainState`` (arrays or ``ShapeDtypeStruct``s):
    everything replicated; ``zero1``: the optimiser state and the EMA split over ``data``
    (``dynamixer_jax.sharding``'s rule: each large leaf along its largest dimension the device
    count divides; leaves under ``min_size`` elements replicated); ``fsdp``: the parameters too.
    Step and key stay replicated."""
    if mode not in STATE_SHARDINGS:
        raise ValueError(
            f"state sharding must be one of {', '.join(STATE_SHARDINGS)}, not {mode!r}"
        )
    if mode == "replicated":
        return jax.tree_util.tree_map(lambda _: replicated(mesh), abstract_state)

    def split(tree: Any) -> Any:
        return param_shardings(tree, mesh, DATA_AXIS, min_size=min_size)

    return abstract_state.replace(
        step=replicated(mesh),
        rng=replicated(mesh),
        params=split(abstract_state.params)
        if mode == "fsdp"
        else jax.tree_util.tree_map(lambda _: replicated(mesh), abstract_state.params),
        opt_state=split(abstract_state.opt_state),
        ema_params=split(abstract_state.ema_params),
    )


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of batches: split along the first axis over all devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's share of a batch (numpy) as global arrays split over the whole mesh.

    Only the numeric fields travel (``id`` strings stay on the host). The global batch is the
    processes' shares in process order, which is the order the input pipeline assigns them.
    """
    sharding = batch_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in local.items()
        if key != "id"
    }


def describe(mesh: Mesh) -> str:
    """A short line about the devices, for the log."""
    device, count, processes = mesh.devices.flat[0], mesh.devices.size, jax.process_count()
    kind = getattr(device, "device_kind", "") or device.platform
    return (
        f"{count} {device.platform} device{'s' if count > 1 else ''} ({kind}) in "
        f"{processes} process{'es' if processes > 1 else ''}"
    )
