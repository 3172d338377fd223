"""The Linen model used from Flax NNX: same logits as Linen, trainable with nnx transforms."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_model
from flax import nnx

from dynamixer_jax import init_variables
from dynamixer_jax.model.nnx_bridge import to_nnx


def test_nnx_bridge_inference_and_training():
    linen_model = tiny_model(num_classes=5, image_size=28, drop_path_rate=0.5)
    variables = init_variables(linen_model, 3)
    model = to_nnx(linen_model, variables, rngs=nnx.Rngs(0, dropout=1))
    images = jax.random.normal(jax.random.key(0), (4, 28, 28, 3))
    labels = jnp.array([0, 1, 2, 3])

    np.testing.assert_allclose(
        model(images), jax.jit(linen_model.apply)(variables, images), atol=1e-6, rtol=0
    )
    assert not np.allclose(
        model(images, train=True), model(images, train=True)
    )  # fresh dropout keys each call

    def loss_fn(module):
        logits = module(images)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    @nnx.jit
    def sgd_step(module):
        loss, grads = nnx.value_and_grad(loss_fn)(module)
        params = nnx.state(module, nnx.Param)
        nnx.update(module, jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads))
        return loss

    losses = [float(sgd_step(model)) for _ in range(5)]
    assert losses[-1] < losses[0] - 0.1, losses
