"""The model from Flax NNX: the same logits as Linen, the same update as a Linen step under
``nnx.jit``, and fine-tuning from our checkpoint (``dynamixer_jax.nnx_bridge``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import MICRO_ARCH
from flax import nnx

from dynamixer_jax import create_model, init_variables, trees
from dynamixer_jax.convert.flax_io import save_flax
from dynamixer_jax.nnx_bridge import load_nnx, make_nnx_train_step, to_nnx

IMAGES = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
LABELS = jnp.array([0, 1, 2, 3])


def micro_model(**overrides):
    """The smallest DynaMixer with two stages (tests/conftest.py), on 16x16 images."""
    return create_model("dynamixer_s", **{**MICRO_ARCH, "image_size": 16, **overrides})


@nnx.jit(static_argnames="train")
def _forward(model, images, train=False):
    return model(images, train=train)


def test_nnx_module_gives_the_linen_logits_and_fresh_dropout_each_call():
    linen_model = micro_model(num_classes=5, drop_path_rate=0.5)
    variables = init_variables(linen_model, 3)
    model = to_nnx(linen_model, variables, rngs=nnx.Rngs(0, dropout=1))
    np.testing.assert_allclose(
        _forward(model, IMAGES), jax.jit(linen_model.apply)(variables, IMAGES), atol=1e-6, rtol=0
    )
    assert not np.allclose(_forward(model, IMAGES, train=True), _forward(model, IMAGES, train=True))


def test_the_nnx_step_makes_the_linen_steps_update():
    linen_model = micro_model(num_classes=5)  # no stochastic depth: deterministic
    variables = init_variables(linen_model, 3)
    tx = optax.adamw(1e-3, weight_decay=0.05)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def linen_step(params, opt_state):
        def loss_fn(params):
            logits = linen_model.apply({"params": params}, IMAGES, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    opt_state = tx.init(params)
    model = to_nnx(linen_model, variables)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    train_step = make_nnx_train_step()
    for _ in range(3):
        params, opt_state, linen_loss = linen_step(params, opt_state)
        nnx_loss = train_step(model, optimizer, IMAGES, LABELS)
        # Same program, same inputs: float32 round-off only (3 updates of lr 1e-3 move the
        # weights by ~3e-3; 1e-6 is far below that, far above the round-off of these sums).
        np.testing.assert_allclose(nnx_loss, linen_loss, rtol=1e-6)
    trained = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fine_tuning_from_our_checkpoint_with_a_new_head(tmp_path):
    source = micro_model(num_classes=10)
    variables = init_variables(source, 7)
    save_flax(variables, str(tmp_path / "trained.msgpack"))
    model = load_nnx(tmp_path / "trained.msgpack", num_classes=4, drop_path_rate=0.1)
    loaded = {
        path.removesuffix("/value"): leaf
        for path, leaf in trees.flatten(nnx.state(model, nnx.Param)).items()
    }
    saved = trees.flatten(variables["params"])
    assert set(loaded) == set(saved)
    assert loaded["head/kernel"].shape == (32, 4) and loaded["head/bias"].shape == (4,)
    for path, value in saved.items():
        if not path.startswith("head/"):
            np.testing.assert_array_equal(loaded[path], value)  # every other weight loaded
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
    train_step = make_nnx_train_step()
    losses = [float(train_step(model, optimizer, IMAGES, LABELS)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.1, losses  # it learns four examples
