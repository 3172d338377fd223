"""Which model a benchmark builds: aliases, the tiny smoke-run architecture, compute dtypes, and
the PyTorch twin of the authors' model (``dynamixer_torch``)."""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import jax.numpy as jnp

from benchlib import UserError
from dynamixer_jax.model.variants import VARIANTS, create_model

ALIASES = {"S": "dynamixer_s", "M": "dynamixer_m", "L": "dynamixer_l", "tiny": "tiny"}
# A small custom architecture with every kind of part, for smoke runs and tests.
TINY = dict(
    VARIANTS["dynamixer_s"],
    layers=(1, 1, 1, 1),
    embed_dims=(32, 64, 64, 64),
    num_segments=(4, 8, 8, 8),
)
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
NUM_CLASSES, DROP_PATH_RATE = 1000, 0.1
NUM_INPUT_BATCHES = 2  # distinct batches a timed loop cycles through


def model_name(alias: str) -> str:
    """Full variant name for an alias (S, M, L, tiny) or a full name."""
    name = ALIASES.get(alias, alias)
    if name != "tiny" and name not in VARIANTS:
        raise UserError(f"unknown model {alias!r}; use S, M, L, tiny or one of {sorted(VARIANTS)}")
    return name


def architecture(name: str) -> dict[str, Any]:
    """The architecture fields of a model name (a variant or 'tiny')."""
    return dict(TINY if name == "tiny" else VARIANTS[name])


def create(name: str, **kwargs):
    """``create_model`` for a variant name or 'tiny' (DynaMixer-S's settings, TINY's shape)."""
    if name == "tiny":
        return create_model("dynamixer_s", **{**TINY, **kwargs})
    return create_model(name, **kwargs)


def create_model_accepts_remat() -> bool:
    """Whether this checkout's ``create_model`` has a ``remat`` argument."""
    return "remat" in inspect.signature(create_model).parameters


def build_model(name: str, image_size: int, dtype: str, remat: str, train: bool):
    """The Flax model of one throughput measurement: float32 parameters, ``dtype`` compute,
    stochastic depth when training (``remat`` passed where ``create_model`` takes it)."""
    kwargs = dict(
        num_classes=NUM_CLASSES,
        image_size=image_size,
        dtype=DTYPES[dtype],
        param_dtype=jnp.float32,
        drop_path_rate=DROP_PATH_RATE if train else 0.0,
    )
    if create_model_accepts_remat():
        kwargs["remat"] = remat
    return create(name, **kwargs)


def torch_reference() -> ModuleType:
    """The PyTorch twin module (needs torch; raises ImportError without it)."""
    import dynamixer_torch

    return dynamixer_torch
