"""The plain AdamW training step the benchmarks time and measure.

Forward in training mode (stochastic depth from ``key``), integer-label cross-entropy in float32,
backward, optax AdamW; no mixup, EMA or NaN guard (``dynamixer_jax.train.steps`` has those).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.05


def weight_decay_mask(params):
    """True for weights of 2+ axes (no decay on biases and norm scales), as the recipe."""
    return jax.tree_util.tree_map(lambda leaf: jnp.ndim(leaf) > 1, params)


def make_optimizer(mask_decay: bool = False) -> optax.GradientTransformation:
    """AdamW at the benchmarks' rate and decay; ``mask_decay``: the recipe's decay mask."""
    return optax.adamw(
        LEARNING_RATE, weight_decay=WEIGHT_DECAY, mask=weight_decay_mask if mask_decay else None
    )


def make_adamw_step(model, tx: optax.GradientTransformation | None = None):
    """(step, tx): ``step(params, opt_state, images, labels, key) -> (params, opt_state, loss)``,
    jitted with the parameters and the optimizer state donated."""
    tx = tx or make_optimizer()

    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels
            ).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1)), tx
