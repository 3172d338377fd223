"""Weight conversion between the authors' PyTorch checkpoints and our Flax variables.

    variables = torch_to_flax(state_dict)    # or a checkpoint dict, or a path to a .pth/.pth.tar
    state_dict = flax_to_torch(variables)    # {authors' key: numpy array}

Command line: ``python -m dynamixer_jax.convert IN OUT`` (see ``__main__``).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np

from dynamixer_jax import trees
from dynamixer_jax.convert.architecture import (
    architecture_from_params,
    architecture_from_state_dict,
    model_from_state_dict,
)
from dynamixer_jax.convert.mapping import (
    flax_paths_to_torch_keys,
    flax_to_torch_layout,
    flax_to_torch_shape,
    torch_sort_key,
    torch_to_flax_layout,
)
from dynamixer_jax.convert.torch_io import to_numpy, unwrap_state_dict
from dynamixer_jax.errors import ConversionError
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import abstract_variables

__all__ = [
    "ConversionError",
    "architecture_from_params",
    "architecture_from_state_dict",
    "flax_to_torch",
    "model_from_state_dict",
    "params_from_torch",
    "torch_to_flax",
]


def params_from_torch(state_dict: dict[str, np.ndarray], abstract_params: Any) -> dict[str, Any]:
    """Flax params shaped like ``abstract_params`` (e.g. from ``jax.eval_shape(module.init, ...)``).

    Works for the whole network and for any of its modules (an operation, a
    block, a layer) alike. Every key is checked first; a mismatch raises one
    ConversionError naming the first five missing, unexpected and mis-shaped keys of each kind
    and how many more there are.
    Leaves take the dtypes of ``abstract_params``.
    """
    abstract = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_params))
    keys = flax_paths_to_torch_keys(list(abstract))
    expected = {
        keys[path]: jax.ShapeDtypeStruct(flax_to_torch_shape(leaf.shape), leaf.dtype)
        for path, leaf in abstract.items()
    }
    diff = trees.compare(expected, dict(state_dict), order=torch_sort_key)
    if diff:
        report = diff.summary(5, noun="keys", given="checkpoint", expected="model")
        raise ConversionError(f"checkpoint does not fit this DynaMixer: {report}")
    params = {
        path: torch_to_flax_layout(to_numpy(state_dict[keys[path]])).astype(leaf.dtype)
        for path, leaf in abstract.items()
    }
    return flax.traverse_util.unflatten_dict(params)


def torch_to_flax(
    source: Any, model: DynaMixer | None = None, *, ema: bool = False
) -> dict[str, Any]:
    """Flax ``{'params': ...}`` (numpy leaves) from an authors' checkpoint.

    ``source``: a state_dict (name -> numpy array or torch tensor), a timm-style
    checkpoint dict, or the path of a .pth/.pth.tar file. ``ema=True`` takes the
    ``state_dict_ema`` copy. ``model``: the DynaMixer the weights are for; by
    default it is read off the checkpoint's shapes. Every key is checked; a
    mismatch raises one ConversionError (see ``params_from_torch``). Leaves take the model's
    ``param_dtype``.
    """
    state_dict = unwrap_state_dict(source, ema=ema)
    if model is None:
        model = model_from_state_dict(state_dict)
    return {"params": params_from_torch(state_dict, abstract_variables(model)["params"])}


def flax_to_torch(variables: Any) -> dict[str, np.ndarray]:
    """The authors' state_dict ({key: numpy array}, in their order) from ``{'params': ...}`` or
    bare params."""
    params = variables.get("params", variables) if hasattr(variables, "get") else variables
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    keys = flax_paths_to_torch_keys(list(flat))
    converted = {
        keys[path]: np.array(flax_to_torch_layout(np.asarray(value)), order="C", copy=True)
        for path, value in flat.items()
    }
    return {key: converted[key] for key in sorted(converted, key=torch_sort_key)}
