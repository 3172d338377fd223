"""Weights from elsewhere: for fine-tuning (``config.init_from``) and for ``evaluate``.

:func:`load_params` reads parameters from any of

* a workdir of ours, its ``checkpoints/`` directory or one step in it (raw or EMA parameters);
* a Flax checkpoint written by ``python -m dynamixer_jax.convert`` (Orbax directory or .msgpack);
* an authors' PyTorch checkpoint (.pth, .pth.tar, ...; converted on the fly, needs torch).

:func:`merge_params` fits such parameters into a freshly initialised model for fine-tuning: every
leaf whose path and shape match is taken; the classifier head (with ``reset_head``) and any leaf
the new model shapes differently stay freshly initialised, and the log names them. DynaMixer's
``generate`` layers depend on the token grid, so a new image size re-initialises them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax
import jax
import numpy as np

from dynamixer_jax.errors import CheckpointError, ConversionError
from dynamixer_jax.convert.flax_io import load_flax
from dynamixer_jax.convert.torch_io import is_torch_file

from dynamixer_jax.train.checkpoints import find_checkpoint

log = logging.getLogger(__name__)

HEAD = "head"


def _looks_like_our_checkpoint(path: str) -> bool:
    for candidate in (os.path.join(path, "checkpoints"), path, os.path.dirname(path.rstrip("/"))):
        if os.path.isdir(candidate) and any(name.isdigit() for name in os.listdir(candidate)):
            return True
    return False


def load_params(path: str, mesh, *, ema: bool = False) -> Any:
    """Parameters (numpy leaves) from ``path``; ``ema`` picks the EMA copy where there is one."""
    path = os.path.expanduser(str(path))
    if is_torch_file(path):
        from dynamixer_jax.convert import torch_to_flax  # noqa: PLC0415 (torch only here)
        return torch_to_flax(path, ema=ema)["params"]
    if not os.path.exists(path):
        raise CheckpointError(f"no weights at {path}: give a workdir, a checkpoint directory, a "
                              ".msgpack file or an authors' .pth file")
    if os.path.isdir(path) and _looks_like_our_checkpoint(path):
        return _params_from_our_checkpoint(path, mesh, ema=ema)
    if ema:
        raise CheckpointError(f"{path} holds one set of weights, no EMA copy; drop the EMA option")
    return load_flax(path)["params"]


def _params_from_our_checkpoint(path: str, mesh, *, ema: bool) -> Any:
    from dynamixer_jax.train.parallel import replicated  # noqa: PLC0415

    checkpoints, step = find_checkpoint(path)
    saved = checkpoints.saved_state_metadata(step)
    sharding = replicated(mesh)
    abstract = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding), saved)
    state, _ = checkpoints.restore(step, abstract)
    key = "ema_params" if ema else "params"
    params = state[key] if isinstance(state, dict) else getattr(state, key)
    if ema and not jax.tree_util.tree_leaves(params):
        raise CheckpointError(f"checkpoint {checkpoints.directory}/{step} was trained without "
                              "EMA; use its raw parameters")
    log.info("loaded %s of checkpoint %s/%d", key, checkpoints.directory, step)
    return jax.device_get(params)


def merge_params(fresh: Any, loaded: Any, *, reset_head: bool = True) -> tuple[Any, dict]:
    """``fresh`` with every leaf of ``loaded`` that fits (same path, same shape).

    Returns ``(params, report)``: ``report`` lists ``taken``, ``reinitialised`` (kept fresh:
    the head if ``reset_head``, a missing path or a different shape) and ``unused`` loaded paths.
    """
    fresh_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(fresh), sep="/")
    loaded_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded), sep="/")
    merged, report = {}, {"taken": [], "reinitialised": [], "unused": []}
    for path, leaf in fresh_flat.items():
        source = loaded_flat.get(path)
        is_head = path.split("/")[0] == HEAD
        if source is not None and np.shape(source) == np.shape(leaf) and not (is_head and reset_head):
            merged[path] = np.asarray(source, dtype=np.asarray(leaf).dtype)
            report["taken"].append(path)
        else:
            merged[path] = leaf
            report["reinitialised"].append(path)
    report["unused"] = sorted(set(loaded_flat) - set(fresh_flat))
    if not report["taken"]:
        raise ConversionError("none of the loaded weights fit this model (no parameter path and "
                              "shape in common); check the model name and its overrides")
    return flax.traverse_util.unflatten_dict(merged, sep="/"), report
