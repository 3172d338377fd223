"""The building blocks of DynaMixer (SPEC sections 1-3), as Flax Linen modules.

Layout is channels-last throughout: a token grid is (B, H, W, C). Module and
parameter names follow the authors' PyTorch code (``mix_h``, ``compress``,
``reweight.fc1`` ...) so that checkpoint conversion is a renaming plus
transposes, nothing more.

Precision: matmuls run in ``dtype`` (e.g. bfloat16) with parameters stored in
``param_dtype``; both softmaxes and the LayerNorm statistics are computed in
float32 whatever ``dtype`` is.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamixer_jax.initializers import timm_trunc_normal

Dtype = Any

LAYER_NORM_EPSILON = 1e-5


def dense(features: int, name: Optional[str], dtype: Optional[Dtype], param_dtype: Dtype, use_bias: bool = True) -> nn.Dense:
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


def _softmax_float32(logits: jax.Array, axis: int, dtype: Optional[Dtype]) -> jax.Array:
    """Softmax computed in float32, returned in the computation dtype."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=axis)
    return probs.astype(dtype or logits.dtype)


def layer_norm(dtype: Optional[Dtype], param_dtype: Dtype, name: Optional[str] = None) -> nn.LayerNorm:
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
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = dense(self.hidden_features, "fc1", self.dtype, self.param_dtype)(x)
        x = nn.gelu(x, approximate=False)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        x = dense(self.out_features, "fc2", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.drop_rate, deterministic=not train)(x)


class DynaMixerOp(nn.Module):
    """Dynamic token mixing along the second-to-last axis (SPEC section 1).

    Input (..., L, C) with L == ``seq_len``; output the same shape. For each of
    ``num_segments`` channel segments it generates an (L, L) mixing matrix from
    the tokens themselves (``compress`` then ``generate``), softmax-normalised
    over input tokens, mixes the segment's tokens with it and projects with
    ``out``. The matrices, shaped (..., S, L_in, L_out), are sown into the
    ``intermediates`` collection as ``mixing`` for inspection.
    """

    seq_len: int
    num_segments: int
    reduced_dim: int = 2
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        *batch, length, channels = x.shape
        segments, reduced = self.num_segments, self.reduced_dim
        if length != self.seq_len:
            raise ValueError(
                f"DynaMixerOp was built for sequences of {self.seq_len} tokens but got {length}; "
                "the token grid is fixed by the model's image_size."
            )
        if channels % segments:
            raise ValueError(f"channels ({channels}) must be divisible by the number of segments ({segments}).")

        z = dense(segments * reduced, "compress", self.dtype, self.param_dtype)(x)
        z = z.reshape(*batch, length, segments, reduced)
        # (..., L, S, r) -> (..., S, L, r) -> (..., S, L*r): token index major, reduced index minor.
        z = jnp.swapaxes(z, -3, -2).reshape(*batch, segments, length * reduced)
        logits = dense(length * length, "generate", self.dtype, self.param_dtype)(z)
        logits = logits.reshape(*batch, segments, length, length)
        mixing = _softmax_float32(logits, axis=-2, dtype=self.dtype)
        self.sow("intermediates", "mixing", mixing)

        x_seg = x.reshape(*batch, length, segments, channels // segments)
        y = jnp.einsum("...isd,...sij->...jsd", x_seg.astype(mixing.dtype), mixing)
        y = y.reshape(*batch, length, channels)
        return dense(channels, "out", self.dtype, self.param_dtype)(y)


class DynaMixerBlock(nn.Module):
    """The token mixer of one layer (SPEC section 2): row, column and channel branches, reweighted.

    Input and output (B, H, W, C). The per-channel branch weights, shaped
    (B, C, 3) for (column ``mix_h``, row ``mix_w``, channel ``mlp_c``), are sown
    into ``intermediates`` as ``branch_weights``.
    """

    height: int
    width: int
    num_segments: int
    reduced_dim: int = 2
    proj_drop_rate: float = 0.0
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        batch, height, width, channels = x.shape
        op = dict(num_segments=self.num_segments, reduced_dim=self.reduced_dim,
                  dtype=self.dtype, param_dtype=self.param_dtype)
        # Columns: mix along H for every (b, w).
        h = DynaMixerOp(self.height, name="mix_h", **op)(jnp.swapaxes(x, 1, 2))
        h = jnp.swapaxes(h, 1, 2)
        # Rows: mix along W for every (b, h).
        w = DynaMixerOp(self.width, name="mix_w", **op)(x)
        c = dense(channels, "mlp_c", self.dtype, self.param_dtype, use_bias=False)(x)

        pooled = jnp.mean((h + w + c).astype(jnp.float32), axis=(1, 2)).astype(h.dtype)
        logits = Mlp(channels // 4, 3 * channels, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="reweight")(pooled)
        # fc2 output index is channel * 3 + branch.
        weights = _softmax_float32(logits.reshape(batch, channels, 3), axis=-1, dtype=self.dtype)
        self.sow("intermediates", "branch_weights", weights)
        weights = weights[:, None, None, :, :]

        x = h * weights[..., 0] + w * weights[..., 1] + c * weights[..., 2]
        x = dense(channels, "proj", self.dtype, self.param_dtype)(x)
        return nn.Dropout(self.proj_drop_rate, deterministic=not train)(x)


class MixerLayer(nn.Module):
    """One residual layer (SPEC section 3): pre-norm DynaMixer block and pre-norm MLP, with stochastic depth."""

    height: int
    width: int
    num_segments: int
    reduced_dim: int = 2
    mlp_ratio: float = 3.0
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    skip_lam: float = 1.0
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = x.shape[-1]
        # Stochastic depth: one keep/drop decision per sample, kept samples scaled by 1/(1-p).
        drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=tuple(range(1, x.ndim)), deterministic=not train)

        y = layer_norm(self.dtype, self.param_dtype, name="norm1")(x)
        y = DynaMixerBlock(self.height, self.width, self.num_segments, self.reduced_dim,
                           proj_drop_rate=self.drop_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="attn")(y, train=train)
        x = x + drop_path(y) / self.skip_lam

        y = layer_norm(self.dtype, self.param_dtype, name="norm2")(x)
        y = Mlp(int(channels * self.mlp_ratio), channels, drop_rate=self.drop_rate, dtype=self.dtype,
                param_dtype=self.param_dtype, name="mlp")(y, train=train)
        return x + drop_path(y) / self.skip_lam
