"""The fused Pallas mixing (``mixing="pallas"``) against the XLA forms, run in Pallas' interpreter
on the CPU: the kernel's values and all four gradients, the padding of the sequences to whole
blocks, and a whole network's logits and gradients against the ``"vector"`` form."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import MICRO_ARCH

from dynamixer_jax.model import create_model, init_variables
from dynamixer_jax.model.pallas_mixing import fused_mixing, reference_mixing


def _inputs(dtype, length=8, segments=2, reduced=2, seg_channels=3, sequences=20):
    keys = jax.random.split(jax.random.key(0), 5)
    z = jax.random.normal(keys[0], (segments, length * reduced, sequences))
    wt = 0.3 * jax.random.normal(keys[1], (length * length, length * reduced))
    bias = 0.1 * jax.random.normal(keys[2], (length * length,))
    x = jax.random.normal(keys[3], (length, segments, seg_channels, sequences))
    cotangent = jax.random.normal(keys[4], x.shape)
    return [a.astype(dtype) for a in (z, wt, bias, x)], cotangent


def _value_and_grads(fn, args, cotangent):
    def loss(*args):
        return jnp.sum(fn(*args).astype(jnp.float32) * cotangent)

    value = jax.jit(fn)(*args)
    return value, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)


def test_fused_mixing_matches_xla_in_float32():
    # The same products in another summation order: float32 values of size ~1 agree to ~10 ulps;
    # atol 1e-5 leaves room for the sums over 8-64 terms.
    args, cotangent = _inputs(jnp.float32)
    value, grads = _value_and_grads(fused_mixing, args, cotangent)
    want_value, want_grads = _value_and_grads(reference_mixing, args, cotangent)
    np.testing.assert_allclose(value, want_value, atol=1e-5)
    for name, got, want in zip(("z", "wt", "bias", "x"), grads, want_grads):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(jnp.max(abs(want)))))


def test_fused_mixing_in_bfloat16_is_within_bfloat16_rounding():
    # Both round the logits, probabilities and products to bfloat16 (relative 2**-8 each) but
    # accumulate in different orders and precisions: a few bfloat16 ulps of the largest entry.
    # 300 sequences are more than one block: padded to three blocks of 128, the padding dropped.
    args, cotangent = _inputs(jnp.bfloat16, sequences=300)
    value, grads = _value_and_grads(fused_mixing, args, cotangent)
    want_value, want_grads = _value_and_grads(reference_mixing, args, cotangent)
    assert value.dtype == jnp.bfloat16
    for got, want in zip((value, *grads), (want_value, *want_grads)):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, atol=4 * 2**-8 * np.max(np.abs(want)))


def test_network_with_pallas_mixing_matches_vector_mixing():
    # A whole (micro) network, both mixing directions, float32: logits and every parameter's
    # gradient as the "vector" form computes them (differences are float32 summation order).
    arch = dict(MICRO_ARCH, transitions=(False, False))
    models = {
        m: create_model("dynamixer_s", image_size=32, num_classes=10, mixing=m, **arch)
        for m in ("vector", "pallas")
    }
    variables = init_variables(models["vector"], jax.random.key(1))
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    labels = jnp.array([3, 7])

    def loss(params, model):
        logits = model.apply({**variables, "params": params}, images)
        return -jnp.mean(
            jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)
        ), logits

    results = {
        m: jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)(variables["params"], model)
        for m, model in models.items()
    }
    (grads_v, logits_v), (grads_p, logits_p) = results["vector"], results["pallas"]
    np.testing.assert_allclose(logits_p, logits_v, atol=1e-5)
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(grads_p), jax.tree_util.tree_leaves(grads_v)
    ):
        scale = max(1e-3, float(jnp.max(jnp.abs(want))))
        np.testing.assert_allclose(got, want, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
