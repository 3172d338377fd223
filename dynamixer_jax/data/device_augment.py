"""Normalisation and random erasing of a uint8 batch, in pure JAX, inside the jitted train step.

The tf.data pipeline ships uint8 images (a quarter of the bytes of float32, and no per-pixel
float work on the host); the step turns them into normalised floats here and erases random
rectangles as timm's ``RandomErasing`` does, per image, before Mixup/CutMix. Every random draw
comes from the key the step passes in, so a batch's augmentation is a pure function of that
key, shapes are static and a batch sharded across devices stays sharded.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dynamixer_jax.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceAugment",
    "normalize",
    "random_erasing",
    "augment_batch",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet channel means on the 0-1 scale (as timm and torchvision give them)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet channel standard deviations on the 0-1 scale."""

_ERASE_MODES = ("pixel", "rand", "const")
_ATTEMPTS = 10  # timm's attempts per rectangle


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
    """What the train step does to a batch before mixing: normalise, then random erasing.

    ``mean``/``std``: per-channel values on the 0-1 scale. Random erasing (timm
    ``RandomErasing``): with probability ``erase_prob`` an image gets a count uniform in
    [1, ``erase_count``] of rectangles; ``erase_mode`` 'pixel' fills them with per-pixel
    standard normal noise (in the normalised space), 'rand' with one normal colour per
    rectangle, 'const' with zeros. ``erase_prob`` 0 turns erasing off. Frozen, hence hashable:
    it decides the traced program. A bad value raises ``ConfigError``.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    erase_prob: float = 0.0
    erase_mode: str = "pixel"
    erase_count: int = 1
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    erase_aspect: tuple[float, float] = (0.3, 1 / 0.3)

    def __post_init__(self):
        # The training recipe (recipe.TrainAugment) leaves these checks to this class, so each
        # message also names the recipe's config field.
        if not (_number(self.erase_prob) and 0.0 <= self.erase_prob <= 1.0):
            _reject("erase_prob", "random_erase_prob", "a probability in [0, 1]", self.erase_prob)
        if self.erase_mode not in _ERASE_MODES:
            _reject("erase_mode", "random_erase_mode", " | ".join(_ERASE_MODES), self.erase_mode)
        if not (isinstance(self.erase_count, int) and self.erase_count >= 1):
            _reject("erase_count", "random_erase_count", "an integer >= 1", self.erase_count)
        if not (len(self.std) == 3 and all(_number(value) and value > 0 for value in self.std)):
            raise ConfigError(f"std must be 3 positive numbers, not {self.std}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reject(field: str, config_field: str, allowed: str, value) -> None:
    raise ConfigError(
        f"random erasing {field} (augment.{config_field}) must be {allowed}, not {value!r}"
    )


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """uint8 images (..., 3) -> float32 ``(image / 255 - mean) / std``.

    A float input is taken as already normalised and only cast to float32 (so tests and users
    can feed normalised floats to the steps).
    """
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    scale = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
    return (images.astype(jnp.float32) - mean) * scale


def _rectangle(
    key: jax.Array, height: int, width: int, area: jax.Array, used: jax.Array, config: DeviceAugment
) -> jax.Array:
    """One timm erasing rectangle as a boolean (H, W) mask; all False if ``used`` is False or
    none of the attempts fits. ``area``: the image area divided by the rectangle count."""
    area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
    target = area * jax.random.uniform(
        area_key, (_ATTEMPTS,), minval=config.erase_area[0], maxval=config.erase_area[1]
    )
    log_low, log_high = math.log(config.erase_aspect[0]), math.log(config.erase_aspect[1])
    aspect = jnp.exp(jax.random.uniform(aspect_key, (_ATTEMPTS,), minval=log_low, maxval=log_high))
    # jnp.round rounds half to even, like Python's round() in timm.
    rect_h = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    rect_w = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    fits = (rect_w < width) & (rect_h < height)
    first = jnp.argmax(fits)
    used = used & jnp.any(fits)
    rect_h = jnp.where(used, rect_h[first], 0)
    rect_w = jnp.where(used, rect_w[first], 0)
    top = jax.random.randint(top_key, (), 0, height - rect_h + 1)
    left = jax.random.randint(left_key, (), 0, width - rect_w + 1)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= top) & (rows < top + rect_h) & (cols >= left) & (cols < left + rect_w)


def random_erasing(key: jax.Array, image: jax.Array, config: DeviceAugment) -> jax.Array:
    """timm ``RandomErasing`` of one normalised float (H, W, C) image, from ``key``.

    Each rectangle gets up to 10 attempts drawing an area fraction uniform in
    ``config.erase_area`` (divided by the count) and an aspect ratio log-uniform in
    ``config.erase_aspect``; the first that fits strictly inside the image is placed uniformly.
    Pixels outside the rectangles are returned unchanged.
    """
    height, width, channels = image.shape
    apply_key, count_key, rect_key = jax.random.split(key, 3)
    applied = jax.random.uniform(apply_key) < config.erase_prob
    count = jax.random.randint(count_key, (), 1, config.erase_count + 1)
    area = (height * width) / count.astype(jnp.float32)
    output = image
    for index in range(config.erase_count):
        box_key, value_key = jax.random.split(jax.random.fold_in(rect_key, index))
        inside = _rectangle(box_key, height, width, area, applied & (index < count), config)
        if config.erase_mode == "pixel":
            values = jax.random.normal(value_key, image.shape, jnp.float32)
        elif config.erase_mode == "rand":
            values = jax.random.normal(value_key, (1, 1, channels), jnp.float32)
        else:
            values = jnp.zeros((1, 1, channels), jnp.float32)
        output = jnp.where(inside[..., None], values.astype(image.dtype), output)
    return output


def augment_batch(key: jax.Array, images: jax.Array, config: DeviceAugment) -> jax.Array:
    """Normalise a (B, H, W, C) batch, then erase each image with its own key from ``key``.

    float32 out. Image ``i`` uses ``jax.random.split(key, B)[i]``, so the result depends only
    on ``key`` and the batch, not on how the batch is split over devices.
    """
    images = normalize(images, config.mean, config.std)
    if not config.erase_prob:
        return images
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(random_erasing, in_axes=(0, 0, None))(keys, images, config)
