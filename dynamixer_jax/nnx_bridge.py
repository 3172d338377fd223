"""Using DynaMixer from Flax NNX, through ``flax.nnx.bridge``.

    from dynamixer_jax.nnx_bridge import load_nnx, make_nnx_train_step
    model = load_nnx(WORKDIR, num_classes=37)            # our checkpoint, a new 37-class head
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    train_step = make_nnx_train_step()
    loss = train_step(model, optimizer, images, labels)  # model and optimizer updated in place

``to_nnx(create_model('dynamixer_s'), variables)`` wraps any Linen DynaMixer and its weights.
The NNX step compiles to the same program as a Linen ``jax.jit`` step of the same model
(``docs/studies.md`` has both timed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dynamixer_jax.loading import load
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import init_variables


def to_nnx(
    model: DynaMixer, variables: Any | None = None, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """An NNX module wrapping the Linen ``model``, holding ``variables['params']`` (or fresh ones).

    ``rngs`` gives the ``params`` stream (for fresh weights) and the
    ``dropout`` stream (for ``train=True``); by default ``nnx.Rngs(0)``.
    """
    rngs = rngs or nnx.Rngs(0)
    images = jax.ShapeDtypeStruct(model.input_shape(1), jnp.float32)

    def build(rngs: nnx.Rngs) -> nnx.Module:
        wrapped = nnx.bridge.ToNNX(model, rngs=rngs)
        nnx.bridge.lazy_init(wrapped, jnp.zeros(images.shape, images.dtype))
        return wrapped

    # Built abstractly (initialising eagerly runs op by op: ~10 s for a small model), then given
    # the weights and the caller's random streams.
    wrapped = nnx.eval_shape(build, rngs)
    if variables is None:
        variables = jax.jit(init_variables, static_argnums=0)(model, rngs.params())
    # Copies: a training step donates the module's buffers, and the caller's stay usable.
    params = jax.tree_util.tree_map(jnp.array, variables.get("params", variables))
    nnx.update(wrapped, nnx.State(jax.tree_util.tree_map(nnx.Param, params)))
    _, others = nnx.split(wrapped, nnx.Param, ...)[1:]
    (streams_attribute,) = others.keys()  # ToNNX keeps its Rngs under one attribute
    nnx.update(wrapped, nnx.State({streams_attribute: nnx.state(rngs)}))
    return wrapped


def load_nnx(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    ema: bool = False,
    rngs: nnx.Rngs | None = None,
    **model_kwargs: Any,
) -> nnx.Module:
    """Our trained weights (anything ``dynamixer_jax.load`` reads) as an NNX module, ready to
    fine-tune: ``num_classes`` different from the checkpoint's gives a freshly initialised head
    (every other weight loaded), ``image_size`` different from the trained one resampled
    ``generate`` layers (as ``dynamixer_jax.load``); ``model_kwargs`` go to the model
    (``drop_path_rate``...)."""
    model, variables = load(
        path, ema=ema, num_classes=num_classes, image_size=image_size, **model_kwargs
    )
    return to_nnx(model, variables, rngs=rngs or nnx.Rngs(0, dropout=1))


def make_nnx_train_step(
    *, label_smoothing: float = 0.0
) -> Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], jax.Array]:
    """``train_step(model, optimizer, images, labels) -> loss``: one update under ``nnx.jit``,
    cross-entropy on integer ``labels`` (with ``label_smoothing``), stochastic depth on; the
    model and the optimizer are updated in place (and their old buffers donated)."""

    def loss_fn(model: nnx.Module, images: jax.Array, labels: jax.Array) -> jax.Array:
        logits = model(images, train=True).astype(jnp.float32)
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets).mean()

    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer, images, labels):
        loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
        optimizer.update(model, grads)
        return loss

    return train_step
