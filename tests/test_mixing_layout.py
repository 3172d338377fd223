"""The lane-dense mixing (sequences on the minor axis) against the specification's formula, and the
softmax whose backward pass works from the stored probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamixer_jax.model.layers import (
    DynaMixerOp,
    _tokens_channels_sequences,
    softmax_saving_probabilities,
)


def spec_mix(params, x):
    """SPEC section 1 written literally for x (N, L, C): the layout the authors' code uses."""
    n, length, channels = x.shape
    segments = params["compress"]["bias"].shape[0] // 2
    z = x @ params["compress"]["kernel"] + params["compress"]["bias"]  # (N, L, S*r)
    z = z.reshape(n, length, segments, 2).transpose(0, 2, 1, 3).reshape(n, segments, 2 * length)
    p = z @ params["generate"]["kernel"] + params["generate"]["bias"]
    p = jax.nn.softmax(p.reshape(n, segments, length, length), axis=2)  # over L_in
    xs = x.reshape(n, length, segments, channels // segments)
    y = jnp.einsum("nisd,nsij->njsd", xs, p).reshape(n, length, channels)
    return y @ params["out"]["kernel"] + params["out"]["bias"]


@pytest.mark.parametrize("shape", [(2, 5, 7, 12), (3, 4, 6)])
def test_tokens_channels_sequences_puts_every_other_position_minor_in_order(shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for axis in range(len(shape) - 1):
        moved = _tokens_channels_sequences(x, axis)
        expected = np.moveaxis(np.asarray(x), (axis, len(shape) - 1), (0, 1))
        np.testing.assert_array_equal(moved, expected.reshape(shape[axis], shape[-1], -1))


def test_op_matches_the_specification_values_and_gradients():
    # float32 throughout: the two computations differ only in summation order (atol 1e-5 is
    # ~100 float32 ulps of outputs of size ~1).
    op = DynaMixerOp(seq_len=6, num_segments=3)
    x = jax.random.normal(jax.random.key(0), (4, 6, 12))
    params = op.init(jax.random.key(1), x)["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * jnp.ones_like(p), params)  # biases != 0
    apply = jax.jit(lambda p, x: op.apply({"params": p}, x))
    np.testing.assert_allclose(apply(params, x), jax.jit(spec_mix)(params, x), atol=1e-5)

    ours = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))), (0, 1)))(params, x)
    spec = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(spec_mix(p, x))), (0, 1)))(params, x)
    for got, want in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(spec)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_softmax_gradient_equals_jax_in_float32_and_is_close_in_bfloat16():
    logits = 3 * jax.random.normal(jax.random.key(2), (5, 8, 7))
    weights = jax.random.normal(jax.random.key(3), (5, 8, 7))

    def loss(fn, dtype):
        return lambda x: jnp.sum(fn(x.astype(dtype)).astype(jnp.float32) * weights)

    ours = jax.jit(
        jax.grad(loss(lambda x: softmax_saving_probabilities(x, 1, jnp.float32), jnp.float32))
    )
    jaxs = jax.jit(jax.grad(loss(lambda x: jax.nn.softmax(x, axis=1), jnp.float32)))
    np.testing.assert_allclose(ours(logits), jaxs(logits), atol=1e-6)

    # bfloat16: probabilities and cotangent rounded to bfloat16 (relative 2**-9 each), so the
    # gradient agrees with the float32 one to a few bfloat16 ulps of its largest entry.
    bf16 = loss(lambda x: softmax_saving_probabilities(x, 1, jnp.bfloat16), jnp.bfloat16)
    got = jax.jit(jax.grad(bf16))(logits)
    want = jaxs(logits)
    assert got.dtype == jnp.float32  # the cotangent of the cast input, in the input's dtype
    np.testing.assert_allclose(got, want, atol=4 * 2**-8 * float(jnp.max(jnp.abs(want))))


def test_vector_and_dot_mixing_agree_and_bad_names_are_rejected():
    x = jax.random.normal(jax.random.key(4), (2, 6, 5, 12))
    ops = {m: DynaMixerOp(seq_len=6, num_segments=3, mixing=m) for m in ("vector", "dot")}
    params = ops["dot"].init(jax.random.key(5), x[:, :, 0])["params"]
    # Along axis 1 (not the op's own axis), through the block's entry point: float32 both ways,
    # only the summation order differs.
    outs = {
        m: jax.jit(lambda p, x, op=op: op.apply({"params": p}, x, x[..., :6], 1, method="mix"))(
            params, x
        )
        for m, op in ops.items()
    }
    np.testing.assert_allclose(outs["vector"], outs["dot"], atol=1e-5)
    with pytest.raises(ValueError, match="mixing must be one of"):
        DynaMixerOp(seq_len=6, num_segments=3, mixing="triton").apply(
            {"params": params}, x[:, :, 0]
        )


def _residual_lines(policy) -> list[str]:
    """What one vector-layout mixer layer keeps for its backward pass under ``policy``, as
    ``jax.ad_checkpoint.print_saved_residuals`` lists it (arguments left out)."""
    import contextlib
    import io

    import flax.linen as nn
    from jax.ad_checkpoint import print_saved_residuals

    from dynamixer_jax.model.layers import MixerLayer

    layer = nn.remat(MixerLayer, policy=policy, static_argnums=(2,))(
        8, 8, 4, 2, dtype=jnp.bfloat16, mixing="vector"
    )
    x = jnp.zeros((2, 8, 8, 32), jnp.bfloat16)
    params = layer.init(jax.random.key(0), x, False)["params"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print_saved_residuals(lambda p, x: layer.apply({"params": p}, x, False), params, x)
    return [line for line in printed.getvalue().splitlines() if "from the argument" not in line]


def _residual_bytes(lines: list[str]) -> int:
    sizes = {"bf16": 2, "f32": 4}
    total = 0
    for line in lines:
        dtype, dims = line.split()[0].rstrip("]").split("[")
        total += sizes[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
    return total


def test_minimal_remat_of_the_vector_mixing_keeps_the_mixed_tokens_and_no_matrices():
    # "minimal" for the "vector" mixing keeps the mixed tokens (after ``out`` and the move back
    # into the grid's layout) instead of the ``out`` product, and neither the logits nor the
    # probabilities of the mixing matrices (recomputed from the compress output): less memory
    # than keeping every matrix product, the "dot" layout's policy.
    from dynamixer_jax.model.remat import REMAT_POLICIES, remat_policy

    kept = _residual_lines(remat_policy("minimal", "vector"))
    dots_only = _residual_lines(REMAT_POLICIES["minimal"])
    assert remat_policy("minimal", "dot") is REMAT_POLICIES["minimal"]
    assert sum("named 'mixed_tokens'" in line for line in kept) == 2, kept  # one per direction
    assert not any("_mix_sequences_minor" in line for line in kept if "named" not in line), kept
    # dots_saveable keeps the logits (S, L, L, N) and the out product of both directions.
    assert sum("_mix_sequences_minor" in line for line in dots_only) == 4, dots_only
    matrices = 2 * 4 * 8 * 8 * 2 * 8 * 2  # two directions' (S, L, L, N) in bfloat16
    assert _residual_bytes(kept) == _residual_bytes(dots_only) - matrices
