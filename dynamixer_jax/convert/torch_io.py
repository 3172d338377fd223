"""Reading an authors' checkpoint in any of its forms into ``{key: numpy array}``.

Accepted: a bare state_dict, a timm-style checkpoint dict (weights under
``state_dict``, the EMA copy under ``state_dict_ema``; also ``model``), with or
without DistributedDataParallel's ``module.`` prefix, or a path to such a file.
Values may be numpy arrays or torch tensors. torch is imported only to read a
file or a tensor.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from dynamixer_jax.convert.mapping import strip_prefix
from dynamixer_jax.errors import ConversionError

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")


def is_torch_file(path: str) -> bool:
    """True for the suffixes PyTorch checkpoints use (.pth, .pth.tar, .pt, .bin)."""
    return str(path).endswith(TORCH_SUFFIXES)


def import_torch():
    try:
        import torch  # noqa: PLC0415 (optional dependency)
    except ImportError as error:  # pragma: no cover - exercised only without torch
        raise ConversionError(
            "reading or writing PyTorch files needs torch: pip install torch"
        ) from error
    return torch


def load_torch_file(path: os.PathLike | str) -> Any:
    """torch.load a .pth / .pth.tar file on the CPU, tensors only if the file allows it."""
    torch = import_torch()
    if not os.path.isfile(path):
        raise ConversionError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_error:
        # timm checkpoints also pickle the training arguments, which weights_only refuses.
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise ConversionError(
                f"{path} is not a readable PyTorch checkpoint ({error})"
            ) from error
        warnings.warn(
            f"{path} holds more than tensors; it was loaded with weights_only=False "
            f"({type(safe_error).__name__}). Only do this with files you trust.",
            stacklevel=3,
        )
        return checkpoint


def to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a numpy array, jax array or torch tensor (bfloat16 kept as ml_dtypes.bfloat16)."""
    if hasattr(value, "detach"):  # torch.Tensor
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            import ml_dtypes  # noqa: PLC0415 (ships with jax)

            return tensor.float().numpy().astype(ml_dtypes.bfloat16)
        return tensor.numpy().copy()
    return np.asarray(value)


def unwrap_state_dict(source: Any, ema: bool = False) -> dict[str, np.ndarray]:
    """{authors' key: numpy array} from a state_dict, a checkpoint dict or a file path."""
    if isinstance(source, (str, os.PathLike)):
        source = load_torch_file(source)
    if not isinstance(source, Mapping):
        raise ConversionError(
            f"expected a state_dict, a checkpoint dict or a file path, got {type(source).__name__}"
        )
    wanted = "state_dict_ema" if ema else "state_dict"
    if ema and wanted not in source:
        raise ConversionError(
            "ema=True but the checkpoint has no 'state_dict_ema' "
            f"(it has: {', '.join(sorted(map(str, source))) or 'nothing'})"
        )
    for container in (wanted, "model"):
        if container in source and isinstance(source[container], Mapping):
            source = source[container]
            break
    return {key: to_numpy(value) for key, value in strip_prefix(source).items()}


def save_torch(state_dict: dict[str, np.ndarray], path: str) -> None:
    """torch.save a bare state_dict (loads with the authors' ``model.load_state_dict``)."""
    torch = import_torch()
    torch.save(
        {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state_dict.items()},
        path,
    )
