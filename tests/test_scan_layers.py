"""``scan_layers``: a stage's layers run as one scan and give the unrolled network's values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dynamixer_jax import create_model, init_variables

SMALL = dict(layers=(2, 3), embed_dims=(32, 64), transitions=(True, False), num_segments=(4, 8),
             reduced_dims=(2, 2), mlp_ratios=(3, 3), num_classes=10, image_size=56)


def loss_and_grads(model, params, images, labels):
    def loss_fn(p):
        logits = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("remat", ["minimal", "full"])
def test_scanned_stages_give_the_unrolled_loss_and_gradients(remat):
    params = init_variables(create_model("dynamixer_s", **SMALL), 0)["params"]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((4, 56, 56, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 4))
    unrolled = loss_and_grads(create_model("dynamixer_s", remat=remat, **SMALL), params, images,
                              labels)
    scanned = loss_and_grads(create_model("dynamixer_s", remat=remat, scan_layers=True, **SMALL),
                             params, images, labels)
    # Same operations on the same values, only in a loop: equal to float32 rounding.
    for got, want in zip(jax.tree_util.tree_leaves(scanned), jax.tree_util.tree_leaves(unrolled)):
        scale = float(jnp.max(jnp.abs(want))) + 1e-12
        assert float(jnp.max(jnp.abs(got - want))) <= 1e-6 * scale


def test_scan_keeps_the_parameter_tree_and_the_mixing_matrices():
    model = create_model("dynamixer_s", scan_layers=True, drop_path_rate=0.5, **SMALL)
    variables = init_variables(model, 0)
    plain = init_variables(create_model("dynamixer_s", **SMALL), 0)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(plain)
    images = jnp.ones((2, 56, 56, 3))
    _, state = model.apply(variables, images, mutable=["intermediates"])
    assert "mixing" in state["intermediates"]["stages_1"]["layers_2"]["attn"]["mix_h"]
    # Stochastic depth still drops whole samples in the scanned stages.
    out = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
