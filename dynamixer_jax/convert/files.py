"""Reading and writing converted weights: Flax checkpoints (Orbax directory or .msgpack) and PyTorch files."""

from __future__ import annotations

import os
from typing import Any, Dict

import flax
import numpy as np

from dynamixer_jax.convert.sources import ConversionError, import_torch

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")


def is_torch_file(path: str) -> bool:
    """True for the suffixes PyTorch checkpoints use (.pth, .pth.tar, .pt, .bin)."""
    return str(path).endswith(TORCH_SUFFIXES)


def save_flax(variables: Dict[str, Any], path: str) -> None:
    """Write ``{'params': ...}`` as a .msgpack file, or else as an Orbax checkpoint directory."""
    variables = jax_free(variables)
    if str(path).endswith(".msgpack"):
        with open(path, "wb") as f:
            f.write(flax.serialization.msgpack_serialize(variables))
        return
    import orbax.checkpoint as ocp  # noqa: PLC0415 (only the command line needs it)

    if os.path.exists(path):
        raise ConversionError(f"{path} already exists; choose a new output path")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), variables)
    checkpointer.wait_until_finished()


def load_flax(path: str) -> Dict[str, Any]:
    """``{'params': ...}`` (numpy leaves) from a .msgpack file or an Orbax checkpoint directory."""
    if str(path).endswith(".msgpack"):
        with open(path, "rb") as f:
            return flax.serialization.msgpack_restore(f.read())
    if not os.path.isdir(path):
        raise ConversionError(f"no Flax checkpoint at {path} (expected an Orbax directory or a .msgpack file)")
    import orbax.checkpoint as ocp  # noqa: PLC0415

    try:
        restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    except Exception as error:  # noqa: BLE001 - any Orbax failure means an unreadable checkpoint
        raise ConversionError(f"{path} is not a readable Orbax checkpoint ({type(error).__name__}: {error})") from error
    return restored if "params" in restored else {"params": restored}


def save_torch(state_dict: Dict[str, np.ndarray], path: str) -> None:
    """torch.save a bare state_dict (loads with the authors' ``model.load_state_dict``)."""
    torch = import_torch()
    torch.save({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state_dict.items()}, path)


def jax_free(tree: Any) -> Any:
    """The same tree with numpy leaves (device arrays fetched)."""
    import jax  # noqa: PLC0415

    return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(tree))
