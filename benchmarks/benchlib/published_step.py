"""The training step a published ImageNet run compiles, with abstract arguments, on any mesh.

Built from ``configs/imagenet.py`` exactly as ``dynamixer_jax.train.loop`` builds it (the plan's
model, optimizer, Mixup/CutMix, on-device augmentation and EMA; bf16 compute; the config's
``remat``), for a batch of ``batch`` uint8 images on ``mesh``; nothing is allocated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from configs import imagenet
from dynamixer_jax.train.config_reading import make_plan
from dynamixer_jax.train.optimizer import optimizer_from_plan
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_train_step

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000


def published_train_step(
    variant: str,
    batch: int,
    mesh: Mesh,
    *,
    remat: str = "minimal",
    image_size: int = 224,
    grad_accum_steps: int = 1,
    num_classes: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    mixing: str = "vector",
) -> tuple[Any, tuple[Any, dict[str, jax.ShapeDtypeStruct]], Any]:
    """``(jitted step, (abstract state, abstract batch), model)`` of ``variant``'s ImageNet config
    at a global ``batch`` over ``mesh``'s devices. ``num_classes`` (default ImageNet's 1000) and
    ``model_overrides`` (architecture fields) make a smaller model with the same recipe.
    ``mixing``: the token-mixing layout; a TPU resolves the model's ``"auto"`` to ``"vector"``,
    but this runs on a CPU host, where ``"auto"`` would mean ``"dot"``, so it is explicit."""
    config = imagenet.get_config(variant)
    config.batch_size = batch
    config.remat = remat
    config.image_size = image_size
    config.grad_accum_steps = grad_accum_steps
    config.num_classes = num_classes
    config.mixing = mixing
    for key, value in (model_overrides or {}).items():
        config.model_overrides[key] = value
    plan = make_plan(config, devices=mesh.devices.size, processes=1)
    # num_classes stands for the dataset too: a smaller model with the same recipe, not ImageNet.
    model = plan.model.build(plan.model.classes(num_classes or IMAGENET_CLASSES))
    steps = plan.steps(IMAGENET_TRAIN_IMAGES // plan.data.batch_size)
    schedule, tx = optimizer_from_plan(plan.optim, steps)
    size = plan.model.image_size
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))[
        "params"
    ]
    state = jax.eval_shape(
        lambda p: create_train_state(p, tx, seed=plan.seed, use_ema=plan.optim.ema_decay > 0),
        params,
    )
    step = make_train_step(
        model,
        tx,
        schedule,
        mesh,
        num_classes=model.num_classes,
        mixup=plan.mixup,
        augment=plan.data.augment.on_device(),
        ema_decay=plan.optim.ema_decay,
        grad_accum_steps=plan.optim.grad_accum_steps,
    )
    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    return step, (state, batch_spec), model
