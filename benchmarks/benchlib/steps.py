"""The training steps the benchmarks time or compile: the plain AdamW step, and the library's own
step (``make_train_step``) on abstract arguments, to compile for any mesh and batch."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.model.variants import abstract_variables
from dynamixer_jax.train.optimizer import make_optimizer
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_train_step

LEARNING_RATE, WEIGHT_DECAY = 1e-3, 0.05
IMAGENET_TRAIN_IMAGES, IMAGENET_CLASSES = 1_281_167, 1000


def make_adamw_step(model):
    """``(step, tx)``: ``step(params, opt_state, images, labels, key) -> (params, opt_state,
    loss)``, jitted with the first two donated: forward (stochastic depth from ``key``), float32
    cross-entropy, backward, optax AdamW; no Mixup, EMA or NaN guard."""
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

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


def abstract_adamw_step(model, batch: int):
    """(jitted plain AdamW step, its abstract arguments) of ``model`` at ``batch``."""
    size, params = model.image_size, abstract_variables(model)["params"]
    step, tx = make_adamw_step(model)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return step, (params, jax.eval_shape(tx.init, params), images, labels, key)


def abstract_train_step(model, tx, schedule, mesh: Mesh, batch: int, *, seed=1, ema_decay, **kw):
    """``(jitted step, (abstract state, abstract batch))``: ``make_train_step`` of ``model`` over
    ``mesh`` for ``batch`` uint8 images (``kw``: its ``mixup``, ``augment``, ...)."""
    size, params = model.image_size, abstract_variables(model)["params"]
    use_ema = ema_decay > 0
    state = jax.eval_shape(lambda p: create_train_state(p, tx, seed=seed, use_ema=use_ema), params)
    kw.update(num_classes=model.num_classes, ema_decay=ema_decay)
    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    return make_train_step(model, tx, schedule, mesh, **kw), (state, batch_spec)


def library_train_step(model, mesh: Mesh, batch: int):
    """``benchmarks/memory.py --step library``: cosine schedule, AdamW (decay 0.05, masked),
    Mixup/CutMix at their defaults with label smoothing 0.1, EMA 0.9999, no random erasing."""
    schedule = optax.cosine_decay_schedule(1e-3, 1000)
    tx = make_optimizer(schedule, weight_decay=0.05)
    mixup = MixupConfig(label_smoothing=0.1)
    return abstract_train_step(model, tx, schedule, mesh, batch, mixup=mixup, ema_decay=0.9999)


def published_train_step(
    variant: str, batch: int, mesh: Mesh, *, mixing="vector", model_overrides=None, **config: Any
):
    """``(jitted step, (abstract state, abstract batch), model)`` as ``dynamixer_jax.train.loop``
    builds it from ``configs/imagenet.py``'s ``variant`` and ``config`` (``remat``, ...) at a
    global ``batch`` over ``mesh``; ``mixing`` is explicit (a CPU host's "auto" is "dot")."""
    from configs import imagenet  # ml_collections: only memory.py --tpu needs it
    from dynamixer_jax.train.optimizer import optimizer_from_plan
    from dynamixer_jax.train.plan import make_plan

    cfg = imagenet.get_config(variant)
    cfg.update(batch_size=batch, mixing=mixing, **config)
    cfg.model_overrides.update(model_overrides or {})
    plan = make_plan(cfg, devices=mesh.devices.size, processes=1)
    model = plan.model.build(plan.model.num_classes or IMAGENET_CLASSES)
    steps = plan.steps(IMAGENET_TRAIN_IMAGES // plan.data.batch_size)
    schedule, tx = optimizer_from_plan(plan.optim, steps)
    recipe = dict(mixup=plan.mixup, augment=plan.data.augment.on_device(), seed=plan.seed)
    recipe.update(ema_decay=plan.optim.ema_decay, grad_accum_steps=plan.optim.grad_accum_steps)
    return (*abstract_train_step(model, tx, schedule, mesh, batch, **recipe), model)
