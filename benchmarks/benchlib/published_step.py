"""The library's training step (``make_train_step``) with abstract arguments, on any mesh: nothing
is allocated, so it compiles for any device and batch.

``abstract_train_step`` builds it for a given model and optimizer; ``library_train_step`` with the
fixed recipe the compile-only benchmarks use (AdamW with the weight-decay mask, label smoothing,
EMA; ``benchmarks/memory.py --step library``, ``benchmarks/mixing_traffic.py --step``);
``published_train_step`` exactly as ``dynamixer_jax.train.loop`` builds it from
``configs/imagenet.py`` (the TPU compile lab).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.train.optimizer import make_optimizer
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_train_step

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000


def abstract_train_step(
    model, tx, schedule, mesh: Mesh, batch: int, *, seed: int = 1, ema_decay: float, **step_kwargs
) -> tuple[Any, tuple[Any, dict[str, jax.ShapeDtypeStruct]]]:
    """``(jitted step, (abstract state, abstract batch))``: ``make_train_step`` of ``model`` over
    ``mesh`` for ``batch`` uint8 images (``step_kwargs``: its ``mixup``, ``augment``, ...)."""
    size = model.image_size
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    state = jax.eval_shape(
        lambda p: create_train_state(p, tx, seed=seed, use_ema=ema_decay > 0), params["params"]
    )
    step = make_train_step(
        model,
        tx,
        schedule,
        mesh,
        num_classes=model.num_classes,
        ema_decay=ema_decay,
        **step_kwargs,
    )
    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    return step, (state, batch_spec)


def library_train_step(model, mesh: Mesh, batch: int):
    """The compile-only benchmarks' step: cosine schedule, AdamW (decay 0.05, masked), Mixup/
    CutMix at their defaults with label smoothing 0.1, EMA 0.9999, no random erasing."""
    schedule = optax.cosine_decay_schedule(1e-3, 1000)
    tx = make_optimizer(schedule, weight_decay=0.05)
    return abstract_train_step(
        model, tx, schedule, mesh, batch, mixup=MixupConfig(label_smoothing=0.1), ema_decay=0.9999
    )


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
    but this runs on a CPU host, where ``"auto"`` would mean ``"dot"``, so it is explicit.
    Imports the config reading (ml_collections) here: the other two steps need none of it."""
    from configs import imagenet
    from dynamixer_jax.train.optimizer import optimizer_from_plan
    from dynamixer_jax.train.plan import make_plan

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
    step, args = abstract_train_step(
        model,
        tx,
        schedule,
        mesh,
        batch,
        seed=plan.seed,
        ema_decay=plan.optim.ema_decay,
        mixup=plan.mixup,
        augment=plan.data.augment.on_device(),
        grad_accum_steps=plan.optim.grad_accum_steps,
    )
    return step, args, model
