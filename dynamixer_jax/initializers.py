"""Parameter initialisers that reproduce the authors' PyTorch initialisation.

The authors initialise every ``nn.Linear`` weight with timm's
``trunc_normal_(std=0.02)`` (whose bounds are *absolute*, -2 and 2, i.e. about
100 standard deviations: effectively a plain normal), every bias with zeros,
LayerNorm with ones and zeros, and leave ``nn.Conv2d`` at PyTorch's default
(kaiming-uniform with ``a = sqrt(5)``, which is uniform in
``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` for the kernel and the bias alike).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LINEAR_STD = 0.02


def timm_trunc_normal(std: float = LINEAR_STD, lower: float = -2.0, upper: float = 2.0):
    """Normal(0, std) truncated to the absolute interval [lower, upper], like timm's trunc_normal_."""

    def init(key, shape, dtype=jnp.float32):
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        unit = jax.random.truncated_normal(key, lower / std, upper / std, shape, jnp.float32)
        return (unit * std).astype(dtype)

    return init


def torch_conv_kernel_init():
    """PyTorch's default Conv2d weight init: uniform(+-1/sqrt(fan_in)), fan_in = kh*kw*in (HWIO kernel)."""
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_conv_bias_init(fan_in: int):
    """PyTorch's default Conv2d bias init: uniform(+-1/sqrt(fan_in)) with the kernel's fan_in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
