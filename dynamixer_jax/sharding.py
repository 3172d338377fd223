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

The mesh's axes may be automatic (``jax.sharding.Mesh(devices, names)``) or explicit
(``jax.make_mesh``'s default in recent JAX). With explicit axes every array's sharding is part of
its type and each reshape or convolution of a sharded activation would have to name its output
sharding; the model instead runs under :func:`automatic_axes` (``DynaMixer.apply`` does this
itself), which makes the axes automatic for the network's body, so that XLA places its
intermediates as on an automatic mesh, and gives the outputs an explicit sharding again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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


# What explicit_mesh and automatic_axes need, in jax.sharding, jax.sharding and jax.
_EXPLICIT_APIS = ("auto_axes", "get_abstract_mesh", "typeof")


def explicit_mesh(tree: Any = ()) -> Any:
    """The (abstract) mesh with explicit axes that the arrays of ``tree`` are typed on, or the
    context mesh (``jax.set_mesh``) where that has explicit axes; None where there is none, as
    under a JAX without ``jax.sharding.auto_axes`` (0.7 moved it there from
    ``jax.experimental.shard``; pyproject allows 0.4.35), where nothing is changed."""
    if not all(map(hasattr, (jax.sharding, jax.sharding, jax), _EXPLICIT_APIS)):
        return None
    context = jax.sharding.get_abstract_mesh()
    if getattr(context, "explicit_axes", ()):
        return context
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array):
            mesh = getattr(getattr(jax.typeof(leaf), "sharding", None), "mesh", None)
            if getattr(mesh, "explicit_axes", ()):
                return mesh
    return None


def batch_spec(x: Any) -> PartitionSpec:
    """``PartitionSpec(axes)``: ``x`` split along its first dimension over ``axes`` as its type
    says (``PartitionSpec()`` if it is not split, or not an array)."""
    if not isinstance(x, jax.Array) or not x.ndim:
        return PartitionSpec()
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    return PartitionSpec(spec[0]) if spec else PartitionSpec()


def automatic_axes(fn: Callable, out_sharding: Any) -> Callable:
    """``fn`` that runs on a mesh with explicit axes as on automatic ones (same name).

    Where an argument of the call (or the context mesh) has explicit mesh axes, ``fn`` runs
    under ``jax.sharding.auto_axes``: its array arguments (keyword ones too) are retyped to
    automatic axes, XLA places every intermediate, and the outputs are resharded to
    ``out_sharding``: a ``PartitionSpec`` on that mesh, or a pytree (prefix) of
    ``NamedSharding`` objects. Elsewhere ``fn`` is called as it is. ``DynaMixer.apply`` and
    the train and eval steps use it; use it for a function of your own that holds a DynaMixer
    as a submodule, or that calls layers which need automatic axes.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        mesh = explicit_mesh((args, kwargs))
        if mesh is None:
            return fn(*args, **kwargs)
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]

        def body(arrays: list) -> Any:
            full = list(leaves)
            for i, array in zip(dynamic, arrays):
                full[i] = array
            call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
            return fn(*call_args, **call_kwargs)

        out = out_sharding
        if isinstance(out, PartitionSpec):
            out = NamedSharding(mesh, out)
        return jax.sharding.auto_axes(body, out_sharding=out)([leaves[i] for i in dynamic])

    return run
