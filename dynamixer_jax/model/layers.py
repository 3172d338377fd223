"""The building blocks of DynaMixer, as Flax Linen modules.

Layout is channels-last throughout: a token grid is (B, H, W, C). Module and
parameter names follow the authors' PyTorch code (``mix_h``, ``compress``,
``reweight.fc1`` ...) so that checkpoint conversion is a renaming plus
transposes, nothing more.

Precision: matmuls run in ``dtype`` (e.g. bfloat16) with parameters stored in
``param_dtype``; both softmaxes and the LayerNorm statistics are computed in
float32 whatever ``dtype`` is.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from dynamixer_jax.model.initializers import timm_trunc_normal

Dtype = Any

LAYER_NORM_EPSILON = 1e-5


def dense(
    features: int,
    name: str | None,
    dtype: Dtype | None,
    param_dtype: Dtype,
    use_bias: bool = True,
) -> nn.Dense:
    """A Linear layer initialised as the authors' (trunc-normal std 0.02 weight, zero bias)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=timm_trunc_normal(),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _softmax_float32(logits: jax.Array, axis: int, dtype: Dtype | None) -> jax.Array:
    """Softmax computed in float32, returned in the computation dtype."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=axis)
    return probs.astype(dtype or logits.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def softmax_saving_probabilities(logits: jax.Array, axis: int, dtype: Dtype) -> jax.Array:
    """Softmax computed in float32, returned in ``dtype``; its gradient is computed from the
    probabilities in ``dtype`` (the only residual), in float32.

    The same values as ``_softmax_float32``. What differs is the backward pass: JAX's own rule keeps
    the float32 probabilities and builds the logits' cotangent in float32 before casting it, three
    float32 arrays of the matrices' size; here the cotangent is one fused pass over the
    ``dtype`` probabilities and the incoming cotangent, written in the logits' dtype. In float32
    the gradient is the same as JAX's, up to rounding; in bfloat16 it uses probabilities rounded
    to bfloat16 (relative error 2**-9, the rounding the forward output already has).
    """
    return _softmax_float32(logits, axis, dtype)


def _softmax_forward(logits, axis, dtype):
    probs = _softmax_float32(logits, axis, dtype)
    return probs, (probs, jnp.zeros((), logits.dtype))


def _softmax_backward(axis, dtype, residuals, cotangent):
    probs, logits_zero = residuals
    probs, cotangent = probs.astype(jnp.float32), cotangent.astype(jnp.float32)
    inner = jnp.sum(probs * cotangent, axis=axis, keepdims=True)
    return ((probs * (cotangent - inner)).astype(logits_zero.dtype),)


softmax_saving_probabilities.defvjp(_softmax_forward, _softmax_backward)


def layer_norm(dtype: Dtype | None, param_dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over channels with PyTorch's epsilon; statistics in float32."""
    return nn.LayerNorm(
        epsilon=LAYER_NORM_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        force_float32_reductions=True,
        name=name,
    )


class Mlp(nn.Module):
    """Two Linear layers with exact (erf) GELU between them: ``fc1`` then ``fc2``."""

    hidden_features: int
    out_features: int
    drop_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = dense(self.hidden_features, "fc1", self.dtype, self.param_dtype)(x)
        x = nn.gelu(x, approximate=False)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        x = dense(self.out_features, "fc2", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.drop_rate, deterministic=not train)(x)


class LinearParams(nn.Module):
    """The (in, out) kernel and bias of a Linear layer, created here but applied by the caller.

    Lets several Linear layers that read the same input share one matmul, and
    lets a layer use its kernel with permuted columns, while the parameters
    keep the authors' names and layout. ``features=None`` means square.
    """

    features: int | None = None
    use_bias: bool = True
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int):
        features = self.features or in_features
        kernel = self.param(
            "kernel", timm_trunc_normal(), (in_features, features), self.param_dtype
        )
        bias = (
            self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
            if self.use_bias
            else None
        )
        return kernel, bias


def linear(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Dtype | None
) -> jax.Array:
    """x @ kernel + bias over the last axis, computed in ``dtype`` (as flax.linen.Dense does)."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    y = jnp.dot(x, kernel)
    return y if bias is None else y + bias


MIXINGS = ("auto", "vector", "dot", "pallas")
_AXIS_LETTERS = "abcefghk"


def resolve_mixing(mixing: str) -> str:
    """How the tokens are mixed. ``"vector"``: every other grid position on the minor axis and
    the mixing as a broadcast multiply with a float32 sum over input tokens, fused by XLA into
    one pass on the vector units; on a TPU, whose arrays are tiled (8, 128) over the two minor
    axes, nothing 32 wide is padded to 128 lanes (docs/memory_traffic.md: 0.58x the bytes and
    0.64x the temporary memory of the S training step). ``"dot"``: the tokens on the minor axes
    and a batched matrix product, the layout measured on the H100 and on CPUs (XLA:CPU does not
    fuse the broadcast form and would materialise an L times larger product). ``"pallas"``: the
    ``"vector"`` layout with logits, softmax and mixing in one Pallas kernel
    (``model/pallas_mixing.py``), written for TPUs: by the TPU compiler 0.82x the bytes of
    ``"vector"`` per S training step, not yet run on a TPU; elsewhere Pallas' interpreter runs
    it (for tests: slow). ``"auto"``: ``"vector"`` where the default backend is a TPU, else
    ``"dot"``. All give the same values up to float rounding."""
    if mixing not in MIXINGS:
        raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, not {mixing!r}.")
    if mixing == "auto":
        return "vector" if jax.default_backend() == "tpu" else "dot"
    return mixing


def _tokens_channels_sequences(x: jax.Array, token_axis: int) -> jax.Array:
    """(..., L, ..., C) -> (L, C, N): the token axis major, channels, then all other positions
    (N, in their order) minor.

    The other positions are merged before the transpose wherever they are already adjacent (a
    free reshape), so on a TPU, where the two minor axes are tiled, the move is one copy of x into
    a layout whose minor axis is the long N axis. When they are not adjacent (the token axis sits
    between them), the token axis is first moved next to the channels.
    """
    ndim = x.ndim
    length, channels = x.shape[token_axis], x.shape[-1]
    if token_axis != ndim - 2:
        x = jnp.moveaxis(x, token_axis, ndim - 2)
    # The barrier keeps XLA from moving the (free) reshape after the transpose, where it is not.
    x = jax.lax.optimization_barrier(x.reshape(-1, length, channels))
    return jnp.transpose(x, (1, 2, 0))


class DynaMixerOp(nn.Module):
    """Dynamic token mixing: ``compress``, ``generate``, softmax, mix, ``out``.

    Called directly it mixes along the second-to-last axis of (..., L, C),
    L == ``seq_len``. For each of ``num_segments`` channel segments it
    generates an (L, L) mixing matrix from the tokens themselves,
    softmax-normalised over input tokens, mixes the segment's tokens with it
    and projects with ``out``. The matrices, shaped (..., S, L_in, L_out), are
    sown into the ``intermediates`` collection as ``mixing``.

    ``DynaMixerBlock`` uses the two halves separately (``compress_params`` and
    ``mix``) so that it can compress for both directions in one matmul and mix
    along either axis of the (B, H, W, C) grid (``mix`` moves it into a lane-dense layout;
    ``mixing`` chooses how the tokens are combined: see ``resolve_mixing``).
    """

    seq_len: int
    num_segments: int
    reduced_dim: int = 2
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    mixing: str = "auto"

    def setup(self):
        segments, reduced, length = self.num_segments, self.reduced_dim, self.seq_len
        self.compress = LinearParams(segments * reduced, param_dtype=self.param_dtype)
        self.generate = LinearParams(length * length, param_dtype=self.param_dtype)
        self.out = LinearParams(param_dtype=self.param_dtype)

    def compress_params(self, channels: int):
        """(kernel, bias) of ``compress`` for inputs with ``channels`` channels."""
        return self.compress(channels)

    def mix(self, x: jax.Array, compressed: jax.Array, token_axis: int) -> jax.Array:
        """Mix the tokens of ``x`` (..., C) along ``token_axis`` given ``compressed`` = compress(x)
        (..., S*r), in the layout ``mixing`` chooses (see ``resolve_mixing``)."""
        shape = x.shape
        channels, length = shape[-1], shape[token_axis]
        segments = self.num_segments
        if length != self.seq_len:
            raise ValueError(
                f"DynaMixerOp was built for sequences of {self.seq_len} tokens but got {length}; "
                "the token grid is fixed by the model's image_size."
            )
        if channels % segments:
            raise ValueError(
                f"channels ({channels}) must be divisible by the number of segments ({segments})."
            )
        mixing = resolve_mixing(self.mixing)
        if mixing in ("vector", "pallas"):
            return self._mix_sequences_minor(x, compressed, token_axis, fused=mixing == "pallas")
        return self._mix_tokens_minor(x, compressed, token_axis)

    def _mix_tokens_minor(self, x: jax.Array, compressed: jax.Array, token_axis: int) -> jax.Array:
        """``"dot"``: matrices (others, S, L_out, L_in), a batched matrix product."""
        shape = x.shape
        channels, length = shape[-1], shape[token_axis]
        segments, reduced = self.num_segments, self.reduced_dim
        token_axis %= len(shape)
        others = [size for axis, size in enumerate(shape[:-1]) if axis != token_axis]

        # (..., L, ..., S*r) -> (others, L, S, r) -> (others, S, L*r): token index major, reduced index minor.
        z = jnp.moveaxis(compressed.reshape(*shape[:-1], segments, reduced), token_axis, -3)
        z = jnp.swapaxes(z, -3, -2).reshape(*others, segments, length * reduced)
        # generate's output index is (L_in major, L_out minor). Permuting its columns to (L_out, L_in)
        # puts the softmax over input tokens on the minor axis, where it is cheapest.
        kernel, bias = self.generate(length * reduced)
        kernel = jnp.swapaxes(kernel.reshape(-1, length, length), 1, 2).reshape(-1, length * length)
        bias = bias.reshape(length, length).T.reshape(-1)
        logits = linear(z, kernel, bias, self.dtype).reshape(*others, segments, length, length)
        mixing = _softmax_float32(logits, axis=-1, dtype=self.dtype)  # (others, S, L_out, L_in)
        self.sow("intermediates", "mixing", jnp.swapaxes(mixing, -1, -2))

        grid = _AXIS_LETTERS[: len(shape) - 1]
        x_spec = grid.replace(grid[token_axis], "i") + "sd"
        out_spec = grid.replace(grid[token_axis], "j") + "sd"
        mix_spec = grid.replace(grid[token_axis], "") + "sji"
        x_seg = x.reshape(*shape[:-1], segments, channels // segments).astype(mixing.dtype)
        y = jnp.einsum(f"{x_spec},{mix_spec}->{out_spec}", x_seg, mixing).reshape(shape)
        return linear(y, *self.out(channels), self.dtype)

    def _sow_matrices(self, mixing: jax.Array, others_shape) -> None:
        """Sow (S, L_in, L_out, N) matrices as (others, S, L_in, L_out)."""
        segments, length = mixing.shape[:2]
        sown = mixing.reshape(segments, length, length, *others_shape)
        self.sow("intermediates", "mixing", jnp.moveaxis(sown, (0, 1, 2), (-3, -2, -1)))

    def _mix_sequences_minor(
        self, x: jax.Array, compressed: jax.Array, token_axis: int, fused: bool = False
    ) -> jax.Array:
        """``"vector"``: the sequences being mixed (all positions along the other axes, N of
        them) on the minor axis for the whole mixing: logits and matrices (S, L_in, L_out, N),
        the segments (L, S, C/S, N); the softmax and the mixing reduce over major axes. The
        mixing is a broadcast multiply and a float32 sum over input tokens (an (L, L) matrix is
        far too small for a matrix unit), reading the matrices and the segments once."""
        shape = x.shape
        channels, length = shape[-1], shape[token_axis]
        segments, reduced = self.num_segments, self.reduced_dim
        ndim = len(shape)
        token_axis %= ndim
        others = [axis for axis in range(ndim - 1) if axis != token_axis]
        others_shape = [shape[axis] for axis in others]
        sequences = math.prod(others_shape)

        # Sequences (N) minor: (..., L, ..., S*r) -> (L, S*r, N) -> (L, r, S, N), whose first two
        # axes are generate's input index (token major, reduced minor).
        z = _tokens_channels_sequences(compressed, token_axis)
        kernel, bias = self.generate(length * reduced)
        z, kernel, bias = nn.dtypes.promote_dtype(z, kernel, bias, dtype=self.dtype)
        # (..., L, ..., C) -> (L, S, C/S, N).
        x_seg = _tokens_channels_sequences(x, token_axis).reshape(
            length, segments, channels // segments, sequences
        )
        if fused:
            # Logits, softmax and mixing in one kernel: (S, L*r, N) in, (L_out, S, C/S, N) out.
            from dynamixer_jax.model.pallas_mixing import (  # noqa: PLC0415 (Pallas: 0.1 s)
                mix_on_context_mesh,
                reference_probabilities,
            )

            z = jnp.moveaxis(z.reshape(length, segments, reduced, sequences), 1, 0)
            z = z.reshape(segments, length * reduced, sequences)
            x_seg = x_seg.astype(z.dtype)
            y = mix_on_context_mesh(z, kernel.T, bias, x_seg).reshape(length, channels, sequences)
            if self.is_mutable_collection("intermediates"):
                self._sow_matrices(reference_probabilities(z, kernel.T, bias, length), others_shape)
        else:
            z = jnp.swapaxes(z.reshape(length, segments, reduced, sequences), 1, 2)
            z = z.reshape(length * reduced, segments, sequences)
            # generate's output index is (L_in major, L_out minor): logits (S, L_in, L_out, N). A
            # product batched over segments, so that remat "minimal" recomputes the logits
            # instead of keeping them (model/remat.py, remat_policy).
            kernel = jnp.broadcast_to(kernel, (segments, *kernel.shape))
            logits = jnp.einsum("skq,ksn->sqn", kernel, z) + bias[:, None]
            logits = logits.reshape(segments, length, length, sequences)
            mixing = softmax_saving_probabilities(logits, 1, self.dtype)  # over input tokens
            if self.is_mutable_collection("intermediates"):
                self._sow_matrices(mixing, others_shape)
            x_seg = x_seg.astype(mixing.dtype)
            # Products in the computation dtype, summed in float32 (as a matrix unit accumulates).
            products = jnp.moveaxis(mixing, 0, 2)[:, :, :, None, :] * x_seg[:, None]
            y = jnp.sum(products, axis=0, dtype=jnp.float32).astype(mixing.dtype)
            y = y.reshape(length, channels, sequences)

        # out, then back into x's layout: (L, C, N) -> (N, L, C) -> (..., L, ..., C).
        kernel, bias = self.out(channels)
        y, kernel, bias = nn.dtypes.promote_dtype(y, kernel, bias, dtype=self.dtype)
        y = jnp.einsum("lmn,mo->nlo", y, kernel) + bias
        y = y.reshape(*others_shape, length, channels)
        return checkpoint_name(jnp.moveaxis(y, ndim - 2, token_axis), "mixed_tokens")

    def __call__(self, x: jax.Array) -> jax.Array:
        compressed = linear(x, *self.compress_params(x.shape[-1]), self.dtype)
        return self.mix(x, compressed, token_axis=x.ndim - 2)


class DynaMixerBlock(nn.Module):
    """The token mixer of one layer: column, row and channel branches, reweighted.

    Input and output (B, H, W, C). The per-channel branch weights, shaped
    (B, C, 3) for (column ``mix_h``, row ``mix_w``, channel ``mlp_c``), are sown
    into ``intermediates`` as ``branch_weights``.
    """

    height: int
    width: int
    num_segments: int
    reduced_dim: int = 2
    proj_drop_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    mixing: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        batch, height, width, channels = x.shape
        op = dict(
            num_segments=self.num_segments,
            reduced_dim=self.reduced_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            mixing=self.mixing,
        )
        mix_h = DynaMixerOp(self.height, name="mix_h", **op)
        mix_w = DynaMixerOp(self.width, name="mix_w", **op)
        # The three Linear layers that read x (both compressions and mlp_c) as one matmul.
        (kernel_h, bias_h), (kernel_w, bias_w) = (
            mix_h.compress_params(channels),
            mix_w.compress_params(channels),
        )
        kernel_c, _ = LinearParams(
            channels, use_bias=False, param_dtype=self.param_dtype, name="mlp_c"
        )(channels)
        kernel = jnp.concatenate([kernel_h, kernel_w, kernel_c], axis=1)
        bias = jnp.concatenate([bias_h, bias_w, jnp.zeros((channels,), bias_h.dtype)])
        z_h, z_w, c = jnp.split(
            linear(x, kernel, bias, self.dtype),
            [kernel_h.shape[1], kernel_h.shape[1] + kernel_w.shape[1]],
            axis=-1,
        )
        h = mix_h.mix(x, z_h, token_axis=1)  # columns: tokens along H
        w = mix_w.mix(x, z_w, token_axis=2)  # rows: tokens along W

        pooled = jnp.mean((h + w + c).astype(jnp.float32), axis=(1, 2)).astype(h.dtype)
        logits = Mlp(
            channels // 4,
            3 * channels,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="reweight",
        )(pooled)
        # fc2 output index is channel * 3 + branch.
        weights = _softmax_float32(logits.reshape(batch, channels, 3), axis=-1, dtype=self.dtype)
        self.sow("intermediates", "branch_weights", weights)
        weights = weights[:, None, None, :, :]

        x = h * weights[..., 0] + w * weights[..., 1] + c * weights[..., 2]
        x = dense(channels, "proj", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.proj_drop_rate, deterministic=not train)(x)


class MixerLayer(nn.Module):
    """One residual layer: pre-norm DynaMixer block and pre-norm MLP, with stochastic depth."""

    height: int
    width: int
    num_segments: int
    reduced_dim: int = 2
    mlp_ratio: float = 3.0
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    skip_lam: float = 1.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    mixing: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, drop_path_rate=None) -> jax.Array:
        """``drop_path_rate`` (a float or a traced scalar) replaces the field's rate: a scan over
        layers passes each layer's rate as data."""
        channels = x.shape[-1]
        rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate

        y = layer_norm(self.dtype, self.param_dtype, name="norm1")(x)
        y = DynaMixerBlock(
            self.height,
            self.width,
            self.num_segments,
            self.reduced_dim,
            proj_drop_rate=self.drop_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            mixing=self.mixing,
            name="attn",
        )(y, train=train)
        x = x + self._drop_path(y, rate, train) / self.skip_lam

        y = layer_norm(self.dtype, self.param_dtype, name="norm2")(x)
        y = Mlp(
            int(channels * self.mlp_ratio),
            channels,
            drop_rate=self.drop_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(y, train=train)
        return x + self._drop_path(y, rate, train) / self.skip_lam

    def _drop_path(self, y: jax.Array, rate, train: bool) -> jax.Array:
        """Stochastic depth: one keep/drop decision per sample, kept samples scaled by 1/(1-rate)."""
        if not train or (isinstance(rate, (int, float)) and rate == 0.0):
            return y
        keep = 1.0 - rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1)
        )
        return jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))
