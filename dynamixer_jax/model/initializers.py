"""How DynaMixer's parameters are initialised: the authors' PyTorch rules, and a fast way to draw them.

The rules: every ``nn.Linear`` weight of the authors' model starts from timm's
``trunc_normal_(std=0.02)`` (whose bounds are *absolute*, -2 and 2, i.e. about 100 standard
deviations: effectively a plain normal), every bias from zeros, LayerNorm from ones and zeros;
``nn.Conv2d`` keeps PyTorch's default (kaiming-uniform with ``a = sqrt(5)``, i.e. uniform in
``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` for the kernel and the bias alike). The modules in
``layers.py`` and ``network.py`` use the initialisers defined here.

Why a fast path: ``jax.jit(model.init)`` draws every parameter with its own random-number call,
and XLA compiles each of those ~300 calls separately; on a 2-core CPU that is ~30 s for
DynaMixer-S. ``variants.init_variables`` draws them in two calls (one truncated normal for all Linear
weights, one uniform for all convolutions), cuts them into leaves and scales them, so compiling
takes about a second. ``initializer_kind`` mirrors the modules' initialisers leaf by leaf;
``tests/test_fast_init.py`` checks that both agree.
"""

from __future__ import annotations

import math
from typing import Any

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


def initializer_kind(
    path: tuple[str, ...], shape: tuple[int, ...], siblings: dict[str, Any]
) -> tuple[str, float]:
    """(kind, scale) for one parameter: ('normal', std), ('uniform', bound), ('ones', 1) or ('zeros', 0)."""
    name = path[-1]
    kernel = siblings.get("kernel")
    if name == "scale":
        return ("ones", 1.0)
    if name == "bias" and "scale" in siblings:
        return ("zeros", 0.0)
    if name == "kernel" and len(shape) == 2:
        return ("normal", LINEAR_STD)
    if name == "bias" and kernel is not None and len(kernel.shape) == 2:
        return ("zeros", 0.0)
    conv_kernel_shape = (
        shape if name == "kernel" else (kernel.shape if kernel is not None else None)
    )
    if name in ("kernel", "bias") and conv_kernel_shape is not None and len(conv_kernel_shape) == 4:
        kh, kw, fan_in_channels, _ = conv_kernel_shape
        return ("uniform", 1.0 / math.sqrt(kh * kw * fan_in_channels))
    raise ValueError(f"no initialisation rule for parameter {'/'.join(path)} of shape {shape}")
