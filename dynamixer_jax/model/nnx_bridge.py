"""Using DynaMixer from Flax NNX, through ``flax.nnx.bridge``.

from dynamixer_jax import create_model
from dynamixer_jax.model.nnx_bridge import to_nnx
model = to_nnx(create_model('dynamixer_s'), variables)   # variables e.g. from torch_to_flax
logits = model(images)                                   # an nnx.Module
logits = model(images, train=True)                       # dropout keys from rngs
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dynamixer_jax.model.network import DynaMixer


def to_nnx(
    model: DynaMixer, variables: Any | None = None, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """An NNX module wrapping the Linen ``model``, holding ``variables['params']`` (or fresh ones).

    ``rngs`` gives the ``params`` stream (for fresh weights) and the
    ``dropout`` stream (for ``train=True``); by default ``nnx.Rngs(0)``.
    """
    wrapped = nnx.bridge.ToNNX(model, rngs=rngs or nnx.Rngs(0))
    nnx.bridge.lazy_init(wrapped, jnp.zeros(model.input_shape(1), jnp.float32))
    if variables is not None:
        params = variables.get("params", variables)
        nnx.update(wrapped, nnx.State(jax.tree_util.tree_map(nnx.Param, params)))
    return wrapped
