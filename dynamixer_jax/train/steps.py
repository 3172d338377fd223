"""The jitted training and evaluation steps, as pure functions of (state, batch).

Both are compiled once with :func:`jax.jit` over the data-parallel mesh (``parallel.py``): the
state is replicated, the batch is split over the ``data`` axis, and XLA inserts the gradient
all-reduce. Nothing in a step returns to the host; metrics come back as small replicated arrays.

Images arrive as uint8 (the tf.data pipeline's output); both steps normalise them on device.
Training step, in order: normalisation and random erasing per image
(``dynamixer_jax.data.device_augment``) -> Mixup/CutMix and label smoothing (``dynamixer_jax.data.mixup``) ->
forward with stochastic depth -> soft-target cross-entropy averaged over the real examples
(``mask``) -> gradients, optionally accumulated over micro-batches with ``lax.scan`` -> AdamW
(``optimizer.py``) -> EMA of the parameters. A step whose loss is not finite changes nothing in
the state; one whose loss, gradient norm or new parameters are not finite reports
``finite = False``, and the loop stops on it before anything is saved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from dynamixer_jax import sharding
from dynamixer_jax.data.device_augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceAugment,
    augment_batch,
    normalize,
)
from dynamixer_jax.data.mixup import MixupConfig, mix_batch
from dynamixer_jax.train.parallel import batch_sharded, replicated
from dynamixer_jax.train.state import TrainState

Batch = dict[str, jax.Array]


# optax.tree.norm replaced optax.global_norm (deprecated) in optax 0.2.5.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example cross-entropy against soft targets (rows summing to 1), in float32."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element of ``tree`` is finite (a scalar bool)."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _tree_select(condition: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), new, old)


def _traced_on_mesh(fn: Callable, model, mesh: Mesh) -> Callable:
    """``fn`` traced with ``mesh`` as the context mesh when ``model`` mixes with the Pallas
    kernel, which splits itself over the context mesh's devices (``model/pallas_mixing.py``)."""
    if getattr(model, "mixing", None) != "pallas":
        return fn

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)

    return run


def _split_micro_batches(tree: Any, count: int) -> Any:
    """(B, ...) -> (count, B / count, ...), micro-batch ``j`` holding examples ``j, j + count, ...``
    so that every micro-batch draws evenly from every device's contiguous share of the batch."""
    return jax.tree_util.tree_map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), tree
    )


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule: Callable,
    mesh: Mesh,
    *,
    num_classes: int,
    mixup: MixupConfig,
    augment: DeviceAugment = DeviceAugment(),
    ema_decay: float = 0.0,
    grad_accum_steps: int = 1,
    donate: bool = True,
    state_sharding: Any = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The compiled training step ``(state, batch) -> (state, metrics)``.

    ``batch``: ``image`` uint8 (B, H, W, 3), or float already normalised, ``label`` int (B,),
    ``mask`` bool (B,), split over the mesh. ``augment``: normalisation and random erasing (its
    default erases nothing; training builds it from ``TrainAugment.on_device()``).
    ``metrics``: ``train_loss``, ``learning_rate``, ``grad_norm``, ``finite``.
    ``grad_accum_steps`` > 1 computes the gradient of the same global batch in that many
    sequential micro-batches (less activation memory, same update up to float rounding).
    ``state_sharding``: the state's shardings (``parallel.state_shardings``); default replicated.
    """
    compute_dtype = model.dtype or jnp.float32

    def loss_fn(params, images, targets, mask, key):
        logits = model.apply(
            {"params": params}, images.astype(compute_dtype), train=True, rngs={"dropout": key}
        )
        per_example = soft_cross_entropy(logits, targets)
        return jnp.sum(per_example * mask), jnp.sum(mask)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch):
        step_key = state.step_key()
        mix_key, drop_key = jax.random.split(step_key)
        # A key of its own for erasing keeps the mixing and dropout draws of a step as they were.
        images = augment_batch(jax.random.fold_in(step_key, 1), batch["image"], augment)
        images, targets = mix_batch(mix_key, images, batch["label"], num_classes, mixup)
        mask = batch["mask"].astype(jnp.float32)
        if grad_accum_steps == 1:
            (loss_sum, count), grads = grad_fn(state.params, images, targets, mask, drop_key)
        else:
            micro = _split_micro_batches((images, targets, mask), grad_accum_steps)
            keys = jax.random.split(drop_key, grad_accum_steps)

            def accumulate(carry, inputs):
                (images_j, targets_j, mask_j), key_j = inputs
                (loss_j, count_j), grads_j = grad_fn(
                    state.params, images_j, targets_j, mask_j, key_j
                )
                loss_sum, count, grads = carry
                grads = jax.tree_util.tree_map(jnp.add, grads, grads_j)
                return (loss_sum + loss_j, count + count_j, grads), None

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (loss_sum, count, grads), _ = jax.lax.scan(
                accumulate, (jnp.float32(0), jnp.float32(0), zeros), (micro, keys)
            )
        denominator = jnp.maximum(count, 1.0)
        loss = loss_sum / denominator
        grads = jax.tree_util.tree_map(lambda g: g / denominator, grads)
        grad_norm = _global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if ema_decay:
            ema_params = jax.tree_util.tree_map(
                lambda ema, new: ema_decay * ema + (1.0 - ema_decay) * new, state.ema_params, params
            )
        else:
            ema_params = state.ema_params
        # The state is kept when the loss is not finite. Guarding on the gradient norm too would
        # make every parameter's update wait for every gradient, and XLA then schedules the
        # backward pass with about twice the activation memory (docs/studies.md, "Figures behind
        # code decisions"). A finite loss with a non-finite gradient still reports
        # finite=False, and the loop stops before that state is evaluated or saved.
        # ``finite`` also vouches for the new parameters, so a checkpoint of this step (saved
        # only after its metrics are fetched) never holds an inf or NaN; the loop sets aside a
        # checkpoint whose parameters give a non-finite loss at the next step.
        loss_finite = jnp.isfinite(loss)
        finite = loss_finite & jnp.isfinite(grad_norm) & _all_finite(params)
        new_state = state.replace(
            step=state.step + 1,
            params=_tree_select(loss_finite, params, state.params),
            opt_state=_tree_select(loss_finite, opt_state, state.opt_state),
            ema_params=_tree_select(loss_finite, ema_params, state.ema_params),
        )
        metrics = {
            "train_loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": grad_norm,
            "finite": finite,
        }
        return new_state, metrics

    layout = state_sharding or replicated(mesh)
    return jax.jit(
        # On a mesh with explicit axes the step runs as on automatic ones (sharding.py).
        _traced_on_mesh(
            sharding.automatic_axes(train_step, (layout, replicated(mesh))), model, mesh
        ),
        in_shardings=(layout, batch_sharded(mesh)),
        out_shardings=(layout, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def classification_sums(
    logits: jax.Array, labels: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
    """Sums over the real examples of one batch: cross-entropy, top-1 and top-5 hits, count."""
    logits = logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, logits.shape[-1])
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    return {
        "loss": jnp.sum(loss * mask),
        "top1": jnp.sum(top1 * mask),
        "top5": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }


def make_eval_step(
    model, mesh: Mesh, *, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> Callable[[dict[str, Any], Batch], dict[str, Any]]:
    """The compiled evaluation step ``(params_by_name, batch) -> {name: sums}``.

    ``batch["image"]`` is uint8, normalised here with ``mean``/``std`` (0-1 scale), or float
    already normalised. ``params_by_name`` maps a name (``"raw"``, ``"ema"``) to a parameter
    tree; every tree is evaluated on the same batch. Sums are over real examples only
    (``mask``), so padded batches count nothing; add them up over the split and divide by
    ``count``.
    """
    compute_dtype = model.dtype or jnp.float32

    def eval_step(params_by_name, batch):
        images = normalize(batch["image"], mean, std).astype(compute_dtype)
        return {
            name: classification_sums(
                model.apply({"params": params}, images, train=False), batch["label"], batch["mask"]
            )
            for name, params in params_by_name.items()
        }

    return jax.jit(
        _traced_on_mesh(sharding.automatic_axes(eval_step, replicated(mesh)), model, mesh),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=replicated(mesh),
    )
