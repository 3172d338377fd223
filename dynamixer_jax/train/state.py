"""The training state: everything a resumed run needs to continue bit for bit.

``step`` counts finished optimiser steps, and is also the data position: the input pipeline's
batch ``k`` is a pure function of ``(seed, k)``, so a restored state restarts the data exactly.
``rng`` is raw key data (uint32), so Orbax stores it like any array; each step's key is
``fold_in(rng, step)``. ``ema_params`` is ``{}`` when the EMA is off.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array

    def step_key(self) -> jax.Array:
        """The PRNG key of the current step (a typed key)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create_train_state(
    params: Any, tx: optax.GradientTransformation, seed: int, use_ema: bool
) -> TrainState:
    """A fresh state at step 0 from ``params`` (a pytree of arrays)."""
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else {},
        rng=jax.random.key_data(jax.random.key(seed)),
    )
