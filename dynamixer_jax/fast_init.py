"""Fast parameter initialisation, distributed exactly as the modules' own initialisers.

Why this exists: ``jax.jit(model.init)`` draws every parameter with its own
random-number call, and XLA compiles each of those ~300 calls separately; on a
2-core CPU that is ~30 s for DynaMixer-S. Here the parameters are drawn in two
calls (one truncated normal for all Linear weights, one uniform for all
convolutions), cut into leaves and scaled, so compiling takes about a second.

The rule per leaf (``initializer_kind``) mirrors the modules in ``layers.py``
and ``model.py``; ``tests/test_fast_init.py`` checks that both agree.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dynamixer_jax.initializers import LINEAR_STD
from dynamixer_jax.model import DynaMixer, as_hw

# timm's absolute truncation bounds, in units of the standard deviation.
_TRUNC_BOUND = 2.0 / LINEAR_STD


def abstract_variables(model: DynaMixer, batch_size: int = 1) -> Dict[str, Any]:
    """Shapes and dtypes of ``model.init``'s output, without computing anything."""
    height, width = as_hw(model.image_size)
    images = jax.ShapeDtypeStruct((batch_size, height, width, model.in_chans), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


def initializer_kind(path: Tuple[str, ...], shape: Tuple[int, ...], siblings: Dict[str, Any]) -> Tuple[str, float]:
    """(kind, scale) for one parameter: ('normal', std), ('uniform', bound), ('ones', 1) or ('zeros', 0)."""
    name = path[-1]
    kernel = siblings.get("kernel")
    if name == "scale":
        return ("ones", 1.0)
    if name == "bias" and "scale" in siblings:
        return ("zeros", 0.0)
    if name == "kernel" and len(shape) == 2:
        return ("normal", LINEAR_STD)
    if name == "bias" and kernel is not None and len(kernel.shape) == 2:
        return ("zeros", 0.0)
    conv_kernel_shape = shape if name == "kernel" else (kernel.shape if kernel is not None else None)
    if name in ("kernel", "bias") and conv_kernel_shape is not None and len(conv_kernel_shape) == 4:
        kh, kw, fan_in_channels, _ = conv_kernel_shape
        return ("uniform", 1.0 / math.sqrt(kh * kw * fan_in_channels))
    raise ValueError(f"no initialisation rule for parameter {'/'.join(path)} of shape {shape}")


def _plan(params) -> Tuple[list, int, int]:
    """Per-leaf (path, shape, dtype, kind, scale, offset) and the number of normal and uniform draws."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    plan, counts = [], {"normal": 0, "uniform": 0}
    for path, leaf in flat.items():
        siblings = {k[-1]: v for k, v in flat.items() if k[:-1] == path[:-1]}
        kind, scale = initializer_kind(path, leaf.shape, siblings)
        offset = counts.get(kind, 0)
        if kind in counts:
            counts[kind] += int(np.prod(leaf.shape))
        plan.append((path, tuple(leaf.shape), leaf.dtype, kind, scale, offset))
    return plan, counts["normal"], counts["uniform"]


def init_variables(model: DynaMixer, rng: Any, out_sharding: Optional[Any] = None) -> Dict[str, Any]:
    """Freshly initialised ``{'params': ...}`` for ``model``, as the authors initialise, in about a second.

    ``rng`` is a JAX PRNG key (or an int seed). ``out_sharding`` (e.g. a
    replicated ``NamedSharding``) says where the parameters are placed; by
    default the default device. The random numbers are drawn on the default
    device by one compiled call and cut into leaves on the host, where slicing
    costs nothing to compile.
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    abstract = abstract_variables(model)
    plan, n_normal, n_uniform = _plan(abstract["params"])

    @jax.jit
    def draw(key):
        normal_key, uniform_key = jax.random.split(key)
        normals = jax.random.truncated_normal(normal_key, -_TRUNC_BOUND, _TRUNC_BOUND, (n_normal,), jnp.float32)
        uniforms = jax.random.uniform(uniform_key, (n_uniform,), jnp.float32, -1.0, 1.0)
        return normals, uniforms

    pools = dict(zip(("normal", "uniform"), map(np.asarray, draw(rng))))
    leaves = {}
    for path, shape, dtype, kind, scale, offset in plan:
        if kind in pools:
            size = int(np.prod(shape))
            value = pools[kind][offset:offset + size].reshape(shape) * np.float32(scale)
        else:
            value = np.full(shape, scale, np.float32)
        leaves[path] = value.astype(dtype)
    params = flax.traverse_util.unflatten_dict(leaves)
    return {"params": jax.device_put(params, out_sharding)}
