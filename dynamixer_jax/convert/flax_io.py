"""Reading and writing Flax weights: an Orbax checkpoint directory or a .msgpack file."""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import numpy as np

from dynamixer_jax.errors import ConversionError


def save_flax(variables: dict[str, Any], path: str) -> None:
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


def load_flax(path: str) -> dict[str, Any]:
    """``{'params': ...}`` (numpy leaves) from a .msgpack file or an Orbax checkpoint directory."""
    if str(path).endswith(".msgpack"):
        if not os.path.isfile(path):
            raise ConversionError(f"no Flax checkpoint at {path}")
        with open(path, "rb") as f:
            data = f.read()
        try:
            restored = flax.serialization.msgpack_restore(data)
        except Exception as error:
            raise ConversionError(
                f"{path} is not a readable .msgpack checkpoint ({_first_line(error)})"
            ) from None
        if not isinstance(restored, dict):
            raise ConversionError(f"{path} holds no parameter tree")
        return restored if "params" in restored else {"params": restored}
    if not os.path.isdir(path):
        raise ConversionError(
            f"no Flax checkpoint at {path} (expected an Orbax directory or a .msgpack file)"
        )
    import orbax.checkpoint as ocp  # noqa: PLC0415 (optional; needed for directories only)

    try:
        restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    except Exception as error:
        raise ConversionError(
            f"{path} is not a readable Orbax checkpoint ({_first_line(error)})"
        ) from None
    return restored if "params" in restored else {"params": restored}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def jax_free(tree: Any) -> Any:
    """The same tree with numpy leaves (device arrays fetched)."""
    return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(tree))
