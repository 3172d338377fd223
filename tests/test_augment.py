"""Tests of the TensorFlow training/eval preprocessing and RandAugment (dynamixer_jax.data).

The image operations are compared with the PIL operations that timm applies, on small random
images; the random parts are checked for shapes, ranges, determinism and rates.
"""

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from dynamixer_jax.data import augment, decode
from dynamixer_jax.data import image_ops as ops
from dynamixer_jax.data import rand_augment as ra
from dynamixer_jax.data.device_augment import DeviceAugment
from dynamixer_jax.data.rand_augment_config import INCREASING_OPS, parse_rand_augment
from dynamixer_jax.data.recipe import TrainAugment

FILL = (124, 116, 104)


def _seed(*values):
    return tf.constant(values, tf.int64)


def _encode(array, fmt="JPEG", **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _smooth_image(height, width, seed=0):
    """A photo-like test image: smooth colour gradients plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x + 2 * c) * np.cos(4 * y - c) for c in range(3)]
    image = 127 + 100 * np.stack(channels, -1) + rng.normal(0, 5, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo():
    """A 500x375 (W x H) image with a distinct centre patch, and its quality-90 JPEG bytes."""
    image = _smooth_image(375, 500)
    image[150:225, 200:300] = (255, 0, 0)
    return image, _encode(image, quality=90)


@pytest.fixture(scope="module")
def random_image():
    return np.random.default_rng(1).integers(0, 256, (37, 45, 3), dtype=np.uint8)


def _max_diff(a, b):
    return int(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max())


# ------------------------------------------------------------------------ RandAugment parsing


def test_parse_target_config():
    config = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (config.num_layers, config.magnitude, config.magnitude_std) == (2, 9, 0.5)
    assert config.increasing and config.prob == 0.5 and config.magnitude_max == 10
    assert config.op_names == INCREASING_OPS and len(INCREASING_OPS) == 15


def test_parse_other_configs():
    config = parse_rand_augment("rand-n3-m5-mstd101-mmax12-inc0-p0.7")
    assert (config.num_layers, config.magnitude, config.magnitude_max, config.prob) == (
        3,
        5,
        12,
        0.7,
    )
    assert config.magnitude_std == math.inf and not config.increasing
    assert parse_rand_augment("rand").magnitude == 10
    for bad in ("auto-m9", "rand-w0", "rand-m"):
        with pytest.raises(ValueError):
            parse_rand_augment(bad)


# ------------------------------------------------------- RandAugment ops against PIL references


def test_lut_ops_match_pil(random_image):
    pil = Image.fromarray(random_image)
    assert _max_diff(ops.invert(random_image), ImageOps.invert(pil)) == 0
    for bits in range(1, 9):
        assert _max_diff(ops.posterize(random_image, bits), ImageOps.posterize(pil, bits)) == 0
    # Old PIL (and so timm's PosterizeIncreasing at magnitude 10) maps 0 bits to black.
    assert _max_diff(ops.posterize(random_image, 0), np.zeros_like(random_image)) == 0
    for threshold in (0, 100, 128, 256):
        expected = ImageOps.solarize(pil, threshold)
        assert _max_diff(ops.solarize(random_image, threshold), expected) == 0
    added = np.where(
        random_image < 128, np.minimum(random_image.astype(int) + 70, 255), random_image
    )
    assert _max_diff(ops.solarize_add(random_image, 70), added) == 0


def test_equalize_and_autocontrast_match_pil(random_image):
    low_contrast = (random_image // 3 + 60).astype(np.uint8)
    skewed = (random_image.astype(np.float64) ** 2 / 255).astype(np.uint8)
    constant = np.full_like(random_image, 77)
    for image in (random_image, low_contrast, skewed, constant):
        pil = Image.fromarray(image)
        assert _max_diff(ops.equalize(image), ImageOps.equalize(pil)) == 0
        assert _max_diff(ops.auto_contrast(image), ImageOps.autocontrast(pil)) == 0


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_ops_match_pil(random_image, name):
    pil = Image.fromarray(random_image)
    operation = getattr(ops, name.lower())
    for factor in (0.1, 0.55, 1.0, 1.9):
        expected = getattr(ImageEnhance, name)(pil).enhance(factor)
        # Same integer arithmetic; a float32 rounding edge may move a pixel by one level.
        assert _max_diff(operation(random_image, factor), expected) <= 1


def test_rotate_by_90_degrees_is_exact(random_image):
    square = random_image[:37, :37]
    rotated = square
    for turn in range(1, 5):
        rotated = ops.rotate(rotated, 90.0).numpy()
        np.testing.assert_array_equal(rotated, np.rot90(square, turn))


@pytest.mark.parametrize(
    "op, argument, pil_matrix",
    [
        ("shear_x", 0.23, lambda w, h: (1, 0.23, 0, 0, 1, 0)),
        ("shear_y", -0.3, lambda w, h: (1, 0, 0, -0.3, 1, 0)),
        ("translate_x_rel", 0.3, lambda w, h: (1, 0, 0.3 * w, 0, 1, 0)),
        ("translate_y_rel", -0.41, lambda w, h: (1, 0, 0, 0, 1, -0.41 * h)),
    ],
)
def test_affine_ops_match_pil(random_image, op, argument, pil_matrix):
    pil = Image.fromarray(random_image)
    expected = pil.transform(
        pil.size, Image.AFFINE, pil_matrix(*pil.size), Image.BILINEAR, fillcolor=FILL
    )
    # Same sample positions, edge handling and truncation as PIL's bilinear transform; float32
    # against PIL's float64 arithmetic may move a truncated value by one level.
    assert _max_diff(getattr(ops, op)(random_image, argument, FILL), expected) <= 1


@pytest.mark.parametrize("degrees", [17.0, -30.0])
def test_rotate_matches_pil(random_image, degrees):
    expected = Image.fromarray(random_image).rotate(degrees, Image.BILINEAR, fillcolor=FILL)
    rotated = ops.rotate(random_image, degrees).numpy().astype(int)
    difference = np.abs(rotated - np.asarray(expected))
    # Off by one where float32 truncation differs; a source position within float32 error of
    # the image border can flip between sampled and filled, so allow a few such pixels.
    assert (difference > 1).any(axis=-1).sum() <= 3
    assert difference.mean() < 0.05


def test_translate_fills_with_mean_colour(random_image):
    moved = ops.translate_x_rel(random_image, 0.45, FILL).numpy()
    np.testing.assert_array_equal(moved[:, -19:], np.broadcast_to(FILL, moved[:, -19:].shape))


def test_apply_op_magnitude_rules(random_image):
    # PosterizeIncreasing at m=9 keeps 4 - int(3.6) = 1 bit; SolarizeIncreasing at m=5 uses 128.
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "PosterizeIncreasing", 9.0), ops.posterize(random_image, 1)
    )
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "SolarizeIncreasing", 5.0), ops.solarize(random_image, 128)
    )
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "SolarizeAdd", 10.0), ops.solarize_add(random_image, 110)
    )
    # Rotate at m=10 with sign -1 is -30 degrees; enhance increasing is 1 -/+ 0.9 m / 10.
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "Rotate", 10.0, -1.0), ops.rotate(random_image, -30.0)
    )
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "ContrastIncreasing", 5.0, -1.0), ops.contrast(random_image, 0.55)
    )
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "ShearX", 10.0, 1.0), ops.shear_x(random_image, 0.3)
    )
    np.testing.assert_array_equal(
        ra.apply_op(random_image, "TranslateYRel", 10.0, -1.0),
        ops.translate_y_rel(random_image, -0.45),
    )


def test_rand_augment_is_deterministic_and_graph_safe(random_image):
    augment_fn = tf.function(
        lambda image, seed: ra.rand_augment(image, seed, "rand-m9-mstd0.5-inc1")
    )
    outputs = [augment_fn(random_image, _seed(0, i)).numpy() for i in range(24)]
    for output in outputs:
        assert output.shape == random_image.shape and output.dtype == np.uint8
    np.testing.assert_array_equal(outputs[0], augment_fn(random_image, _seed(0, 0)).numpy())
    changed = sum(not np.array_equal(output, random_image) for output in outputs)
    # Each image is left unchanged only if both ops are skipped (p = 1/4) or are no-ops.
    assert 8 <= changed < 24
    assert len({output.tobytes() for output in outputs}) > 12
    # p0: no op is ever applied.
    np.testing.assert_array_equal(
        ra.rand_augment(random_image, _seed(3, 4), "rand-m9-p0"), random_image
    )


# ------------------------------------------------------------------------ training preprocessing


def test_crop_window_bounds():
    windows = np.stack(
        [decode.random_resized_crop_window([375, 500], _seed(5, i)).numpy() for i in range(100)]
    )
    top, left, height, width = windows.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 375).all() and (left + width <= 500).all()
    area = height * width / (375 * 500)
    # Rounding the side lengths moves the area fraction and aspect ratio slightly.
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert (width / height >= 0.74).all() and (width / height <= 1.35).all()
    # No window is fit for a 1000x10 image at scale >= 0.9: the fallback is a centred crop
    # with the aspect ratio clamped to 4/3.
    fallback = decode.random_resized_crop_window([10, 1000], _seed(0, 0), scale=(0.9, 1.0))
    np.testing.assert_array_equal(fallback, [0, (1000 - 13) // 2, 10, 13])


def test_jpeg_and_png_crops_agree(photo):
    jpeg = photo[1]
    decoded = tf.io.decode_jpeg(jpeg).numpy()
    png = _encode(decoded, "PNG")
    for index in range(3):
        from_jpeg = decode.decode_and_random_resized_crop(
            jpeg, _seed(7, index), 96, interpolation="bicubic"
        )
        from_png = decode.decode_and_random_resized_crop(
            png, _seed(7, index), 96, interpolation="bicubic"
        )
        assert from_jpeg.shape == (96, 96, 3) and from_jpeg.dtype == tf.uint8
        # Same window; decoding only the window may change a few edge pixels slightly.
        assert np.abs(from_jpeg.numpy().astype(int) - from_png.numpy()).mean() < 0.5


def test_train_preprocess_shapes_ranges_determinism(photo):
    jpeg = photo[1]
    first = augment.train_preprocess(jpeg, _seed(1, 2)).numpy()
    assert first.shape == (224, 224, 3) and first.dtype == np.float32
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, augment.train_preprocess(jpeg, _seed(1, 2)).numpy())
    assert not np.array_equal(first, augment.train_preprocess(jpeg, _seed(1, 3)).numpy())
    # Without random erasing, values stay in the normalised range of 0..255.
    low = (0 - 255 * np.array(augment.IMAGENET_MEAN)) / (255 * np.array(augment.IMAGENET_STD))
    high = (255 - 255 * np.array(augment.IMAGENET_MEAN)) / (255 * np.array(augment.IMAGENET_STD))
    plain = augment.train_preprocess(
        jpeg,
        _seed(4, 4),
        128,
        TrainAugment(random_erase_prob=0, rand_augment=None, color_jitter=0.4),
    ).numpy()
    assert plain.shape == (128, 128, 3)
    assert (plain >= low - 1e-5).all() and (plain <= high + 1e-5).all()


def test_train_preprocess_all_steps_off_is_a_resize(photo):
    image, jpeg = photo
    output = augment.train_preprocess(
        jpeg,
        _seed(0, 0),
        100,
        TrainAugment(
            scale=None,
            interpolation="bilinear",
            hflip=0,
            rand_augment=None,
            color_jitter=None,
            random_erase_prob=0,
            mean=(0, 0, 0),
            std=(1, 1, 1),
        ),
    )
    expected = np.asarray(Image.fromarray(image).resize((100, 100), Image.BILINEAR), np.float32)
    # Normalising with mean 0 and std 1 divides by 255; JPEG and resampler differences remain.
    assert np.abs(output.numpy() * 255 - expected).mean() < 3.0


def test_flip_and_normalize():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    flips = [
        np.array_equal(augment.random_horizontal_flip(image, _seed(0, i)), image[:, ::-1])
        for i in range(40)
    ]
    assert 8 < sum(flips) < 32
    assert not any(
        np.array_equal(augment.random_horizontal_flip(image, _seed(0, i), 0.0), image[:, ::-1])
        for i in range(5)
    )
    normalized = augment.normalize(np.full((1, 1, 3), 255, np.uint8)).numpy()
    expected = (1 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
    np.testing.assert_allclose(normalized[0, 0], expected, rtol=1e-6)


def test_color_jitter(random_image):
    output = augment.color_jitter(random_image, _seed(2, 2), 0.4).numpy()
    assert output.shape == random_image.shape and output.dtype == np.uint8
    np.testing.assert_array_equal(
        augment.color_jitter(random_image, _seed(2, 2), 0.0), random_image
    )


def test_random_erasing_rate_and_content():
    image = tf.zeros([32, 32, 3])
    erase = tf.function(
        lambda seed: augment.random_erasing(image, seed, DeviceAugment(erase_prob=0.25))
    )
    trials = 2000
    erased = 0
    for index in range(trials):
        output = erase(_seed(9, index)).numpy()
        changed = (output != 0).any(axis=-1)
        if changed.any():
            erased += 1
            rows, cols = np.nonzero(changed)
            # One rectangle of standard-normal noise, area fraction within the drawn range.
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert changed.sum() == box and 0.01 <= box / 1024 <= 0.4
    # A binomial(2000, 0.25) rate has standard deviation 0.0097: allow four of them (p ~ 6e-5).
    assert abs(erased / trials - 0.25) < 4 * math.sqrt(0.25 * 0.75 / trials)


def test_random_erasing_modes():
    image = tf.zeros([16, 16, 3])
    const = augment.random_erasing(
        image, _seed(1, 1), DeviceAugment(erase_prob=1.0, erase_mode="const")
    ).numpy()
    np.testing.assert_array_equal(const, 0)
    colour = augment.random_erasing(
        image, _seed(1, 1), DeviceAugment(erase_prob=1.0, erase_mode="rand", erase_count=3)
    ).numpy()
    values = {tuple(pixel) for pixel in colour.reshape(-1, 3) if pixel.any()}
    assert 1 <= len(values) <= 3


# ------------------------------------------------------------------------ evaluation preprocessing


def test_eval_preprocess_centre_crop_matches_pil(photo):
    image, jpeg = photo
    output = decode.eval_preprocess(jpeg, 224, 0.875).numpy()
    assert output.shape == (224, 224, 3) and output.dtype == np.uint8
    # timm: shorter side 375 -> 256, longer 500 -> int(256 * 500 / 375) = 341, crop at (16, 58).
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    expected = np.asarray(decoded.resize((341, 256), Image.BICUBIC).crop((58, 16, 282, 240)))
    # TF's and PIL's antialiased bicubic kernels differ slightly in rounding and normalisation.
    assert np.abs(output.astype(int) - expected).mean() < 1.0
    # The red centre patch (rows 150..225, cols 200..300 of 375x500) lands at rows 86..138,
    # cols 78..147 of the crop (scale 256/375, offset (16, 58)); JPEG blurs its colour a little.
    patch = output[92:132, 84:141].astype(int)
    assert (patch[..., 0] > 230).all() and (patch[..., 1:] < 40).all()
    assert (output[:80, :, 0] < 230).mean() > 0.5


def test_eval_preprocess_other_formats():
    colour = _smooth_image(120, 90, seed=3)
    grey = colour[..., 0]
    rgba = np.concatenate([colour, np.full((120, 90, 1), 255, np.uint8)], -1)
    cmyk = io.BytesIO()
    Image.fromarray(colour).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    for data in (_encode(grey), _encode(colour, "PNG"), _encode(rgba, "PNG"), cmyk.getvalue()):
        output = decode.eval_preprocess(data, 64, 0.875).numpy()
        assert output.shape == (64, 64, 3) and output.dtype == np.uint8
    grey_output = decode.eval_preprocess(_encode(grey, "PNG"), 64).numpy()
    np.testing.assert_array_equal(grey_output[..., 0], grey_output[..., 2])
    crop = decode.decode_and_random_resized_crop(_encode(grey), _seed(0, 1), 32)
    assert crop.shape == (32, 32, 3)


def test_train_preprocess_in_dataset_map(photo):
    jpeg = photo[1]
    png = _encode(_smooth_image(200, 150, seed=4), "PNG")
    grey = _encode(_smooth_image(160, 240, seed=5)[..., 1])
    images = tf.data.Dataset.from_tensor_slices([jpeg, png, grey, jpeg])
    seeds = tf.data.Dataset.range(4).map(lambda i: tf.stack([tf.constant(11, tf.int64), i]))

    def pipeline():
        return (
            tf.data.Dataset.zip((images, seeds))
            .map(
                lambda data, seed: augment.train_preprocess(data, seed, 160),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .batch(4)
        )

    batch = next(iter(pipeline())).numpy()
    assert batch.shape == (4, 160, 160, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, next(iter(pipeline())).numpy())
    assert not np.array_equal(batch[0], batch[3])  # same image, different seeds
