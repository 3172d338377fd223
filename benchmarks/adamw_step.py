"""The plain AdamW training step the benchmarks time and measure, shared by them.

Forward in training mode (stochastic depth from ``key``), integer-label cross-entropy in float32,
backward, optax AdamW; no mixup, EMA or NaN guard (``dynamixer_jax.train.steps`` has those).
"""

import jax
import jax.numpy as jnp
import optax

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.05


def make_adamw_step(model, tx=None):
    """(step, tx): ``step(params, opt_state, images, labels, key) -> (params, opt_state, loss)``,
    not jitted (callers jit it with donation)."""
    tx = tx or optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, tx
