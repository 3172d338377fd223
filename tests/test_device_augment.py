"""Normalisation and random erasing on device (dynamixer_jax.data.device_augment), as the train step
runs them on the pipeline's uint8 batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from dynamixer_jax.data.device_augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceAugment,
    augment_batch,
    normalize,
)

ERASE = DeviceAugment(erase_prob=0.25)


def _images(count, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_normalize_uint8_and_float():
    image = np.array([[[0, 128, 255]]], np.uint8)
    want = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = normalize(image)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # A float input is already normalised: only cast.
    floats = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float16)
    np.testing.assert_array_equal(normalize(floats), floats.astype(np.float32))


def _erased(key, images, config=ERASE):
    """(output, normalised input, changed (B, H, W)) of one batch."""
    output = np.asarray(jax.jit(augment_batch, static_argnums=2)(key, images, config))
    plain = np.asarray(normalize(images))
    return output, plain, (output != plain).any(-1)


def test_erasing_rate_area_noise_and_untouched_pixels():
    count, size = 4096, 32
    output, plain, changed = _erased(jax.random.key(0), _images(count, size))
    erased = changed.reshape(count, -1).any(-1)
    # Binomial(4096, 0.25): standard deviation sqrt(0.25 * 0.75 / 4096) = 0.0068; four of them
    # (a false alarm about once in 16,000 runs; the keys are fixed, so it is deterministic).
    assert abs(erased.mean() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / count)
    noise = []
    for index in np.nonzero(erased)[0]:
        rows, cols = np.nonzero(changed[index])
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        # One filled rectangle, strictly smaller than the image (timm: h < H, w < W).
        assert changed[index].sum() == height * width and height < size and width < size
        # timm's sides: round(sqrt(area * aspect)), round(sqrt(area / aspect)) with the area
        # fraction in [0.02, 1/3] and the aspect in [0.3, 1/0.3]; rounding moves each side by
        # at most 1/2.
        low, high = math.sqrt(0.02 * size * size), math.sqrt(size * size / 3)
        assert (
            low * math.sqrt(0.3) - 0.5 <= min(height, width)
            and max(height, width) <= high / math.sqrt(0.3) + 0.5
        )
        assert (math.sqrt(0.02) * size - 0.5) ** 2 <= height * width
        assert height * width <= (math.sqrt(1 / 3) * size + 0.5) ** 2
        noise.append(output[index, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    # Pixels outside the rectangle are exactly the normalised input; erased images only.
    np.testing.assert_array_equal(output[~changed], plain[~changed])
    np.testing.assert_array_equal(output[~erased], plain[~erased])
    # The fill is standard normal noise in the normalised space (~1e6 samples: the mean and the
    # standard deviation are known to ~0.001; moments within 0.01 are a loose but safe check).
    noise = np.concatenate([n.reshape(-1) for n in noise])
    assert noise.size > 100_000
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert abs(np.mean(np.abs(noise) < 1) - 0.6827) < 0.01


def test_erasing_is_deterministic_and_keyed():
    images = _images(64)
    first, _, changed = _erased(jax.random.key(3), images)
    again, _, _ = _erased(jax.random.key(3), images)
    other, _, other_changed = _erased(jax.random.key(4), images)
    np.testing.assert_array_equal(first, again)
    assert changed.any() and not np.array_equal(changed, other_changed)


def test_erasing_modes_counts_and_off():
    images = _images(64)
    const, plain, changed = _erased(
        jax.random.key(1), images, DeviceAugment(erase_prob=1.0, erase_mode="const")
    )
    assert changed.reshape(64, -1).any(-1).mean() > 0.9  # every image, unless no attempt fit
    assert (const[changed] == 0).all()
    colour, _, changed = _erased(
        jax.random.key(1), images, DeviceAugment(erase_prob=1.0, erase_mode="rand", erase_count=3)
    )
    for index in range(64):
        values = {tuple(pixel) for pixel in colour[index][changed[index]]}
        assert len(values) <= 3
    off, plain, changed = _erased(jax.random.key(1), images, DeviceAugment())
    np.testing.assert_array_equal(off, plain)


def test_sharding_and_dtype_are_kept():
    devices = np.array(jax.devices())
    mesh = jax.sharding.Mesh(devices, ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    images = jax.device_put(_images(8 * len(devices)), sharding)
    output = jax.jit(augment_batch, static_argnums=2)(jax.random.key(0), images, ERASE)
    assert output.dtype == jnp.float32 and output.shape == images.shape
    assert output.sharding.is_equivalent_to(sharding, output.ndim)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(erase_prob=1.5), "erase_prob"),
        (dict(erase_mode="noise"), "erase_mode"),
        (dict(erase_count=0), "erase_count"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
    ],
)
def test_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        DeviceAugment(**settings)
