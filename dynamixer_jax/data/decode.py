"""From encoded bytes to a fixed-size uint8 image, in TensorFlow: the random resized crop of
training and the centre crop of evaluation (the timm/DeiT recipe).

All functions are pure and stateless: randomness comes only from an explicit ``seed``, a
shape-[2] int32/int64 tensor, through ``tf.random.stateless_*``. The same seed gives the same
output, and everything runs in graph mode inside ``tf.data.Dataset.map``. Images are
(H, W, 3) tensors; JPEG (grey, RGB or CMYK), PNG, GIF and BMP bytes decode to RGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from dynamixer_jax.data import pil_resize
from dynamixer_jax.data.recipe import TrainAugment


def split_seed(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    """Split ``seed`` into ``count`` independent seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def recipe_seeds(seed: tf.Tensor) -> list[tf.Tensor]:
    """One image's training seed split into the streams of its recipe's steps: (crop, flip,
    colour, erase)."""
    return split_seed(seed, 4)


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3): grey is replicated, alpha dropped."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Round, clip to 0..255 and cast a float image to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def random_resized_crop_window(
    image_shape: tf.Tensor,
    seed: tf.Tensor,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Sample a crop window [top, left, height, width] (int32) for an image of shape (H, W, ...).

    timm ``RandomResizedCropAndInterpolation.get_params``: up to 10 attempts draw an area
    fraction uniformly from ``scale`` and an aspect ratio (width / height) log-uniformly from
    ``ratio``; the first attempt whose rounded size fits is placed uniformly at random. If none
    fits, the window is the centred largest crop whose aspect ratio is clamped to ``ratio``.
    """
    attempts = 10
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    area_seed, ratio_seed, top_seed, left_seed = split_seed(seed, 4)
    target_area = (
        height * width * tf.random.stateless_uniform([attempts], area_seed, scale[0], scale[1])
    )
    aspect = tf.exp(
        tf.random.stateless_uniform([attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1]))
    )
    # tf.round rounds half to even, like Python's round().
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (crop_w <= width) & (crop_h <= height) & (crop_w >= 1) & (crop_h >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    sampled_h = tf.cast(crop_h[first], tf.int32)
    sampled_w = tf.cast(crop_w[first], tf.int32)

    int_height, int_width = tf.cast(image_shape[0], tf.int32), tf.cast(image_shape[1], tf.int32)
    top = tf.random.stateless_uniform(
        [], top_seed, 0, tf.maximum(int_height - sampled_h + 1, 1), dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [], left_seed, 0, tf.maximum(int_width - sampled_w + 1, 1), dtype=tf.int32
    )
    sampled = tf.stack([top, left, sampled_h, sampled_w])

    min_ratio, max_ratio = min(ratio), max(ratio)
    in_ratio = width / height
    fallback_w = tf.where(in_ratio > max_ratio, tf.round(height * max_ratio), width)
    fallback_h = tf.where(in_ratio < min_ratio, tf.round(width / min_ratio), height)
    fallback_h, fallback_w = tf.cast(fallback_h, tf.int32), tf.cast(fallback_w, tf.int32)
    fallback = tf.stack(
        [(int_height - fallback_h) // 2, (int_width - fallback_w) // 2, fallback_h, fallback_w]
    )
    return tf.where(tf.reduce_any(fits), sampled, fallback)


def resize(image: tf.Tensor, size: int, interpolation: str, seed: tf.Tensor) -> tf.Tensor:
    """Resize to (size, size) with antialiasing (as PIL does) and return uint8.

    ``interpolation`` is 'random' (bilinear or bicubic, with equal probability, from ``seed``)
    or a ``tf.image.resize`` method ('bilinear', 'bicubic').
    """

    def resize_with(method):
        return _to_uint8(tf.image.resize(image, [size, size], method=method, antialias=True))

    if interpolation == "random":
        use_bicubic = tf.random.stateless_uniform([], seed) < 0.5
        output = tf.cond(
            use_bicubic, lambda: resize_with("bicubic"), lambda: resize_with("bilinear")
        )
    else:
        output = resize_with(interpolation)
    output.set_shape([size, size, 3])
    return output


def decode_and_random_resized_crop(
    image_bytes: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    interpolation: str = "random",
) -> tf.Tensor:
    """Decode encoded image bytes, take a random resized crop and return uint8 (size, size, 3).

    The crop window follows ``random_resized_crop_window``. JPEG bytes are decoded only inside
    the window (``tf.image.decode_and_crop_jpeg``); other formats are decoded whole and then
    cropped. ``interpolation`` is 'random' (bilinear or bicubic, as timm picks), 'bilinear' or
    'bicubic'.
    """
    window_seed, resize_seed = split_seed(seed, 2)

    def crop_jpeg():
        window = random_resized_crop_window(
            tf.image.extract_jpeg_shape(image_bytes), window_seed, scale, ratio
        )
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def crop_other():
        image = decode_image(image_bytes)
        top, left, height, width = tf.unstack(
            random_resized_crop_window(tf.shape(image), window_seed, scale, ratio)
        )
        return image[top : top + height, left : left + width]

    crop = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
    crop.set_shape([None, None, 3])
    return resize(crop, size, interpolation, resize_seed)


def train_decode(
    image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224, recipe: TrainAugment = TrainAugment()
) -> tf.Tensor:
    """The first step of the training recipe: uint8 (size, size, 3), a random resized crop (or
    the whole image resized, if ``recipe.scale`` is None). The only step that can fail on bad
    bytes; ``seed`` is the image's seed, as ``augment.train_preprocess`` takes it."""
    crop_seed = recipe_seeds(seed)[0]
    if recipe.scale is None:
        return resize(decode_image(image_bytes), size, recipe.interpolation, crop_seed)
    return decode_and_random_resized_crop(
        image_bytes, crop_seed, size, recipe.scale, recipe.ratio, recipe.interpolation
    )


def decode_as_pil(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode like ``PIL.Image.open(...).convert('RGB')``: uint8 (H, W, 3).

    JPEGs use libjpeg's accurate integer IDCT (PIL's choice; TensorFlow's default, the fast
    one, is off by several grey levels); other formats decode as ``decode_image`` does.
    """

    def jpeg():
        return tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, lambda: decode_image(image_bytes))
    image.set_shape([None, None, 3])
    return image


def eval_preprocess(
    image_bytes: tf.Tensor, size: int = 224, crop_fraction: float = 0.875
) -> tf.Tensor:
    """Decode and centre-crop an evaluation image: uint8 (size, size, 3).

    timm's eval transform (torchvision ``Resize(int(size / crop_fraction))`` and
    ``CenterCrop(size)`` on a PIL image), pixel for pixel: the shorter side becomes
    ``int(size / crop_fraction)`` (``crop_fraction`` in (0, 1]), the longer
    ``int(new_short * long / short)``, with PIL's bicubic (``pil_resize``); the crop starts at
    ``round((new - size) / 2)`` (half to even, as Python's ``round``). Only the crop is computed.
    """
    image = decode_as_pil(image_bytes)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    new_short = int(size / crop_fraction)
    new_h = tf.where(height == short, new_short, new_short * height // short)
    new_w = tf.where(width == short, new_short, new_short * width // short)
    # tf.round rounds half to even, like Python's round().
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    crop = pil_resize.resized_crop(
        image, tf.stack([new_h, new_w]), tf.stack([top, left, size, size])
    )
    crop.set_shape([size, size, 3])
    return crop
