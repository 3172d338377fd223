"""RandAugment in TensorFlow, following the semantics of timm's ``rand_augment_transform``.

The policy: ``num_layers`` ops drawn uniformly from timm's op set, each applied with a
probability at a sampled magnitude, through timm's magnitude -> argument rules, to the
operations of ``image_ops.py``. Stateless: all randomness comes from an explicit ``seed`` (a
shape-[2] int32/int64 tensor) through ``tf.random.stateless_*``, so the same seed gives the same
output inside ``tf.data.Dataset.map``. Settings come from a timm string parsed by
``rand_augment_config.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from dynamixer_jax.data import image_ops as ops
from dynamixer_jax.data.image_ops import IMAGENET_FILL
from dynamixer_jax.data.rand_augment_config import MAX_LEVEL, RandAugmentConfig, parse_rand_augment

__all__ = ["apply_op", "rand_augment", "parse_rand_augment", "RandAugmentConfig"]


# ----------------------------------------------------------------- magnitude -> argument rules


def _enhance_arg(magnitude, sign):
    """timm ``_enhance_level_to_arg``: factor in [0.1, 1.9], increasing with magnitude."""
    del sign
    return magnitude / MAX_LEVEL * 1.8 + 0.1


def _enhance_increasing_arg(magnitude, sign):
    """timm ``_enhance_increasing_level_to_arg``: 1 +/- 0.9 m/10, at least 0.1."""
    return tf.maximum(0.1, 1.0 + sign * magnitude * 0.9 / MAX_LEVEL)


def _truncate(value):
    """Python ``int()`` of a non-negative float tensor."""
    return tf.cast(tf.floor(value), tf.int32)


def _no_fill(operation: Callable) -> Callable:
    """An op without a fill colour, called as ``(image, argument, fill)``."""
    return lambda image, argument, fill: operation(image, argument)


def _no_argument(operation: Callable) -> Callable:
    """An op without an argument or fill colour, called as ``(image, argument, fill)``."""
    return lambda image, argument, fill: operation(image)


# name -> (operation taking (image, argument, fill), argument from (magnitude, sign) or None).
_OPS: dict[str, tuple[Callable, Callable | None]] = {
    "AutoContrast": (_no_argument(ops.auto_contrast), None),
    "Equalize": (_no_argument(ops.equalize), None),
    "Invert": (_no_argument(ops.invert), None),
    "Rotate": (ops.rotate, lambda m, sign: sign * m * 30.0 / MAX_LEVEL),
    "Posterize": (_no_fill(ops.posterize), lambda m, sign: _truncate(m * 4.0 / MAX_LEVEL)),
    "PosterizeIncreasing": (
        _no_fill(ops.posterize),
        lambda m, sign: 4 - _truncate(m * 4.0 / MAX_LEVEL),
    ),
    "Solarize": (
        _no_fill(ops.solarize),
        lambda m, sign: tf.minimum(256, _truncate(m * 256.0 / MAX_LEVEL)),
    ),
    "SolarizeIncreasing": (
        _no_fill(ops.solarize),
        lambda m, sign: 256 - tf.minimum(256, _truncate(m * 256.0 / MAX_LEVEL)),
    ),
    "SolarizeAdd": (_no_fill(ops.solarize_add), lambda m, sign: _truncate(m * 110.0 / MAX_LEVEL)),
    "Color": (_no_fill(ops.color), _enhance_arg),
    "ColorIncreasing": (_no_fill(ops.color), _enhance_increasing_arg),
    "Contrast": (_no_fill(ops.contrast), _enhance_arg),
    "ContrastIncreasing": (_no_fill(ops.contrast), _enhance_increasing_arg),
    "Brightness": (_no_fill(ops.brightness), _enhance_arg),
    "BrightnessIncreasing": (_no_fill(ops.brightness), _enhance_increasing_arg),
    "Sharpness": (_no_fill(ops.sharpness), _enhance_arg),
    "SharpnessIncreasing": (_no_fill(ops.sharpness), _enhance_increasing_arg),
    "ShearX": (ops.shear_x, lambda m, sign: sign * m * 0.3 / MAX_LEVEL),
    "ShearY": (ops.shear_y, lambda m, sign: sign * m * 0.3 / MAX_LEVEL),
    "TranslateXRel": (ops.translate_x_rel, lambda m, sign: sign * m * 0.45 / MAX_LEVEL),
    "TranslateYRel": (ops.translate_y_rel, lambda m, sign: sign * m * 0.45 / MAX_LEVEL),
}


def apply_op(
    image: tf.Tensor, name: str, magnitude, sign=1.0, fill: Sequence[int] = IMAGENET_FILL
) -> tf.Tensor:
    """Apply the RandAugment op ``name`` at ``magnitude`` (0..10); ``sign`` (+/-1) picks the
    direction for ops that timm randomly negates."""
    operation, level_to_arg = _OPS[name]
    magnitude = tf.cast(magnitude, tf.float32)
    sign = tf.cast(sign, tf.float32)
    argument = None if level_to_arg is None else level_to_arg(magnitude, sign)
    return operation(image, argument, fill)


def _sample_magnitude(config: RandAugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """timm ``AugmentOp`` magnitude: M, M + N(0, std), or U(0, M); clipped to
    [0, magnitude_max]."""
    magnitude = tf.constant(config.magnitude, tf.float32)
    if config.magnitude_std == math.inf:
        magnitude = tf.random.stateless_uniform([], seed, 0.0, config.magnitude)
    elif config.magnitude_std > 0:
        magnitude += config.magnitude_std * tf.random.stateless_normal([], seed)
    return tf.clip_by_value(magnitude, 0.0, config.magnitude_max)


def _random_layer(
    image: tf.Tensor, seed: tf.Tensor, config: RandAugmentConfig, fill: Sequence[int]
) -> tf.Tensor:
    """Pick one op uniformly and apply it with probability ``config.prob``."""
    op_seed, prob_seed, magnitude_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    names = config.op_names
    op_index = tf.random.stateless_uniform([], op_seed, 0, len(names), dtype=tf.int32)
    applied = tf.random.stateless_uniform([], prob_seed) < config.prob
    magnitude = _sample_magnitude(config, magnitude_seed)
    # timm negates when random() > 0.5.
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) > 0.5, -1.0, 1.0)
    branches = [
        (lambda name=name: apply_op(image, name, magnitude, sign, fill)) for name in names
    ] + [lambda: image]
    output = tf.switch_case(tf.where(applied, op_index, len(names)), branches)
    output.set_shape(image.shape)
    return output


def rand_augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    config: str | RandAugmentConfig,
    fill: Sequence[int] = IMAGENET_FILL,
) -> tf.Tensor:
    """Apply RandAugment to a uint8 (H, W, 3) image, reproducibly from ``seed``.

    ``config`` is a timm string (e.g. ``'rand-m9-mstd0.5-inc1'``) or a ``RandAugmentConfig``.
    ``config.num_layers`` ops are drawn uniformly with replacement; each is applied with
    probability ``config.prob`` at a freshly sampled magnitude. ``fill`` is the colour of
    pixels that geometric ops uncover (timm uses the dataset mean colour).
    """
    if isinstance(config, str):
        config = parse_rand_augment(config)
    image = tf.convert_to_tensor(image, tf.uint8)
    if config.num_layers == 0:
        return image
    layer_seeds = tf.random.experimental.stateless_split(seed, num=config.num_layers)
    for layer in range(config.num_layers):
        image = _random_layer(image, layer_seeds[layer], config, fill)
    return image
