"""Which model a benchmark builds: aliases, the tiny smoke-run architecture, compute dtypes."""

from __future__ import annotations

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
DTYPES = {"fp32": None, "bf16": jnp.bfloat16}  # compute dtypes; parameters stay float32
NUM_CLASSES, DROP_PATH_RATE = 1000, 0.1


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
