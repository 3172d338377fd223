"""Reading an authors' checkpoint in any of its forms into ``{key: numpy array}``.

Accepted: a bare state_dict, a timm-style checkpoint dict (weights under
``state_dict``, the EMA copy under ``state_dict_ema``; also ``model``), with or
without DistributedDataParallel's ``module.`` prefix, or a path to such a file.
Values may be numpy arrays or torch tensors. torch is imported only to read a
file or a tensor.

A ``.pth`` file is a pickle, and unpickling can run any code the file names. Files are
therefore read with ``torch.load(weights_only=True)``, which rebuilds only tensors and plain
containers, plus the one class timm's checkpoint saver adds (the training arguments, an
``argparse.Namespace``). A file that names anything else is refused with the names it holds;
``trust_pickle=True`` (the converter's ``--trust-pickle``) is the explicit opt-in for a file
its user vouches for.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
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


# What timm's checkpoint saver (the authors' code) pickles besides tensors and plain containers.
AUTHORS_GLOBALS = (argparse.Namespace,)


def load_torch_file(path: os.PathLike | str, *, trust_pickle: bool = False) -> Any:
    """torch.load a .pth / .pth.tar file on the CPU without running code from it.

    Only tensors, plain containers and :data:`AUTHORS_GLOBALS` are rebuilt; a file that pickles
    anything else is a :class:`ConversionError` naming what it holds. ``trust_pickle=True``
    unpickles everything (the file's code runs): only for a file whose source you trust."""
    torch = import_torch()
    if not os.path.isfile(path):
        raise ConversionError(f"no checkpoint file at {path}")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(AUTHORS_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        held = [] if trust_pickle else _globals_beyond_weights(torch, path, error)
        if held:
            raise ConversionError(
                f"{path} pickles Python objects besides weights ({', '.join(held)}); reading them "
                "could run code, so it was not read. If you trust its source, convert it once "
                f"with `python -m dynamixer_jax.convert --trust-pickle {path} OUT.safetensors` "
                "and use OUT.safetensors"
            ) from None
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint ({_reason(error)})"
        ) from None
    except Exception as error:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint ({_reason(error)})"
        ) from None


def _globals_beyond_weights(torch: Any, path: os.PathLike | str, error: BaseException) -> list[str]:
    """The Python globals (classes, functions) that the file pickles beyond what we allow: from
    torch's listing of the file, or from its refusal where the file is too old to be listed.
    Empty for a file that is damaged rather than hostile."""
    allowed = {f"{kind.__module__}.{kind.__qualname__}" for kind in AUTHORS_GLOBALS}
    try:
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip file: an old format, or no checkpoint at all
        names = set(re.findall(r"GLOBAL ([\w.]+)", str(error)))
    return sorted(names - allowed)


def _reason(error: BaseException) -> str:
    """The line of torch's message that says what is wrong with the file."""
    text = str(error).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


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
