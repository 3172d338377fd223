"""PIL's antialiased bicubic resize of a uint8 image, in TensorFlow ops (tf.data graphs).

timm and torchvision evaluate on ``PIL.Image.resize(size, Image.BICUBIC)``; ``tf.image.resize``
(even with ``antialias=True``) differs from it by about a grey level on photographs. This module
follows Pillow's resampling algorithm (``libImaging/Resample.c``), so that the same pixels come
out:

- separable: one pass along each axis, the first pass's result rounded and clipped to uint8.
  Pillow goes along the width first, except (since Pillow 13) when the height shrinks by more
  than twice as many pixels as the width (``vertical_first``);
- for each output pixel ``i`` of an axis resized from ``n`` to ``m`` pixels: ``scale = n / m``,
  the kernel is stretched by ``s = max(scale, 1)`` (antialiasing when shrinking), its support is
  ``2 s``, the centre is ``(i + 0.5) scale``, and the window is the source pixels
  ``[int(centre - support + 0.5), int(centre + support + 0.5))`` clipped to ``[0, n)``; the
  weights are the cubic kernel (a = -0.5) at ``(j - centre + 0.5) / s``, divided by their sum;
- weights become integers with 22 fractional bits (rounded half away from zero); each output is
  ``(2**21 + sum(pixel * weight)) >> 22`` clipped to 0..255. All of this is exact int32
  arithmetic, so the result is bit-equal to Pillow's whenever the weights are (they are computed
  in float64, as Pillow computes them in double).

An output pixel depends only on its own window, so ``resized_crop`` computes just a crop of the
resized image (what evaluation keeps) and equals resizing whole and then cropping; the first
pass reads only the source lines the second needs. Both passes run along the first axis of a
suitably transposed image and loop over the window's taps (at most ``2 ceil(2 s) + 1``),
gathering one whole source line per output line and tap, so memory stays at a float32 copy of
the source lines read plus one output-sized int32 sum, even for very large photographs (no
per-tap copy of the image, no dense weight matrix). With the crop and no Python, this runs inside
``tf.data.Dataset.map``.
"""

from __future__ import annotations

import tensorflow as tf

# Fractional bits of Pillow's fixed-point weights for 8-bit images (32 - 8 bits - 2 guard bits).
PRECISION_BITS = 22
# The cubic convolution kernel's parameter in Pillow (Keys' a = -0.5).
BICUBIC_A = -0.5
# The kernel is non-zero on (-2, 2).
BICUBIC_SUPPORT = 2.0


def bicubic_kernel(x: tf.Tensor) -> tf.Tensor:
    """Pillow's cubic convolution kernel (a = -0.5) at ``x`` (float64, any shape)."""
    a = BICUBIC_A
    x = tf.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return tf.where(x < 1.0, near, tf.where(x < 2.0, far, tf.zeros_like(x)))


def pil_weights(
    in_size: tf.Tensor, out_size: tf.Tensor, start: tf.Tensor, count: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """One axis's resampling weights for output pixels ``start .. start + count - 1``.

    The axis is resized from ``in_size`` to ``out_size`` pixels (int32 scalars, may be dynamic).
    Returns ``(first, weights)``: ``first`` (int32 [count]) is each output pixel's first source
    pixel, and ``weights`` (int32 [count, taps]) its fixed-point weights for source pixels
    ``first, first + 1, ...``; taps past the window have weight 0.
    """
    in_f = tf.cast(in_size, tf.float64)
    scale = in_f / tf.cast(out_size, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1

    centre = (tf.cast(tf.range(start, start + count), tf.float64) + 0.5) * scale
    # C's (int) cast truncates; below zero both truncation and floor are clipped to 0.
    first = tf.maximum(tf.floor(centre - support + 0.5), 0.0)
    end = tf.minimum(tf.floor(centre + support + 0.5), in_f)
    offsets = tf.cast(tf.range(taps), tf.float64)
    source = first[:, None] + offsets[None, :]
    inside = source < end[:, None]
    raw = bicubic_kernel((source - centre[:, None] + 0.5) / filter_scale)
    raw = tf.where(inside, raw, tf.zeros_like(raw))
    total = tf.reduce_sum(raw, axis=1, keepdims=True)
    normalised = tf.where(total != 0.0, raw / tf.where(total != 0.0, total, 1.0), raw)
    # Round half away from zero, as (int)(w * 2**22 +- 0.5) does (the cast truncates).
    scaled = normalised * float(1 << PRECISION_BITS)
    fixed = tf.cast(tf.where(scaled < 0.0, scaled - 0.5, scaled + 0.5), tf.int32)
    return tf.cast(first, tf.int32), fixed


def _resample(image: tf.Tensor, first: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """One pass along the first axis of a float32 (N, M, C) image of integers 0..255: the same,
    (len(first), M, C), rounded and clipped to 0..255 as Pillow's uint8 result is.

    Loops over the taps, gathering one whole source row per output row and tap (rows are
    contiguous, so this is a memory copy), and accumulates in int32 as Pillow does.
    """
    taps = tf.shape(weights)[1]
    last = tf.shape(image)[0] - 1
    out_shape = tf.concat([tf.shape(first), tf.shape(image)[1:]], 0)
    bias = tf.fill(out_shape, tf.constant(1 << (PRECISION_BITS - 1), tf.int32))

    def body(tap, total):
        # Taps past a window have weight 0; clamping keeps their rows inside the image.
        pixels = tf.cast(tf.gather(image, tf.minimum(first + tap, last)), tf.int32)
        return tap + 1, total + pixels * weights[:, tap, None, None]

    _, total = tf.while_loop(lambda tap, _: tap < taps, body, [tf.constant(0), bias])
    shifted = tf.bitwise.right_shift(total, PRECISION_BITS)
    return tf.cast(tf.clip_by_value(shifted, 0, 255), tf.float32)


def _widen(image: tf.Tensor) -> tf.Tensor:
    """uint8 to float32, to be transposed: oneDNN logs an error for a transpose of integers
    (and then does it anyway). The no-op ``minimum`` stops Grappler from moving the transpose
    ahead of the cast, onto the uint8 tensor."""
    return tf.minimum(tf.cast(image, tf.float32), 255.0)


def vertical_first(in_size: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
    """Whether Pillow (13 and later) resizes along the height before the width: when the height
    shrinks, by more than twice as many pixels as the width does (found by comparing with
    Pillow 13.0 over many sizes; Pillow 12 and earlier always go along the width first).
    ``in_size`` and ``out_size`` are [height, width]."""
    shrink = tf.cast(in_size, tf.int32) - tf.cast(out_size, tf.int32)
    return (shrink[0] > 0) & (2 * shrink[1] < shrink[0])


def resized_crop(image: tf.Tensor, resized_size: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """Crop ``window`` = [top, left, height, width] of ``image`` resized as PIL does.

    ``image`` is uint8 (H, W, C); ``resized_size`` = [new_h, new_w]. Equals
    ``np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))[top:top +
    height, left:left + width]`` (int32 scalars; the window must lie inside the resized image),
    bit for bit with Pillow 13. For images whose height shrinks much more than their width
    (``vertical_first``) Pillow 12 and earlier go the other way round, rounding and clipping the
    intermediate image elsewhere: on photographs 0.1-0.2 grey levels apart on average, 99% of
    values within 1, a few (clipped overshoots at sharp edges) up to about 8.
    """
    image = tf.convert_to_tensor(image)
    in_size = tf.shape(image)[:2]
    resized_size = tf.cast(resized_size, tf.int32)
    window = tf.cast(window, tf.int32)
    # Both passes run along the first axis: the image is laid out with the first pass's axis
    # first (the width, transposed, unless Pillow goes along the height first). Pixels are
    # float32 between the passes (integers, exact), sums int32.
    swap = vertical_first(in_size, resized_size)
    order = tf.where(swap, [0, 1], [1, 0])
    in_1, in_2 = tf.unstack(tf.gather(in_size, order))
    out_1, out_2 = tf.unstack(tf.gather(resized_size, order))
    start_1, start_2 = tf.unstack(tf.gather(window[:2], order))
    count_1, count_2 = tf.unstack(tf.gather(window[2:], order))
    first_1, weights_1 = pil_weights(in_1, out_1, start_1, count_1)
    first_2, weights_2 = pil_weights(in_2, out_2, start_2, count_2)
    # The first pass needs only the source lines the second pass reads.
    begin = first_2[0]
    end = tf.minimum(first_2[-1] + tf.shape(weights_2)[1], in_2)
    laid_out = tf.cond(
        swap,
        lambda: _widen(image[:, begin:end]),
        lambda: tf.transpose(_widen(image[begin:end]), [1, 0, 2]),
    )
    across = _resample(laid_out, first_1, weights_1)
    output = _resample(tf.transpose(across, [1, 0, 2]), first_2 - begin, weights_2)
    output = tf.cond(swap, lambda: tf.transpose(output, [1, 0, 2]), lambda: output)
    # The no-op ``minimum`` keeps the cast after the transpose (see ``_widen``).
    output = tf.cast(tf.minimum(output, 255.0), tf.uint8)
    output.set_shape([None, None, image.shape[-1]])
    return output


def resize(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """``image`` (uint8 (H, W, C)) resized to ``size`` = [new_h, new_w] as
    ``PIL.Image.resize((new_w, new_h), Image.BICUBIC)`` does."""
    size = tf.cast(size, tf.int32)
    return resized_crop(image, size, tf.stack([0, 0, size[0], size[1]]))
