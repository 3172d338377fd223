"""The PIL image operations that timm's RandAugment applies, in TensorFlow, on one uint8 image.

Each function takes a uint8 (H, W, 3) image and mirrors ``ImageOps``, ``ImageEnhance`` or
``Image.transform`` with its pixel conventions, so that results agree with PIL exactly or to
within one grey level (see ``tests/test_augment.py``). Geometric operations sample bilinearly
(with ``tf.raw_ops.ImageProjectiveTransformV3``, or gathers where pixels move along one axis)
and fill uncovered pixels with a per-channel colour. No randomness here: ``rand_augment.py``
picks the ops and their magnitudes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

IMAGENET_FILL = (124, 116, 104)
"""The ImageNet mean colour in 0..255, timm's fill colour for geometric operations."""


# ----------------------------------------------------------------------------- pixel operations


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """Map each channel of a uint8 image through its own 256-entry table ``lut`` [3, 256] of
    values in 0..255 (gathered as uint8: no per-pixel cast of the result)."""
    index = tf.cast(image, tf.int32) + tf.range(3, dtype=tf.int32) * 256
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), index)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma, fixed point), as int32 (H, W)."""
    rgb = tf.cast(image, tf.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return tf.bitwise.right_shift(luma, 16)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
    """PIL ``Image.blend(degenerate, image, factor)``: extrapolate, clip and truncate to uint8."""
    degenerate = tf.cast(degenerate, tf.float32)
    factor = tf.cast(factor, tf.float32)
    blended = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
    return tf.cast(tf.floor(tf.clip_by_value(blended, 0.0, 255.0)), tf.uint8)


def _below(image: tf.Tensor, threshold) -> tf.Tensor:
    """``image < threshold`` for a uint8 image and an integer threshold in 0..256, in uint8."""
    threshold = tf.cast(threshold, tf.int32)
    return (image < tf.cast(tf.clip_by_value(threshold, 0, 255), tf.uint8)) | (threshold > 255)


def invert(image: tf.Tensor) -> tf.Tensor:
    """Invert every pixel (PIL ``ImageOps.invert``)."""
    return 255 - tf.convert_to_tensor(image, tf.uint8)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """Keep the ``bits`` (0..8) most significant bits of each channel (PIL
    ``ImageOps.posterize``)."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = tf.cast(255 - (tf.bitwise.left_shift(1, 8 - bits) - 1), tf.uint8)
    return tf.bitwise.bitwise_and(tf.convert_to_tensor(image, tf.uint8), mask)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
    """Invert pixels at or above ``threshold`` (0..256) (PIL ``ImageOps.solarize``)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    return tf.where(_below(image, threshold), image, 255 - image)


def solarize_add(image: tf.Tensor, addition, threshold=128) -> tf.Tensor:
    """Add ``addition`` (saturating at 255) to pixels below ``threshold`` (timm
    ``solarize_add``)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    addition = tf.cast(tf.clip_by_value(tf.cast(addition, tf.int32), 0, 255), tf.uint8)
    added = image + tf.minimum(addition, 255 - image)  # saturates without leaving uint8
    return tf.where(_below(image, threshold), added, image)


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """Stretch each channel to span 0..255 (PIL ``ImageOps.autocontrast``, no cutoff)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    pixels = tf.reshape(image, [-1, 3])
    low = tf.cast(tf.reduce_min(pixels, axis=0), tf.float64)
    high = tf.cast(tf.reduce_max(pixels, axis=0), tf.float64)
    # The same float64 arithmetic as PIL builds its table with.
    scale = 255.0 / tf.maximum(high - low, 1.0)
    offset = -low * scale
    levels = tf.range(256, dtype=tf.float64)[None, :]
    stretched = tf.clip_by_value(tf.floor(levels * scale[:, None] + offset[:, None]), 0.0, 255.0)
    lut = tf.where((high > low)[:, None], tf.cast(stretched, tf.int32), tf.range(256)[None, :])
    return _apply_lut(image, lut)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Equalize the histogram of each channel (PIL ``ImageOps.equalize``)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    index = tf.cast(image, tf.int32) + tf.range(3, dtype=tf.int32) * 256
    hist = tf.reshape(
        tf.math.bincount(tf.reshape(index, [-1]), minlength=768, maxlength=768, dtype=tf.int32),
        [3, 256],
    )
    # PIL: step = (number of pixels - count of the highest occurring value) // 255.
    last_value = 255 - tf.argmax(
        tf.reverse(tf.cast(hist > 0, tf.int32), axis=[1]), axis=1, output_type=tf.int32
    )
    last_count = tf.gather(hist, last_value, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (step[:, None] // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step
    lut = tf.where((step > 0)[:, None], tf.minimum(lut, 255), tf.range(256)[None, :])
    return tf.gather(tf.cast(tf.reshape(lut, [-1]), tf.uint8), index)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with the grayscale image: 0 grey, 1 unchanged, >1 more saturated (PIL
    ``ImageEnhance.Color``)."""
    gray = tf.repeat(_grayscale(image)[..., None], 3, axis=-1)
    return _blend(gray, image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with the mean grey level: 0 flat grey, 1 unchanged (PIL ``ImageEnhance.Contrast``)."""
    mean = tf.reduce_mean(tf.cast(_grayscale(image), tf.float64))
    degenerate = tf.cast(tf.floor(mean + 0.5), tf.float32)
    return _blend(degenerate, image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """Scale intensities by ``factor`` (PIL ``ImageEnhance.Brightness``)."""
    return _blend(tf.zeros([], tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """Blend with PIL's SMOOTH-filtered image, border pixels kept (PIL
    ``ImageEnhance.Sharpness``)."""
    image = tf.convert_to_tensor(image, tf.uint8)
    pixels = tf.cast(image, tf.float32)
    # SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3x3 box sum + 4 * centre) / 13;
    # the box sum as two separable sums of shifted slices (faster than a conv on CPU).
    row_sums = pixels[:, :-2] + pixels[:, 1:-1] + pixels[:, 2:]
    box_sums = row_sums[:-2] + row_sums[1:-1] + row_sums[2:]
    smooth = tf.round((box_sums + 4.0 * pixels[1:-1, 1:-1]) / 13.0)
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    shape = tf.shape(image)
    interior = tf.pad(tf.ones(shape[:2] - 2, tf.bool), [[1, 1], [1, 1]])
    degenerate = tf.where(interior[..., None], smooth, pixels)
    return _blend(degenerate, image, factor)


# ------------------------------------------------------------------------- geometric operations


def _resample_along(pixels: tf.Tensor, source: tf.Tensor, axis: int) -> tf.Tensor:
    """Bilinear samples of float ``pixels`` (H, W, C) at source index ``source`` along ``axis``
    (1: within each row, 0: within each column), the other index kept. ``source`` is (H, W),
    or (1, W) / (H, 1) when every row / column moves alike (a translation: whole columns or
    rows are gathered).

    The arithmetic of TF's projective-transform kernel with ``fill_mode='NEAREST'`` (the
    position clamped to the edge) for a transform that moves pixels along one axis, where its
    weights across the other axis are exactly 1 and 0; gathers instead of the kernel's
    per-channel projection make it faster.
    """
    length = tf.shape(pixels)[axis]
    position = tf.clip_by_value(source, 0.0, tf.cast(length - 1, tf.float32))
    low = tf.floor(position)
    low_index = tf.cast(low, tf.int32)
    # Past the last pixel the kernel reads a zero with weight zero: any pixel does as well.
    high_index = tf.minimum(low_index + 1, length - 1)
    low_weight, high_weight = (low + 1.0 - position)[..., None], (position - low)[..., None]
    if source.shape[1 - axis] == 1:
        return low_weight * tf.gather(
            pixels, tf.reshape(low_index, [-1]), axis=axis
        ) + high_weight * tf.gather(pixels, tf.reshape(high_index, [-1]), axis=axis)
    if axis == 0:
        pixels = tf.transpose(pixels, [1, 0, 2])
        low_index, high_index = tf.transpose(low_index), tf.transpose(high_index)
    samples = (
        tf.gather(pixels, low_index, batch_dims=1),
        tf.gather(pixels, high_index, batch_dims=1),
    )
    if axis == 0:
        samples = [tf.transpose(sample, [1, 0, 2]) for sample in samples]
    return low_weight * samples[0] + high_weight * samples[1]


def affine_transform(
    image: tf.Tensor,
    matrix: Sequence,
    fill: Sequence[int] = IMAGENET_FILL,
    along: str | None = None,
) -> tf.Tensor:
    """Apply a PIL-style affine ``matrix`` (a, b, c, d, e, f) with bilinear sampling.

    As in PIL's ``Image.transform(size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=fill)``:
    the output pixel at continuous position (x, y) (pixel centres at +0.5) is sampled from input
    position (a x + b y + c, d x + e y + f); a source position outside the image gives the
    per-channel ``fill`` colour, one inside it is interpolated with edge-clamped neighbours, and
    the result is truncated to an integer. ``along='x'`` (the matrix is (a, b, c, 0, 1, 0)) or
    ``'y'`` ((1, 0, 0, d, e, f)) says that pixels move along one axis only, which is sampled
    with the same arithmetic, faster (shears); ``'shift-x'`` ((1, 0, c, 0, 1, 0)) and
    ``'shift-y'`` ((1, 0, 0, 0, 1, f)) say that they all move alike (translations).
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    a, b, c, d, e, f = [tf.cast(value, tf.float32) for value in matrix]
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    pixels = tf.cast(image, tf.float32)
    # The kernel's map works on pixel indices (centres at integers): shift by half a pixel.
    c_index, f_index = c + 0.5 * (a + b) - 0.5, f + 0.5 * (d + e) - 0.5
    row, column = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
    if along == "x":
        warped = _resample_along(pixels, a * column + b * row + c_index, axis=1)
    elif along == "y":
        warped = _resample_along(pixels, d * column + e * row + f_index, axis=0)
    elif along == "shift-x":
        warped = _resample_along(pixels, a * tf.range(width)[None, :] + c_index, axis=1)
    elif along == "shift-y":
        warped = _resample_along(pixels, e * tf.range(height)[:, None] + f_index, axis=0)
    else:
        transform = tf.stack([a, b, c_index, d, e, f_index, 0.0, 0.0])
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=pixels[None],
            transforms=transform[None],
            output_shape=shape[:2],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )[0]
    x, y = column + 0.5, row + 0.5
    source_x, source_y = a * x + b * y + c, d * x + e * y + f
    inside = (source_x >= 0.0) & (source_x < width) & (source_y >= 0.0) & (source_y < height)
    # A small allowance keeps float32 error from truncating e.g. 231.99999 to 231.
    warped = tf.floor(tf.clip_by_value(warped, 0.0, 255.0) + 1e-3)
    output = tf.where(inside[..., None], warped, tf.constant(fill, tf.float32))
    return tf.cast(output, tf.uint8)


def rotate(image: tf.Tensor, degrees, fill: Sequence[int] = IMAGENET_FILL) -> tf.Tensor:
    """Rotate counter-clockwise by ``degrees`` about the image centre (PIL ``Image.rotate``)."""
    shape = tf.cast(tf.shape(image), tf.float32)
    center_x, center_y = shape[1] / 2.0, shape[0] / 2.0
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    offset_x = cos * -center_x + sin * -center_y + center_x
    offset_y = -sin * -center_x + cos * -center_y + center_y
    return affine_transform(image, (cos, sin, offset_x, -sin, cos, offset_y), fill)


def shear_x(image: tf.Tensor, factor, fill: Sequence[int] = IMAGENET_FILL) -> tf.Tensor:
    """Shear horizontally: x_in = x + factor * y (timm ``shear_x``)."""
    return affine_transform(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, along="x")


def shear_y(image: tf.Tensor, factor, fill: Sequence[int] = IMAGENET_FILL) -> tf.Tensor:
    """Shear vertically: y_in = factor * x + y (timm ``shear_y``)."""
    return affine_transform(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, along="y")


def translate_x_rel(image: tf.Tensor, fraction, fill: Sequence[int] = IMAGENET_FILL) -> tf.Tensor:
    """Translate by ``fraction`` of the width: x_in = x + fraction * W (timm
    ``translate_x_rel``)."""
    pixels = tf.cast(fraction, tf.float32) * tf.cast(tf.shape(image)[1], tf.float32)
    return affine_transform(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, along="shift-x")


def translate_y_rel(image: tf.Tensor, fraction, fill: Sequence[int] = IMAGENET_FILL) -> tf.Tensor:
    """Translate by ``fraction`` of the height: y_in = y + fraction * H (timm
    ``translate_y_rel``)."""
    pixels = tf.cast(fraction, tf.float32) * tf.cast(tf.shape(image)[0], tf.float32)
    return affine_transform(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, along="shift-y")
