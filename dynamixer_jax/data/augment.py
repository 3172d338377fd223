"""Per-image ImageNet training and evaluation preprocessing in TensorFlow (the timm/DeiT recipe).

Training: random resized crop (decoding only the crop window of a JPEG) -> horizontal flip ->
RandAugment, or colour jitter when RandAugment is off -> normalisation -> random erasing.
Evaluation: resize the shorter side to ``size / crop_fraction`` (bicubic) -> centre crop.

All functions are pure and stateless: randomness comes only from an explicit ``seed``, a
shape-[2] int32/int64 tensor, through ``tf.random.stateless_*``. The same seed gives the same
output, and everything runs in graph mode inside ``tf.data.Dataset.map``. Images are
(H, W, 3) tensors; the per-image functions do not take batches.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from dynamixer_jax.data import rand_augment as ra
from dynamixer_jax.data.device_augment import IMAGENET_MEAN, IMAGENET_STD

_INTERPOLATIONS = ("bilinear", "bicubic")


def _split(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    """Split ``seed`` into ``count`` independent seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=count))


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3): grey is replicated, alpha dropped."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def random_resized_crop_window(image_shape: tf.Tensor, seed: tf.Tensor,
                               scale: Sequence[float] = (0.08, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
    """Sample a crop window [top, left, height, width] (int32) for an image of shape (H, W, ...).

    timm ``RandomResizedCropAndInterpolation.get_params``: up to 10 attempts draw an area
    fraction uniformly from ``scale`` and an aspect ratio (width / height) log-uniformly from
    ``ratio``; the first attempt whose rounded size fits is placed uniformly at random. If none
    fits, the window is the centred largest crop whose aspect ratio is clamped to ``ratio``.
    """
    attempts = 10
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    area_seed, ratio_seed, top_seed, left_seed = _split(seed, 4)
    target_area = height * width * tf.random.stateless_uniform(
        [attempts], area_seed, scale[0], scale[1])
    aspect = tf.exp(tf.random.stateless_uniform(
        [attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1])))
    # tf.round rounds half to even, like Python's round().
    crop_w = tf.round(tf.sqrt(target_area * aspect))
    crop_h = tf.round(tf.sqrt(target_area / aspect))
    fits = (crop_w <= width) & (crop_h <= height) & (crop_w >= 1) & (crop_h >= 1)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    sampled_h = tf.cast(crop_h[first], tf.int32)
    sampled_w = tf.cast(crop_w[first], tf.int32)

    int_height, int_width = tf.cast(image_shape[0], tf.int32), tf.cast(image_shape[1], tf.int32)
    top = tf.random.stateless_uniform(
        [], top_seed, 0, tf.maximum(int_height - sampled_h + 1, 1), dtype=tf.int32)
    left = tf.random.stateless_uniform(
        [], left_seed, 0, tf.maximum(int_width - sampled_w + 1, 1), dtype=tf.int32)
    sampled = tf.stack([top, left, sampled_h, sampled_w])

    min_ratio, max_ratio = min(ratio), max(ratio)
    in_ratio = width / height
    fallback_w = tf.where(in_ratio > max_ratio, tf.round(height * max_ratio), width)
    fallback_h = tf.where(in_ratio < min_ratio, tf.round(width / min_ratio), height)
    fallback_h, fallback_w = tf.cast(fallback_h, tf.int32), tf.cast(fallback_w, tf.int32)
    fallback = tf.stack([(int_height - fallback_h) // 2, (int_width - fallback_w) // 2,
                         fallback_h, fallback_w])
    return tf.where(tf.reduce_any(fits), sampled, fallback)


def _resize(image: tf.Tensor, size: int, interpolation: str, seed: tf.Tensor) -> tf.Tensor:
    """Resize to (size, size) with antialiasing (as PIL does) and return uint8.

    ``interpolation`` is 'bilinear', 'bicubic' or 'random' (either, with equal probability).
    """
    def resize_with(method):
        resized = tf.image.resize(image, [size, size], method=method, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    if interpolation == "random":
        use_bicubic = tf.random.stateless_uniform([], seed) < 0.5
        output = tf.cond(use_bicubic, lambda: resize_with("bicubic"),
                         lambda: resize_with("bilinear"))
    elif interpolation in _INTERPOLATIONS:
        output = resize_with(interpolation)
    else:
        raise ValueError(f"interpolation must be 'random', 'bilinear' or 'bicubic', not {interpolation!r}")
    output.set_shape([size, size, 3])
    return output


def decode_and_random_resized_crop(image_bytes: tf.Tensor, seed: tf.Tensor, size: int,
                                   scale: Sequence[float] = (0.08, 1.0),
                                   ratio: Sequence[float] = (3 / 4, 4 / 3),
                                   interpolation: str = "random") -> tf.Tensor:
    """Decode encoded image bytes, take a random resized crop and return uint8 (size, size, 3).

    The crop window follows ``random_resized_crop_window``. JPEG bytes are decoded only inside
    the window (``tf.image.decode_and_crop_jpeg``); other formats are decoded whole and then
    cropped. ``interpolation`` is 'random' (bilinear or bicubic, as timm picks), 'bilinear' or
    'bicubic'.
    """
    window_seed, resize_seed = _split(seed, 2)

    def crop_jpeg():
        window = random_resized_crop_window(tf.image.extract_jpeg_shape(image_bytes),
                                            window_seed, scale, ratio)
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def crop_other():
        image = _decode(image_bytes)
        top, left, height, width = tf.unstack(
            random_resized_crop_window(tf.shape(image), window_seed, scale, ratio))
        return image[top:top + height, left:left + width]

    crop = tf.cond(tf.io.is_jpeg(image_bytes), crop_jpeg, crop_other)
    crop.set_shape([None, None, 3])
    return _resize(crop, size, interpolation, resize_seed)


def random_horizontal_flip(image: tf.Tensor, seed: tf.Tensor, probability: float = 0.5) -> tf.Tensor:
    """Mirror an (H, W, C) image left-right with the given probability."""
    image = tf.convert_to_tensor(image)
    flip = tf.random.stateless_uniform([], seed) < probability
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float = 0.4) -> tf.Tensor:
    """Jitter brightness, contrast and saturation of a uint8 image (torchvision ColorJitter on PIL).

    Each factor is uniform in [max(0, 1 - strength), 1 + strength] and the three adjustments are
    applied in a random order, each as the PIL ``ImageEnhance`` operation torchvision uses.
    Used by the training recipe only when RandAugment is off.
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    order_seed, factor_seed = _split(seed, 2)
    factors = tf.random.stateless_uniform([3], factor_seed, max(0.0, 1.0 - strength), 1.0 + strength)
    order = tf.argsort(tf.random.stateless_uniform([3], order_seed))
    adjustments = (ra.brightness, ra.contrast, ra.color)
    for step in range(3):
        which = order[step]
        image = tf.switch_case(which, [
            (lambda adjust=adjust: adjust(image, tf.gather(factors, which)))
            for adjust in adjustments])
    return image


_color_jitter = color_jitter  # train_preprocess's argument of the same name hides the function.


def normalize(image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> tf.Tensor:
    """Convert a uint8 image to float32 ``(image / 255 - mean) / std``.

    ``mean`` and ``std`` are per-channel values on the 0-1 scale, as timm and torchvision give them.
    """
    mean = tf.constant(mean, tf.float32) * 255.0
    std = tf.constant(std, tf.float32) * 255.0
    return (tf.cast(image, tf.float32) - mean) / std


def random_erasing(image: tf.Tensor, seed: tf.Tensor, probability: float = 0.25,
                   mode: str = "pixel", min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3, max_aspect: float | None = None,
                   max_count: int = 1) -> tf.Tensor:
    """Erase random rectangles of a normalised float (H, W, C) image (timm RandomErasing).

    With ``probability``, a count uniform in [1, max_count] of rectangles is erased; each gets up
    to 10 attempts drawing an area fraction uniform in [min_area, max_area] / count and an
    aspect ratio log-uniform in [min_aspect, max_aspect (default 1 / min_aspect)], and is placed
    uniformly if it fits strictly inside the image. ``mode``: 'pixel' fills with per-pixel
    standard normal noise, 'rand' with one normal colour per rectangle, 'const' with zeros.
    Apply it after normalisation, where the noise matches the data's scale.
    """
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"mode must be 'pixel', 'rand' or 'const', not {mode!r}")
    image = tf.convert_to_tensor(image, tf.float32)
    max_aspect = max_aspect or 1.0 / min_aspect
    apply_seed, count_seed, rect_seed = _split(seed, 3)
    applied = tf.random.stateless_uniform([], apply_seed) < probability

    def erase():
        shape = tf.shape(image)
        height, width, channels = shape[0], shape[1], shape[2]
        count = tf.random.stateless_uniform([], count_seed, 1, max_count + 1, dtype=tf.int32)
        area = tf.cast(height * width, tf.float32) / tf.cast(count, tf.float32)
        output = image
        for index in range(max_count):
            area_seed, aspect_seed, top_seed, left_seed, value_seed = _split(
                tf.random.experimental.stateless_fold_in(rect_seed, index), 5)
            target_area = area * tf.random.stateless_uniform([10], area_seed, min_area, max_area)
            aspect = tf.exp(tf.random.stateless_uniform(
                [10], aspect_seed, math.log(min_aspect), math.log(max_aspect)))
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
                values = tf.tile(tf.random.stateless_normal([1, 1, channels], value_seed),
                                 [rect_h, rect_w, 1])
            else:
                values = tf.zeros([rect_h, rect_w, channels])
            padding = [[top, height - top - rect_h], [left, width - left - rect_w], [0, 0]]
            inside = tf.pad(tf.ones([rect_h, rect_w, 1], tf.bool), padding[:2] + [[0, 0]])
            output = tf.where(inside, tf.pad(values, padding), output)
        return output

    output = tf.cond(applied, erase, lambda: image)
    output.set_shape(image.shape)
    return output


def eval_preprocess(image_bytes: tf.Tensor, size: int = 224, crop_fraction: float = 0.875) -> tf.Tensor:
    """Decode and centre-crop an evaluation image: uint8 (size, size, 3).

    As timm's eval transform: resize the shorter side to ``int(size / crop_fraction)`` with
    antialiased bicubic (the longer side to ``int(new_short * long / short)``), then take the
    centred ``size`` x ``size`` crop. JPEG (grey, RGB or CMYK), PNG, GIF and BMP bytes work.
    Normalise separately with ``normalize``.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], not {crop_fraction}")
    image = _decode(image_bytes)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.minimum(height, width)
    new_short = int(size / crop_fraction)
    new_h = tf.where(height == short, new_short, new_short * height // short)
    new_w = tf.where(width == short, new_short, new_short * width // short)
    resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bicubic", antialias=True)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    crop = resized[top:top + size, left:left + size]
    crop = tf.cast(tf.clip_by_value(tf.round(crop), 0.0, 255.0), tf.uint8)
    crop.set_shape([size, size, 3])
    return crop


def train_decode(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224, *,
                 scale: Sequence[float] | None = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3),
                 interpolation: str = "random") -> tf.Tensor:
    """The decoding part of ``train_preprocess``: uint8 (size, size, 3), a random resized crop
    (or the whole image resized, if ``scale`` is None). This is the only step that can fail on
    bad bytes; ``seed`` is the same seed ``train_preprocess`` gets."""
    crop_seed = _split(seed, 4)[0]
    if scale is None:
        return _resize(_decode(image_bytes), size, interpolation, crop_seed)
    return decode_and_random_resized_crop(image_bytes, crop_seed, size, scale, ratio,
                                          interpolation)


def train_augment(image: tf.Tensor, seed: tf.Tensor, *,
                  hflip: float = 0.5,
                  rand_augment: str | None = "rand-m9-mstd0.5-inc1",
                  color_jitter: float | None = 0.4,
                  mean: Sequence[float] = IMAGENET_MEAN) -> tf.Tensor:
    """The uint8 part of ``train_preprocess`` after decoding: flip, then RandAugment (its fill
    colour is ``mean`` in 0..255) or colour jitter. uint8 in, uint8 out."""
    _, flip_seed, color_seed, _ = _split(seed, 4)
    if hflip:
        image = random_horizontal_flip(image, flip_seed, hflip)
    if rand_augment:
        fill = tuple(min(255, round(255 * value)) for value in mean)
        image = ra.rand_augment(image, color_seed, rand_augment, fill)
    elif color_jitter:
        image = _color_jitter(image, color_seed, color_jitter)
    return image


def train_preprocess(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224, *,
                     scale: Sequence[float] | None = (0.08, 1.0),
                     ratio: Sequence[float] = (3 / 4, 4 / 3),
                     interpolation: str = "random",
                     hflip: float = 0.5,
                     rand_augment: str | None = "rand-m9-mstd0.5-inc1",
                     color_jitter: float | None = 0.4,
                     random_erase_prob: float = 0.25,
                     random_erase_mode: str = "pixel",
                     random_erase_count: int = 1,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> tf.Tensor:
    """Training augmentation of one encoded image: float32 (size, size, 3), normalised.

    Steps (timm ``transforms_imagenet_train``): random resized crop -> horizontal flip with
    probability ``hflip`` -> RandAugment with config ``rand_augment`` (RandAugment's fill
    colour is ``mean`` in 0..255), or, if that is None/'', colour jitter of ``color_jitter``
    -> normalisation with ``mean``/``std`` (0-1 scale) -> random erasing with
    ``random_erase_prob``. A falsy ``hflip``, ``rand_augment``, ``color_jitter`` or
    ``random_erase_prob`` turns its step off; ``scale=None`` resizes the whole image instead of
    cropping it. It is ``train_decode``, ``train_augment``, ``normalize`` and
    ``random_erasing``; the training pipeline stops after ``train_augment`` and the train step
    does the last two on device (``dynamixer_jax.data.device_augment``).
    """
    image = train_decode(image_bytes, seed, size, scale=scale, ratio=ratio,
                         interpolation=interpolation)
    image = train_augment(image, seed, hflip=hflip, rand_augment=rand_augment,
                          color_jitter=color_jitter, mean=mean)
    image = normalize(image, mean, std)
    if random_erase_prob:
        erase_seed = _split(seed, 4)[3]
        image = random_erasing(image, erase_seed, random_erase_prob, random_erase_mode,
                               max_count=random_erase_count)
    return image
