"""The published DynaMixer variants and ``create_model``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

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
