"""Reading and writing the authors' state_dict as a ``.safetensors`` file, without torch.

The file holds exactly the keys and tensor layouts of the authors' PyTorch state_dict (what
``flax_to_torch`` gives and our ``.pth`` writer saves), so a PyTorch or timm user loads it with
``model.load_state_dict(safetensors.torch.load_file(path))``. Written and read with
``safetensors.numpy`` (the ``safetensors`` package, an optional dependency); bfloat16 tensors
stay bfloat16.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dynamixer_jax.errors import ConversionError

SAFETENSORS_SUFFIX = ".safetensors"

# Header metadata: the tensors follow PyTorch's names and layouts (Hugging Face tools read "pt").
METADATA = {"format": "pt"}


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """True for a path ending in .safetensors."""
    return str(path).endswith(SAFETENSORS_SUFFIX)


def _safetensors_numpy():
    try:
        import safetensors.numpy  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ConversionError(
            "reading or writing .safetensors files needs the safetensors package: "
            "pip install safetensors"
        ) from None
    return safetensors.numpy


def save_safetensors(state_dict: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``{authors' key: array}`` to ``path``, in the given order, bit for bit.

    The bytes are written by Python's ``open``, so the file gets the permissions of every other
    file we write (0666 less the umask; ``save_file`` would make it 0600)."""
    backend = _safetensors_numpy()
    tensors = {key: np.ascontiguousarray(np.asarray(value)) for key, value in state_dict.items()}
    try:
        data = backend.save(tensors, metadata=dict(METADATA))
        with open(path, "wb") as file:
            file.write(data)
    except Exception as error:
        raise ConversionError(f"cannot write {path} ({_first_line(error)})") from None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{authors' key: numpy array}`` from a .safetensors file (writable copies)."""
    backend = _safetensors_numpy()
    if not os.path.isfile(path):
        raise ConversionError(f"no .safetensors file at {path}")
    try:
        tensors = backend.load_file(str(path))
    except Exception as error:
        raise ConversionError(
            f"{path} is not a readable .safetensors file ({_first_line(error)}); it may be "
            "truncated or damaged: write or download it again"
        ) from None
    if not tensors:
        raise ConversionError(f"{path} holds no tensors")
    return {key: np.array(value, copy=True) for key, value in tensors.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
