"""The published DynaMixer variants and ``create_model``."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dynamixer_jax.model.initializers import LINEAR_STD, initializer_kind
from dynamixer_jax.model.network import PER_STAGE_FIELDS, DynaMixer, ImageSize

# Every field that shapes the network (what ``model_overrides`` may set).
ARCHITECTURE_FIELDS = (*PER_STAGE_FIELDS, "patch_size")

# Architecture of each published variant; everything else is a create_model argument.
VARIANTS: dict[str, dict[str, Any]] = {
    "dynamixer_s": dict(
        layers=(4, 3, 8, 3),
        embed_dims=(192, 384, 384, 384),
        transitions=(True, False, False, False),
        num_segments=(8, 16, 16, 16),
        reduced_dims=(2, 2, 2, 2),
        mlp_ratios=(3, 3, 3, 3),
    ),
    "dynamixer_m": dict(
        layers=(4, 3, 14, 3),
        embed_dims=(256, 256, 512, 512),
        transitions=(False, True, False, False),
        num_segments=(8, 8, 16, 16),
        reduced_dims=(2, 2, 2, 2),
        mlp_ratios=(3, 3, 3, 3),
    ),
    "dynamixer_l": dict(
        layers=(8, 8, 16, 4),
        embed_dims=(256, 512, 512, 512),
        transitions=(True, False, False, False),
        num_segments=(8, 16, 16, 16),
        reduced_dims=(8, 8, 8, 8),
        mlp_ratios=(3, 3, 3, 3),
    ),
}

# Facts about the published ImageNet-1K models and their training runs (global batch size,
# eval crop fraction, stochastic depth, top-1 %), read by configs/imagenet.py and the tests.
PUBLISHED = {
    "dynamixer_s": dict(
        num_params=26_265_960, batch_size=2048, crop_fraction=0.9, drop_path_rate=0.1, top1=82.7
    ),
    "dynamixer_m": dict(
        num_params=57_128_264, batch_size=1024, crop_fraction=0.9, drop_path_rate=0.1, top1=83.7
    ),
    "dynamixer_l": dict(
        num_params=97_818_088, batch_size=512, crop_fraction=0.875, drop_path_rate=0.3, top1=84.3
    ),
}


def list_models():
    """Names accepted by create_model."""
    return sorted(VARIANTS)


def create_model(
    model_name: str,
    num_classes: int = 1000,
    image_size: ImageSize = 224,
    *,
    drop_path_rate: float = 0.0,
    drop_rate: float = 0.0,
    remat: str = "minimal",
    scan_layers: bool = False,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    features_only: bool = False,
    out_indices: Any = None,
    **overrides: Any,
) -> Any:
    """Build a DynaMixer variant by name, e.g. ``create_model('dynamixer_s', num_classes=10, image_size=112)``.

    ``overrides`` replace architecture fields (``layers``, ``embed_dims``, ...)
    to make a custom or tiny model. ``dtype`` is the computation dtype (e.g.
    ``jnp.bfloat16``), ``param_dtype`` the storage dtype of the parameters.
    ``remat`` ("none", "minimal", "full") trades memory for recomputation in
    training (see ``dynamixer_jax.model.remat``); results do not depend on it.
    ``scan_layers`` runs each stage's layers as one ``lax.scan`` (the same parameter tree and
    values; faster compilation, less activation memory). ``features_only=True`` gives timm's
    backbone instead: a ``DynaMixerBackbone`` returning the NHWC token grids after the stages
    ``out_indices`` (default: all), with the classifier's parameter tree minus ``head``.
    Called inside a Flax module's ``setup`` or ``nn.compact`` method, the model (or backbone) is
    its submodule like any other Linen module (``name=`` names it).
    """
    if model_name not in VARIANTS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(list_models())}.")
    unknown = set(overrides) - set(DynaMixer.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown DynaMixer argument(s) {sorted(unknown)}.")
    arch = dict(VARIANTS[model_name])
    arch.update(overrides)
    for key in PER_STAGE_FIELDS:
        arch[key] = tuple(arch[key])
    if not isinstance(image_size, int):
        image_size = tuple(int(s) for s in image_size)
    name = overrides.pop("name", None)  # its name as a submodule, where it is one
    model = DynaMixer(
        num_classes=num_classes,
        image_size=image_size,
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
        remat=remat,
        scan_layers=scan_layers,
        dtype=dtype,
        param_dtype=param_dtype,
        **arch,
        # A backbone is built from this model: the backbone, not it, joins the caller's module.
        **({"parent": None} if features_only else {"name": name}),
    )
    return model.backbone(out_indices, name=name) if features_only else model


# timm's absolute truncation bounds, in units of the standard deviation.
_TRUNC_BOUND = 2.0 / LINEAR_STD


def abstract_variables(model: DynaMixer, batch_size: int = 1) -> dict[str, Any]:
    """Shapes and dtypes of ``model.init``'s output, without computing anything.

    A run asks for the same model's tree several times (the state's layout, fresh parameters, a
    restore) and tracing a published variant's ``init`` is slow (docs/studies.md), so the trees
    of recent models are kept; each call returns a tree of its own, free to change.
    """
    try:
        tree = _traced_variables(model, batch_size)
    except TypeError:  # a model with an unhashable field (a list): traced every time
        tree = _traced_variables.__wrapped__(model, batch_size)
    return jax.tree_util.tree_map(lambda leaf: leaf, tree)


@functools.lru_cache(maxsize=8)
def _traced_variables(model: DynaMixer, batch_size: int) -> dict[str, Any]:
    images = jax.ShapeDtypeStruct(model.input_shape(batch_size), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


def _plan(params) -> tuple[list, int, int]:
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


def init_variables(model: DynaMixer, rng: Any, out_sharding: Any | None = None) -> dict[str, Any]:
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
        normals = jax.random.truncated_normal(
            normal_key, -_TRUNC_BOUND, _TRUNC_BOUND, (n_normal,), jnp.float32
        )
        uniforms = jax.random.uniform(uniform_key, (n_uniform,), jnp.float32, -1.0, 1.0)
        return normals, uniforms

    pools = dict(zip(("normal", "uniform"), map(np.asarray, draw(rng))))
    leaves = {}
    for path, shape, dtype, kind, scale, offset in plan:
        if kind in pools:
            size = int(np.prod(shape))
            value = pools[kind][offset : offset + size].reshape(shape) * np.float32(scale)
        else:
            value = np.full(shape, scale, np.float32)
        leaves[path] = value.astype(dtype)
    params = flax.traverse_util.unflatten_dict(leaves)
    return {"params": jax.device_put(params, out_sharding)}
