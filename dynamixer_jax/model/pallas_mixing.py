"""The dynamic mixing as one Pallas kernel: generate's logits, the softmax over input tokens and
the mixing of one segment's tokens, forward and backward, with the (L, L) matrices never leaving
the chip's fast memory.

The XLA forms (``"vector"``, ``"dot"``) write the logits or the probabilities of every sequence
to HBM and read them back (and again in the backward pass). Here a program holds one segment of
a block of sequences: it computes the logits from the compressed tokens with one matrix product,
the softmax and the mixing on the vector units, and writes only the mixed tokens. The backward
kernel recomputes the matrices from the same inputs (the only residuals are the kernel's inputs)
and writes the gradients of the tokens, of the compressed tokens and of generate's weights.

Layout (the ``"vector"`` form's: the sequences, N of them, on the minor axis, lane-dense on a
TPU): compressed ``z`` (S, L*r, N), tokens ``x`` (L, S, C/S, N), generate's transposed kernel
``wt`` (L*L, L*r) with rows (L_in major, L_out minor), its bias (L*L, 1). Mixed ``y`` is (L_out,
S, C/S, N). Written for TPUs (Mosaic); elsewhere it runs in Pallas' interpreter, which is how
the tests check it against the XLA forms on a CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# Sequences per program: one lane width. At 256 the backward kernel of S's first stage needs 21 MB
# of VMEM, over the 16 MB a TPU kernel gets by default.
_SEQUENCE_BLOCK = 128


def _sequence_block(sequences: int) -> int:
    """All the sequences when there are few; else 128, the sequences padded to a multiple."""
    return min(sequences, _SEQUENCE_BLOCK)


def _probabilities(z, wt, bias, length: int, dtype):
    """(L_in, L_out, Nb) softmax over input tokens, float32, from one segment's (L*r, Nb)."""
    logits = jnp.dot(wt, z, preferred_element_type=jnp.float32).astype(dtype) + bias
    logits = logits.astype(jnp.float32).reshape(length, length, z.shape[-1])
    logits = logits - jnp.max(logits, axis=0, keepdims=True)
    exp = jnp.exp(logits)
    return exp / jnp.sum(exp, axis=0, keepdims=True)


def _forward_kernel(z_ref, wt_ref, bias_ref, x_ref, y_ref, *, length: int):
    """One segment of a block of sequences: y[j] = sum_i P[i, j] x[i]."""
    dtype = x_ref.dtype
    probs = _probabilities(z_ref[...], wt_ref[...], bias_ref[...], length, dtype).astype(dtype)
    x = x_ref[...]
    mixed = jnp.zeros(x.shape, jnp.float32)
    for token in range(length):  # products in the computation dtype, summed in float32
        mixed += (probs[token][:, None, :] * x[token][None, :, :]).astype(jnp.float32)
    y_ref[...] = mixed.astype(y_ref.dtype)


def _backward_kernel(
    z_ref, wt_ref, w_ref, bias_ref, x_ref, dy_ref, dx_ref, dz_ref, dwt_ref, dbias_ref, *, length
):
    """One segment of a block of sequences: the matrices recomputed, then the cotangents of x and
    z, and generate's weight and bias gradients added to this segment's sums (the sequence
    blocks of a segment run in order: the grid's second axis is "arbitrary")."""
    dtype = x_ref.dtype

    @pl.when(pl.program_id(1) == 0)
    def _():
        dwt_ref[...] = jnp.zeros(dwt_ref.shape, dwt_ref.dtype)
        dbias_ref[...] = jnp.zeros(dbias_ref.shape, dbias_ref.dtype)

    z = z_ref[...]
    probs = _probabilities(z, wt_ref[...], bias_ref[...], length, dtype).astype(dtype)
    x, dy = x_ref[...], dy_ref[...]
    dx, dprobs = [], []
    for token in range(length):
        dx.append(jnp.sum((probs[token][:, None, :] * dy).astype(jnp.float32), axis=0))
        dprobs.append(jnp.sum((x[token][None, :, :] * dy).astype(jnp.float32), axis=1))
    dx_ref[...] = jnp.stack(dx).astype(dx_ref.dtype)
    # Softmax over input tokens, from the probabilities in the computation dtype (as
    # layers.softmax_saving_probabilities).
    probs = probs.astype(jnp.float32)
    dprobs = jnp.stack(dprobs)
    dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=0, keepdims=True))
    dlogits = dlogits.reshape(length * length, z.shape[-1])
    dbias_ref[...] += jnp.sum(dlogits, axis=1, keepdims=True)
    dlogits = dlogits.astype(dtype)
    dz_ref[...] = jnp.dot(w_ref[...], dlogits, preferred_element_type=jnp.float32).astype(
        dz_ref.dtype
    )
    dwt_ref[...] += jax.lax.dot_general(
        dlogits, z, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )


def _specs(length, segments, reduced, seg_channels, block):
    """BlockSpecs over the grid (segment, sequence block) for z, wt/w, bias and tokens."""
    z = pl.BlockSpec((pl.squeezed, length * reduced, block), lambda s, n: (s, 0, n))
    wt = pl.BlockSpec((length * length, length * reduced), lambda s, n: (0, 0))
    w = pl.BlockSpec((length * reduced, length * length), lambda s, n: (0, 0))
    bias = pl.BlockSpec((length * length, 1), lambda s, n: (0, 0))
    tokens = pl.BlockSpec((length, pl.squeezed, seg_channels, block), lambda s, n: (0, s, 0, n))
    return z, wt, w, bias, tokens


def _call(kernel, *, interpret, out_shape, in_specs, out_specs, grid, semantics, cost):
    def run(*args):
        def build(interpret):
            return pl.pallas_call(
                kernel,
                out_shape=out_shape,
                grid=grid,
                in_specs=in_specs,
                out_specs=out_specs,
                interpret=interpret,
                compiler_params=None
                if interpret
                else pltpu.CompilerParams(dimension_semantics=semantics),
                cost_estimate=cost,
            )(*args)

        if interpret is not None:
            return build(interpret)
        # Mosaic where the step is lowered for a TPU (also a TPU compiled from a CPU host), the
        # interpreter elsewhere.
        return jax.lax.platform_dependent(tpu=lambda: build(False), default=lambda: build(True))

    return run


def _bytes(*arrays) -> int:
    return sum(a.size * a.dtype.itemsize for a in arrays)


def _pad_sequences(array, padded: int):
    extra = padded - array.shape[-1]
    if extra == 0:
        return array
    return jnp.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, extra)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def fused_mixing(z, wt, bias, x, interpret=None):
    """Mixed tokens (L_out, S, C/S, N) from compressed ``z`` (S, L*r, N), generate's transposed
    kernel ``wt`` (L*L, L*r) and bias (L*L,), tokens ``x`` (L, S, C/S, N): per segment and
    sequence, softmax over input tokens of generate's logits, then the tokens mixed with it
    (products in ``x``'s dtype, summed in float32). ``interpret``: None chooses by platform."""
    return _forward(z, wt, bias, x, interpret)[0]


def _forward(z, wt, bias, x, interpret):
    length, segments, seg_channels, sequences = x.shape
    reduced = z.shape[1] // length
    block = _sequence_block(sequences)
    padded = -(-sequences // block) * block
    zp, xp = _pad_sequences(z, padded), _pad_sequences(x, padded)
    z_spec, wt_spec, _, bias_spec, token_spec = _specs(
        length, segments, reduced, seg_channels, block
    )
    bias2 = bias.reshape(-1, 1).astype(x.dtype)
    flops = 2 * segments * padded * length * length * (length * reduced + seg_channels)
    y = _call(
        functools.partial(_forward_kernel, length=length),
        interpret=interpret,
        out_shape=jax.ShapeDtypeStruct(xp.shape, x.dtype),
        in_specs=[z_spec, wt_spec, bias_spec, token_spec],
        out_specs=token_spec,
        grid=(segments, padded // block),
        semantics=("parallel", "parallel"),
        cost=pl.CostEstimate(
            flops=flops,
            transcendentals=segments * padded * length * length,
            bytes_accessed=_bytes(zp, wt, bias2, xp) + _bytes(xp),
        ),
    )(zp, wt.astype(x.dtype), bias2, xp)
    return y[..., :sequences], (z, wt, bias, x)


def _backward(interpret, residuals, dy):
    z, wt, bias, x = residuals
    length, segments, seg_channels, sequences = x.shape
    reduced = z.shape[1] // length
    block = _sequence_block(sequences)
    padded = -(-sequences // block) * block
    zp, xp = _pad_sequences(z, padded), _pad_sequences(x, padded)
    dyp = _pad_sequences(dy.astype(x.dtype), padded)
    z_spec, wt_spec, w_spec, bias_spec, token_spec = _specs(
        length, segments, reduced, seg_channels, block
    )
    per_segment = lambda shape: pl.BlockSpec((pl.squeezed, *shape), lambda s, n: (s, 0, 0))  # noqa: E731
    wt_c = wt.astype(x.dtype)
    bias2 = bias.reshape(-1, 1).astype(x.dtype)
    dwt_shape = (segments, length * length, length * reduced)
    flops = 2 * segments * padded * length * length * (3 * length * reduced + 3 * seg_channels)
    dx, dz, dwt, dbias = _call(
        functools.partial(_backward_kernel, length=length),
        interpret=interpret,
        out_shape=(
            jax.ShapeDtypeStruct(xp.shape, x.dtype),
            jax.ShapeDtypeStruct(zp.shape, z.dtype),
            jax.ShapeDtypeStruct(dwt_shape, jnp.float32),
            jax.ShapeDtypeStruct((segments, length * length, 1), jnp.float32),
        ),
        in_specs=[z_spec, wt_spec, w_spec, bias_spec, token_spec, token_spec],
        out_specs=(
            token_spec,
            z_spec,
            per_segment(dwt_shape[1:]),
            per_segment((length * length, 1)),
        ),
        grid=(segments, padded // block),
        semantics=("parallel", "arbitrary"),
        cost=pl.CostEstimate(
            flops=flops,
            transcendentals=segments * padded * length * length,
            bytes_accessed=2 * _bytes(zp, xp, dyp)
            + _bytes(wt_c, wt_c, bias2)
            + 4 * segments * (length * length) * (length * reduced + 1),
        ),
    )(zp, wt_c, wt_c.T, bias2, xp, dyp)
    dwt = jnp.sum(dwt, axis=0).astype(wt.dtype)
    dbias = jnp.sum(dbias, axis=0).reshape(bias.shape).astype(bias.dtype)
    return dz[..., :sequences], dwt, dbias, dx[..., :sequences].astype(x.dtype)


def _forward_rule(z, wt, bias, x, interpret):
    return _forward(z, wt, bias, x, interpret)


fused_mixing.defvjp(_forward_rule, _backward)


def mix_on_context_mesh(z, wt, bias, x):
    """``fused_mixing``, split over the sequences across every device of the context mesh
    (``jax.set_mesh``; the library's train and eval steps set it) where there is one.

    Mosaic kernels are not partitioned by XLA: on several TPU devices the kernel must run in a
    ``shard_map``. The sequences (the batch and the other grid axis) are independent, so each
    device mixes its own; generate's gradients are summed over the devices by ``shard_map``'s
    transpose. Without a context mesh of several devices (or when they do not divide the
    sequences) the kernel is called as it is: right on one device, and on a CPU or GPU, where the
    interpreter's plain operations are partitioned like any others.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or x.shape[-1] % mesh.size:
        return fused_mixing(z, wt, bias, x)
    axes = tuple(mesh.axis_names)
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(
        fused_mixing,
        mesh=mesh,
        in_specs=(spec(None, None, axes), spec(), spec(), spec(None, None, None, axes)),
        out_specs=spec(None, None, None, axes),
        check_vma=False,  # pallas_call's outputs carry no varying-axes annotation
    )(z, wt, bias, x)


def reference_probabilities(z, wt, bias, length: int):
    """The matrices ``fused_mixing`` mixes with, (S, L_in, L_out, N) in ``z``'s dtype, in plain
    jax.numpy (for the sown intermediates and the tests)."""
    logits = jnp.einsum("qk,skn->sqn", wt.astype(z.dtype), z) + bias[:, None].astype(z.dtype)
    logits = logits.reshape(z.shape[0], length, length, -1).astype(jnp.float32)
    return jax.nn.softmax(logits, axis=1).astype(z.dtype)


def reference_mixing(z, wt, bias, x):
    """``fused_mixing`` in plain jax.numpy, for the tests: the same rounding, XLA's gradients."""
    probs = reference_probabilities(z.astype(x.dtype), wt, bias, x.shape[0])
    products = jnp.moveaxis(probs, 0, 2)[:, :, :, None, :] * x[:, None]
    return jnp.sum(products, axis=0, dtype=jnp.float32).astype(x.dtype)
