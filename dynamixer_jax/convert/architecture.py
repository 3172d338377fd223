"""Reading a DynaMixer's architecture off the shapes of an authors' state_dict.

Lets ``torch_to_flax`` and the command line convert a checkpoint without being
told which variant (or which image size, class count ...) it was trained as, and
``dynamixer_jax.load`` build the model for Flax weights alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax
import numpy as np

from dynamixer_jax import trees
from dynamixer_jax.convert.mapping import (
    flax_paths_to_torch_keys,
    flax_to_torch_shape,
    network_entries,
)
from dynamixer_jax.errors import ConversionError
from dynamixer_jax.model.network import DynaMixer


def architecture_from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """DynaMixer constructor arguments that produce exactly these parameter shapes.

    Uses only anchor keys (the patch embedding, each stage's first layer, the
    downsamples and the head); ``torch_to_flax`` then checks every key.
    """
    entries = network_entries(state_dict)
    stages = [(k, count) for k, (kind, _, count) in sorted(entries.items()) if kind == "stage"]
    anchors = ["patch_embed.proj.weight"] + [
        f"network.{k}.0.{name}"
        for k, _ in stages
        for name in (
            "norm1.weight",
            "attn.mix_h.compress.weight",
            "attn.mix_h.generate.weight",
            "attn.mix_w.generate.weight",
            "mlp.fc1.weight",
        )
    ]
    missing = [key for key in anchors if key not in state_dict]
    if not stages or missing:
        raise ConversionError(
            "cannot read a DynaMixer architecture off this checkpoint: "
            + (f"missing keys: {', '.join(missing)}" if missing else "no network.* layers found")
        )

    def shape(key):
        return state_dict[key].shape

    arch: dict[str, Any] = dict(
        layers=[], embed_dims=[], transitions=[], num_segments=[], reduced_dims=[], mlp_ratios=[]
    )
    grid = None
    for k, count in stages:
        prefix = f"network.{k}.0."
        dim = shape(prefix + "norm1.weight")[0]
        side_h = math.isqrt(shape(prefix + "attn.mix_h.generate.weight")[0])
        side_w = math.isqrt(shape(prefix + "attn.mix_w.generate.weight")[0])
        reduced = shape(prefix + "attn.mix_h.generate.weight")[1] // max(side_h, 1)
        arch["layers"].append(count)
        arch["embed_dims"].append(dim)
        arch["reduced_dims"].append(reduced)
        arch["num_segments"].append(
            shape(prefix + "attn.mix_h.compress.weight")[0] // max(reduced, 1)
        )
        arch["mlp_ratios"].append(shape(prefix + "mlp.fc1.weight")[0] / dim)
        downsample = f"network.{k + 1}.proj.weight"
        arch["transitions"].append(downsample in state_dict and shape(downsample)[-1] == 2)
        grid = grid or (side_h, side_w)
    patch_shape = shape("patch_embed.proj.weight")
    arch["patch_size"] = patch_shape[-1]
    arch["in_chans"] = patch_shape[1]
    arch["image_size"] = (grid[0] * patch_shape[-1], grid[1] * patch_shape[-1])
    if arch["image_size"][0] == arch["image_size"][1]:
        arch["image_size"] = arch["image_size"][0]
    arch["num_classes"] = shape("head.weight")[0] if "head.weight" in state_dict else 0
    return {key: tuple(value) if isinstance(value, list) else value for key, value in arch.items()}


def architecture_from_params(params: Any) -> dict[str, Any]:
    """DynaMixer constructor arguments that produce exactly the shapes of Flax ``params`` (the
    ``{'params': ...}`` variables or the bare tree); reads shapes only, copies no array."""
    params = params.get("params", params) if hasattr(params, "get") else params
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    try:
        keys = flax_paths_to_torch_keys(list(flat))
    except (IndexError, ValueError) as error:
        raise ConversionError(
            f"these weights are not a DynaMixer's parameter tree ({type(error).__name__}: {error})"
        ) from None
    empty = np.empty((), np.bool_)
    shapes = {
        keys[path]: np.broadcast_to(empty, flax_to_torch_shape(trees.shape_of(leaf)))
        for path, leaf in flat.items()
    }
    return architecture_from_state_dict(shapes)


def model_from_state_dict(state_dict: Mapping[str, np.ndarray], **kwargs: Any) -> DynaMixer:
    """A DynaMixer whose parameters have the shapes of ``state_dict``; kwargs (dtype, drop_path_rate...) pass on."""
    arch = architecture_from_state_dict(state_dict)
    arch.update(kwargs)
    try:
        return DynaMixer(**arch)
    except ValueError as error:
        raise ConversionError(
            f"the checkpoint's shapes describe no valid DynaMixer: {error}"
        ) from error
