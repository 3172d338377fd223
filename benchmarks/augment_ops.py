"""Time the TensorFlow preprocessing stages per image on generated 500x375 quality-90 JPEGs.

    PYTHONPATH=. python benchmarks/augment_ops.py [--size 224] [--iterations 200]

Each stage runs as a ``tf.function`` called once per image from Python (one image at a time, so
the figures include a per-call overhead of some tens of microseconds), then the whole training
and eval recipes run through ``tf.data`` with one and with AUTOTUNE parallel calls.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from dynamixer_jax.data import augment, decode
from dynamixer_jax.data import rand_augment as ra
from dynamixer_jax.data.device_augment import DeviceAugment
from dynamixer_jax.data.rand_augment_config import INCREASING_OPS


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Photo-like 500x375 images (smooth colour fields plus noise) as quality-90 JPEG bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 500.0
    jpegs = []
    for _ in range(count):
        phases = rng.uniform(0, 2 * np.pi, (3, 2))
        freqs = rng.uniform(2, 12, (3, 2))
        channels = [
            np.sin(freqs[c, 0] * x + phases[c, 0]) * np.cos(freqs[c, 1] * y + phases[c, 1])
            for c in range(3)
        ]
        image = 127 + 100 * np.stack(channels, -1) + rng.normal(0, 8, (375, 500, 3))
        buffer = io.BytesIO()
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def time_per_call(fn, inputs, iterations: int) -> float:
    """Milliseconds per call of ``fn(*inputs[i % len], seed_i)`` after one warm-up pass."""
    for item in inputs:
        fn(item, tf.constant([0, 0], tf.int64))
    start = time.perf_counter()
    for index in range(iterations):
        fn(inputs[index % len(inputs)], tf.constant([1, index], tf.int64))
    return (time.perf_counter() - start) / iterations * 1e3


def time_dataset(jpegs, fn, parallel, images: int) -> float:
    """Milliseconds per image for a tf.data pipeline mapping ``fn`` over (bytes, seed) pairs."""
    dataset = (
        tf.data.Dataset.from_tensor_slices(jpegs)
        .repeat()
        .enumerate()
        .map(lambda i, data: (data, tf.stack([tf.constant(2, tf.int64), i])))
        .map(fn, num_parallel_calls=parallel)
        .batch(32)
        .prefetch(2)
    )
    iterator = iter(dataset)
    next(iterator)
    batches = images // 32
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / (batches * 32) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--images", type=int, default=640, help="images per tf.data timing")
    args = parser.parse_args()
    size = args.size
    jpegs = [tf.constant(data) for data in make_jpegs(16)]
    crops = [
        decode.decode_and_random_resized_crop(data, tf.constant([0, i], tf.int64), size)
        for i, data in enumerate(jpegs)
    ]
    normalized = [augment.normalize(crop) for crop in crops]

    stages = {
        "decode whole JPEG": (lambda data, seed: tf.io.decode_jpeg(data, channels=3), jpegs),
        "decode_and_random_resized_crop": (
            lambda data, seed: decode.decode_and_random_resized_crop(data, seed, size),
            jpegs,
        ),
        "random_horizontal_flip": (augment.random_horizontal_flip, crops),
        "rand_augment rand-m9-mstd0.5-inc1": (
            lambda image, seed: ra.rand_augment(image, seed, "rand-m9-mstd0.5-inc1"),
            crops,
        ),
        "color_jitter 0.4": (augment.color_jitter, crops),
        "normalize": (lambda image, seed: augment.normalize(image), crops),
        "random_erasing 0.25": (
            lambda image, seed: augment.random_erasing(image, seed, DeviceAugment(erase_prob=0.25)),
            normalized,
        ),
        "train_preprocess (full recipe)": (
            lambda data, seed: augment.train_preprocess(data, seed, size),
            jpegs,
        ),
        "eval_preprocess": (lambda data, seed: decode.eval_preprocess(data, size), jpegs),
    }
    for name in INCREASING_OPS:
        stages[f"  op {name} (m=9)"] = (
            lambda image, seed, name=name: ra.apply_op(image, name, 9.0, 1.0),
            crops,
        )

    print(f"per image, one call at a time, size {size}:")
    for name, (fn, inputs) in stages.items():
        print(f"{name:40s} {time_per_call(tf.function(fn), inputs, args.iterations):8.3f} ms")

    print(f"tf.data, batches of 32, {args.images} images:")
    train = lambda data, seed: augment.train_preprocess(data, seed, size)  # noqa: E731
    evaluate = lambda data, seed: decode.eval_preprocess(data, size)  # noqa: E731
    for name, fn in (("train_preprocess", train), ("eval_preprocess", evaluate)):
        for parallel in (1, tf.data.AUTOTUNE):
            label = "AUTOTUNE" if parallel == tf.data.AUTOTUNE else parallel
            ms = time_dataset(jpegs, fn, parallel, args.images)
            print(f"{name:20s} num_parallel_calls={label!s:9s} {ms:8.3f} ms/image")


if __name__ == "__main__":
    main()
