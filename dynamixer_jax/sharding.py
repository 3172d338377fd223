"""DynaMixer's weights sharded over a device-mesh axis (FSDP / ZeRO style), for models or
optimiser states too large to copy onto every device.

    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    variables = shard_params(variables, mesh, axis="model")      # each leaf split 4 ways
    logits = jax.jit(model.apply)(variables, images)             # XLA gathers what it needs

:func:`partition_specs` says how each leaf is split: the rules given (``(regex, PartitionSpec)``
pairs matched against the 'a/b/c' parameter path, first match wins), else the default rule:
a leaf of at least ``min_size`` elements is split along its largest dimension that the axis
size divides, and anything smaller (biases, LayerNorm scales, scalars) is replicated.
:func:`param_shardings` gives the ``NamedSharding`` tree (``init_variables(...,
out_sharding=...)`` takes it), :func:`shard_params` places arrays with it.

The mesh's axes must be automatic (``jax.sharding.Mesh(devices, names)``, or ``jax.make_mesh``
with ``axis_types=(jax.sharding.AxisType.Auto,) * n``): XLA then places each intermediate. With
explicit axes (``jax.make_mesh``'s default in recent JAX) every reshape of a sharded activation
must name its output sharding, which the model's code does not do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dynamixer_jax import trees

# Leaves smaller than this stay replicated: splitting them saves little and costs a collective.
MIN_SHARDED_SIZE = 2**12

Rules = Sequence[tuple[str, PartitionSpec]]


def split_largest(
    shape: tuple[int, ...], axis: str, axis_size: int, min_size: int
) -> PartitionSpec:
    """The default rule: ``shape`` split over ``axis`` along its largest dimension that
    ``axis_size`` divides, or replicated (``PartitionSpec()``) if it is small or none does."""
    if int(np.prod(shape, dtype=np.int64)) < min_size or axis_size == 1:
        return PartitionSpec()
    candidates = [d for d in range(len(shape)) if shape[d] % axis_size == 0]
    if not candidates:
        return PartitionSpec()
    chosen = max(candidates, key=lambda d: (shape[d], -d))
    return PartitionSpec(*(axis if d == chosen else None for d in range(len(shape))))


def _check_automatic(mesh: Mesh) -> None:
    """ValueError (one line) for a mesh with explicit axes (see the module docstring)."""
    explicit = [
        name
        for name, kind in zip(mesh.axis_names, getattr(mesh, "axis_types", ()) or ())
        if "explicit" in str(kind).lower()
    ]
    if explicit:
        raise ValueError(
            f"mesh axes {explicit} are explicit; DynaMixer's sharded weights need automatic axes: "
            "build the mesh with jax.sharding.Mesh(devices, names)."
        )


def partition_specs(
    params: Any,
    mesh: Mesh,
    axis: str = "model",
    *,
    rules: Rules = (),
    min_size: int = MIN_SHARDED_SIZE,
) -> Any:
    """A ``PartitionSpec`` for every leaf of ``params`` (arrays or ``ShapeDtypeStruct``s): the
    first of ``rules`` whose regex matches the leaf's 'a/b/c' path as a whole, else
    :func:`split_largest` over ``axis``."""
    if axis not in mesh.shape:
        raise ValueError(
            f"the mesh has no axis {axis!r} (its axes: {', '.join(mesh.axis_names)}); "
            "name one of them as axis."
        )
    size = mesh.shape[axis]

    def spec(path: tuple, leaf: Any) -> PartitionSpec:
        name = trees.path_name(path)
        for pattern, rule in rules:
            if trees.matches(name, (pattern,)):
                return rule
        return split_largest(trees.shape_of(leaf), axis, size, min_size)

    return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(
    params: Any,
    mesh: Mesh,
    axis: str = "model",
    *,
    rules: Rules = (),
    min_size: int = MIN_SHARDED_SIZE,
) -> Any:
    """The ``NamedSharding`` of every leaf of ``params`` (see :func:`partition_specs`)."""
    _check_automatic(mesh)
    specs = partition_specs(params, mesh, axis, rules=rules, min_size=min_size)
    return jax.tree_util.tree_map(
        lambda spec: NamedSharding(mesh, spec),
        specs,
        is_leaf=lambda node: isinstance(node, PartitionSpec),
    )


def shard_params(
    params: Any,
    mesh: Mesh,
    axis: str = "model",
    *,
    rules: Rules = (),
    min_size: int = MIN_SHARDED_SIZE,
) -> Any:
    """``params`` (e.g. ``{'params': ...}`` from ``load`` or ``init_variables``) placed on
    ``mesh``, each leaf split over ``axis`` as :func:`partition_specs` says."""
    shardings = param_shardings(params, mesh, axis, rules=rules, min_size=min_size)
    return jax.device_put(params, shardings)
