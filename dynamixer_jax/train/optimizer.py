"""The authors' optimiser in optax: AdamW, a weight-decay mask, the learning-rate
schedule and optional gradient clipping.

Schedule, per step (``t`` counts steps; ``E`` is steps per epoch)::

    t <  warmup                 linear from warmup_learning_rate to learning_rate
    warmup <= t < cosine_end    min + (peak - min) * (1 + cos(pi * t / cosine_end)) / 2
    t >= cosine_end             min_learning_rate (the cooldown epochs)

As in timm's ``CosineLRScheduler`` with ``warmup_prefix=False`` (how the authors ran it), the
cosine is a function of the step counted from 0, warmup included: the warmup ends on the cosine
curve, a little below ``learning_rate``. timm steps it once per epoch; here it moves every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dynamixer_jax.train.plan import OptimPlan, StepCounts

Schedule = Callable[[jax.Array], jax.Array]


def learning_rate_schedule(
    *,
    learning_rate: float,
    warmup_learning_rate: float,
    min_learning_rate: float,
    warmup_steps: int,
    cosine_steps: int,
) -> Schedule:
    """Warmup, cosine over ``cosine_steps`` (warmup included), then ``min_learning_rate``.

    ``cosine_steps`` is where the cooldown starts (e.g. 300 epochs' worth of steps of a 310-epoch
    run). ``warmup_steps`` 0 starts on the cosine.
    """
    cosine_steps = max(int(cosine_steps), 1)
    warmup_steps = min(int(warmup_steps), cosine_steps)

    def cosine(count):
        # join_schedules hands each piece the steps since its own start.
        progress = jnp.minimum(count + warmup_steps, cosine_steps) / cosine_steps
        return min_learning_rate + 0.5 * (learning_rate - min_learning_rate) * (
            1.0 + jnp.cos(math.pi * progress)
        )

    pieces = [cosine, optax.constant_schedule(min_learning_rate)]
    boundaries = [cosine_steps]  # absolute steps where the next piece starts
    if warmup_steps:
        pieces.insert(0, optax.linear_schedule(warmup_learning_rate, learning_rate, warmup_steps))
        boundaries.insert(0, warmup_steps)
    return optax.join_schedules(pieces, boundaries)


def weight_decay_mask(params: Any) -> Any:
    """True where weight decay applies: weights with 2 or more axes (no biases, no norm scales)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.ndim(leaf) > 1, params)


def make_optimizer(
    schedule: Schedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip_norm: float = 0.0,
) -> optax.GradientTransformation:
    """AdamW with ``schedule``, decoupled weight decay on the masked weights, and clipping of the
    global gradient norm to ``grad_clip_norm`` first (0 turns clipping off)."""
    adamw = optax.adamw(
        schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
    )
    if grad_clip_norm and grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw)
    return adamw


def optimizer_from_plan(
    optim: OptimPlan, steps: StepCounts
) -> tuple[Schedule, optax.GradientTransformation]:
    """The schedule and the optimizer a run's plan asks for."""
    schedule = learning_rate_schedule(
        learning_rate=optim.learning_rate,
        warmup_learning_rate=optim.warmup_learning_rate,
        min_learning_rate=optim.min_learning_rate,
        warmup_steps=steps.warmup_steps,
        cosine_steps=steps.cosine_steps,
    )
    tx = make_optimizer(
        schedule,
        weight_decay=optim.weight_decay,
        b1=optim.b1,
        b2=optim.b2,
        eps=optim.eps,
        grad_clip_norm=optim.grad_clip_norm,
    )
    return schedule, tx
