"""``scan_layers``: a stage's layers run as one scan and give the unrolled network's values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_model

from dynamixer_jax import init_variables

# The shared tiny architecture with more layers: a scan needs stages of several layers (2 and 3
# here) to loop over; the one-layer stages check the scan of a single layer.
LAYERS = (2, 1, 3, 1)


def small_model(**overrides):
    return tiny_model(layers=LAYERS, **overrides)


def loss_and_grads(model, params, images, labels):
    def loss_fn(p):
        logits = model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize("remat", ["minimal", "full"])
def test_scanned_stages_give_the_unrolled_loss_and_gradients(remat):
    params = init_variables(small_model(), 0)["params"]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((4, 56, 56, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 4))
    unrolled = loss_and_grads(small_model(remat=remat), params, images, labels)
    scanned = loss_and_grads(small_model(remat=remat, scan_layers=True), params, images, labels)
    # Same operations on the same values, only in a loop: equal to float32 rounding.
    for got, want in zip(jax.tree_util.tree_leaves(scanned), jax.tree_util.tree_leaves(unrolled)):
        scale = float(jnp.max(jnp.abs(want))) + 1e-12
        assert float(jnp.max(jnp.abs(got - want))) <= 1e-6 * scale


def test_scan_keeps_the_parameter_tree_and_the_mixing_matrices():
    model = small_model(scan_layers=True, drop_path_rate=0.5)
    variables = init_variables(model, 0)
    plain = init_variables(small_model(), 0)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(plain)
    images = jnp.ones((2, 56, 56, 3))
    _, state = model.apply(variables, images, mutable=["intermediates"])
    assert "mixing" in state["intermediates"]["stages_2"]["layers_2"]["attn"]["mix_h"]
    # Stochastic depth still drops whole samples in the scanned stages.
    out = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
