"""The per-image training augmentation in TensorFlow, after decoding (the timm/DeiT recipe).

On the uint8 crop that ``decode.train_decode`` gives: horizontal flip -> RandAugment, or colour
jitter when RandAugment is off (:func:`train_augment`, the host's share in the input
pipeline). :func:`train_preprocess` is the whole recipe as one function, float32 out, with the
normalisation and random erasing that training runs on device instead
(``device_augment.py``). Every step reads its settings from a ``recipe.TrainAugment``.

All functions are pure and stateless: randomness comes only from an explicit ``seed``, a
shape-[2] int32/int64 tensor, through ``tf.random.stateless_*``, and everything runs in graph
mode inside ``tf.data.Dataset.map``. Images are (H, W, 3) tensors, not batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from dynamixer_jax.data.decode import recipe_seeds, split_seed, train_decode
from dynamixer_jax.data.device_augment import IMAGENET_MEAN, IMAGENET_STD, DeviceAugment
from dynamixer_jax.data.image_ops import brightness, color, contrast
from dynamixer_jax.data.rand_augment import rand_augment
from dynamixer_jax.data.recipe import TrainAugment


def random_horizontal_flip(
    image: tf.Tensor, seed: tf.Tensor, probability: float = 0.5
) -> tf.Tensor:
    """Mirror an (H, W, C) image left-right with the given probability."""
    image = tf.convert_to_tensor(image)
    flip = tf.random.stateless_uniform([], seed) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float = 0.4) -> tf.Tensor:
    """Jitter brightness, contrast and saturation of a uint8 image (torchvision ColorJitter on
    PIL).

    Each factor is uniform in [max(0, 1 - strength), 1 + strength] and the three adjustments are
    applied in a random order, each as the PIL ``ImageEnhance`` operation torchvision uses.
    Used by the training recipe only when RandAugment is off.
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    order_seed, factor_seed = split_seed(seed, 2)
    factors = tf.random.stateless_uniform(
        [3], factor_seed, max(0.0, 1.0 - strength), 1.0 + strength
    )
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    adjustments = (brightness, contrast, color)
    for step in range(3):
        which = order[step]
        image = tf.switch_case(
            which,
            [
                (
                    lambda adjust=adjust, image=image, which=which: adjust(
                        image, tf.gather(factors, which)
                    )
                )
                for adjust in adjustments
            ],
        )
    return image


def normalize(
    image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tf.Tensor:
    """Convert a uint8 image to float32 ``(image / 255 - mean) / std``.

    ``mean`` and ``std`` are per-channel values on the 0-1 scale, as timm and torchvision give
    them.
    """
    mean = tf.constant(mean, tf.float32) * 255.0
    std = tf.constant(std, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def random_erasing(image: tf.Tensor, seed: tf.Tensor, config: DeviceAugment) -> tf.Tensor:
    """Erase random rectangles of a normalised float (H, W, C) image (timm RandomErasing): the
    erasing of ``config`` (``erase_*``), as ``device_augment.random_erasing`` does it in JAX.

    With ``config.erase_prob``, a count uniform in [1, erase_count] of rectangles is erased;
    each gets up to 10 attempts drawing an area fraction uniform in ``erase_area`` / count and
    an aspect ratio log-uniform in ``erase_aspect``, and is placed uniformly if it fits
    strictly inside the image. Apply it after normalisation, where the noise matches the
    data's scale.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    (min_area, max_area), (min_aspect, max_aspect) = config.erase_area, config.erase_aspect
    mode, max_count = config.erase_mode, config.erase_count
    apply_seed, count_seed, rect_seed = split_seed(seed, 3)
    applied = tf.random.stateless_uniform([], apply_seed) < config.erase_prob

    def erase():
        shape = tf.shape(image)
        height, width, channels = shape[0], shape[1], shape[2]
        count = tf.random.stateless_uniform([], count_seed, 1, max_count + 1, dtype=tf.int32)
        area = tf.cast(height * width, tf.float32) / tf.cast(count, tf.float32)
        output = image
        for index in range(max_count):
            area_seed, aspect_seed, top_seed, left_seed, value_seed = split_seed(
                tf.random.experimental.stateless_fold_in(rect_seed, index), 5
            )
            target_area = area * tf.random.stateless_uniform([10], area_seed, min_area, max_area)
            aspect = tf.exp(
                tf.random.stateless_uniform(
                    [10], aspect_seed, math.log(min_aspect), math.log(max_aspect)
                )
            )
            rect_h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
            rect_w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
            fits = (rect_w < width) & (rect_h < height)
            first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
            # An unused or unfit rectangle gets size 0.
            used = (index < count) & tf.reduce_any(fits)
            rect_h = tf.where(used, rect_h[first], 0)
            rect_w = tf.where(used, rect_w[first], 0)
            top = tf.random.stateless_uniform([], top_seed, 0, height - rect_h + 1, dtype=tf.int32)
            left = tf.random.stateless_uniform([], left_seed, 0, width - rect_w + 1, dtype=tf.int32)
            if mode == "pixel":
                values = tf.random.stateless_normal([rect_h, rect_w, channels], value_seed)
            elif mode == "rand":
                values = tf.tile(
                    tf.random.stateless_normal([1, 1, channels], value_seed), [rect_h, rect_w, 1]
                )
            else:
                values = tf.zeros([rect_h, rect_w, channels])
            padding = [[top, height - top - rect_h], [left, width - left - rect_w], [0, 0]]
            inside = tf.pad(tf.ones([rect_h, rect_w, 1], tf.bool), padding[:2] + [[0, 0]])
            output = tf.where(inside, tf.pad(values, padding), output)
        return output

    output = tf.cond(applied, erase, lambda: image)
    output.set_shape(image.shape)
    return output


def train_augment(
    image: tf.Tensor, seed: tf.Tensor, recipe: TrainAugment = TrainAugment()
) -> tf.Tensor:
    """The host's rest of the recipe on a decoded crop: flip, then RandAugment (its fill colour
    is ``recipe.mean`` in 0..255) or colour jitter. uint8 in, uint8 out; never fails."""
    _, flip_seed, color_seed, _ = recipe_seeds(seed)
    if recipe.hflip:
        image = random_horizontal_flip(image, flip_seed, recipe.hflip)
    if recipe.rand_augment:
        fill = tuple(min(255, round(255 * value)) for value in recipe.mean)
        image = rand_augment(image, color_seed, recipe.rand_augment, fill)
    elif recipe.color_jitter:
        image = color_jitter(image, color_seed, recipe.color_jitter)
    return image


def train_preprocess(
    image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224, recipe: TrainAugment = TrainAugment()
) -> tf.Tensor:
    """The whole training recipe on one encoded image: float32 (size, size, 3), normalised.

    ``decode.train_decode``, :func:`train_augment`, :func:`normalize` and
    :func:`random_erasing` in a row; the input pipeline stops after ``train_augment`` and the
    train step does the last two on device, with the same settings but not the same random
    stream (``device_augment.py``).
    """
    image = train_decode(image_bytes, seed, size, recipe)
    image = train_augment(image, seed, recipe)
    image = normalize(image, recipe.mean, recipe.std)
    if recipe.random_erase_prob:
        image = random_erasing(image, recipe_seeds(seed)[3], recipe.on_device())
    return image
