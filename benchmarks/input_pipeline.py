"""Training input throughput: images/s, and images per second of CPU time, of the tf.data pipeline.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--images 1024] [--rounds 3] [--before DIR]

Reads a folder of generated 500x375 quality-90 JPEGs with ``TrainData`` (what training uses) at
224, batch 32, for a ladder of recipes that adds one augmentation at a time (crop, + flip, +
RandAugment: the host's whole share, since normalisation and random erasing run on device), then
a plain ``map`` of ``train_preprocess`` (the whole recipe in TensorFlow, float32 out). Per recipe:
wall-clock images/s, and CPU time per image (the steadier figure on a shared machine); a step's
share is its CPU time over the step before. Rounds alternate between recipes; medians count.
``--before DIR``: each round first times a checkout of an earlier commit (``git worktree add
/tmp/before COMMIT``) the same way, in a subprocess importing it, and adds its columns.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from dynamixer_jax.data import augment
from dynamixer_jax.data.pipeline import TrainAugment, TrainData

BATCH = 32
FULL = "+ RandAugment m9-mstd0.5-inc1 (full recipe)"
# Random erasing is off but in the full recipe, as the ladder was when it ran on the host.
LADDER = {
    "decode + random resized crop": TrainAugment(
        hflip=0, rand_augment="", color_jitter=0, random_erase_prob=0
    ),
    "+ horizontal flip": TrainAugment(rand_augment="", color_jitter=0, random_erase_prob=0),
    FULL: TrainAugment(),
}
RECIPES = {
    **LADDER,
    "colour jitter 0.4 instead of RandAugment": TrainAugment(rand_augment="", random_erase_prob=0),
}
PLAIN = "plain map of train_preprocess (float)"
ONE_PROCESS = dict(
    global_batch_size=BATCH, image_size=224, seed=0, process_index=0, process_count=1
)


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Photo-like 500x375 images (smooth colour fields plus noise) as quality-90 JPEG bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 500.0
    jpegs = []
    for _ in range(count):
        phases, freqs = rng.uniform(0, 2 * np.pi, (3, 2)), rng.uniform(2, 12, (3, 2))
        channels = [
            np.sin(freqs[c, 0] * x + phases[c, 0]) * np.cos(freqs[c, 1] * y + phases[c, 1])
            for c in range(3)
        ]
        image = 127 + 100 * np.stack(channels, -1) + rng.normal(0, 8, (375, 500, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def write_folder(root: str, unique: int, total: int) -> None:
    """ROOT/train/<class>/<n>.JPEG: ``unique`` generated JPEGs, hard-linked up to ``total``."""
    jpegs = make_jpegs(unique)
    for index in range(total):
        path = os.path.join(root, "train", f"class_{index % 4}", f"{index:05d}.JPEG")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if index < unique:
            with open(path, "wb") as file:
                file.write(jpegs[index])
        else:
            n = index % unique
            os.link(os.path.join(root, "train", f"class_{n % 4}", f"{n:05d}.JPEG"), path)


def seconds_per_image(batches, images: int) -> tuple[float, float]:
    """(wall, CPU) seconds per image over ``images`` images, after two warm-up batches."""
    next(batches), next(batches)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(images // BATCH):
        next(batches)
    count = images // BATCH * BATCH
    return (time.perf_counter() - wall) / count, (time.process_time() - cpu) / count


def plain_map_batches(root: str):
    """The full recipe as one plain ``map`` (no protection against undecodable files)."""
    files = sorted(tf.io.gfile.glob(os.path.join(root, "train", "*", "*.JPEG")))
    dataset = (
        tf.data.Dataset.from_tensor_slices(files)
        .enumerate()
        .map(
            lambda i, path: augment.train_preprocess(
                tf.io.read_file(path), tf.stack([tf.constant(0, tf.int64), i]), 224
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(BATCH, drop_remainder=True)
        .prefetch(2)
    )
    return dataset.as_numpy_iterator()


def one_round(root: str, images: int) -> dict[str, tuple[float, float]]:
    """{recipe: (wall, CPU) seconds per image} of every recipe once, in order."""
    times = {}
    for name, recipe in RECIPES.items():
        data = TrainData(root, augment=recipe, **ONE_PROCESS)
        times[name] = seconds_per_image(data.batches(), images)
    times[PLAIN] = seconds_per_image(plain_map_batches(root), images)
    return times


def before_round(checkout: str, root: str, images: int) -> dict[str, tuple[float, float]]:
    """One round of the same measurement in a subprocess importing ``checkout``."""
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--images", str(images), "--worker", root],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": checkout},
    )
    return {name: tuple(value) for name, value in json.loads(output.stdout).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="timed images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="a checkout of an earlier commit to time alongside")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one round on this folder, as JSON
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(one_round(args.worker, args.images)))
        return
    cores, names = os.cpu_count() or 1, [*RECIPES, PLAIN]
    times, before = {name: [] for name in names}, {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, unique=128, total=args.images + 4 * BATCH)
        for round_index in range(args.rounds):
            if args.before:
                for name, value in before_round(args.before, root, args.images).items():
                    before[name].append(value)
            for name, value in one_round(root, args.images).items():
                times[name].append(value)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    def median(values, which):
        return statistics.median(value[which] for value in values)

    from benchlib import cpu_description  # not in --worker: it puts this checkout on sys.path

    cpu = cpu_description()
    print(
        f"training input at 224, batch {BATCH}, {cores} cores, median of {args.rounds} "
        "alternating rounds; uint8 out: normalisation and random erasing run in the train "
        "step, on device, and are not in these figures\n"
        f"CPU: {cpu['name']}; vector extensions: {' '.join(cpu['vector_extensions']) or 'none found'}"
    )
    header = (
        f"{'recipe':44s} {'img/s':>6s} {'/core':>6s} {'CPU ms/img':>10s} "
        f"{'img/s per CPU core':>18s} {'share':>6s}"
    )
    if args.before:
        header += f" {'before: /core':>13s} {'per CPU core':>12s} {'speed-up':>8s}"
    print(header)
    previous, full_cpu = 0.0, median(times[FULL], 1)
    for name in names:
        wall, cpu = median(times[name], 0), median(times[name], 1)
        share = ""
        if name in LADDER:
            share, previous = f"{(cpu - previous) / full_cpu:6.0%}", cpu
        line = (
            f"{name:44s} {1 / wall:6.0f} {1 / wall / cores:6.0f} {cpu * 1e3:10.2f} "
            f"{1 / cpu:18.0f} {share:>6s}"
        )
        if before[name]:
            then_wall, then_cpu = median(before[name], 0), median(before[name], 1)
            line += f" {1 / then_wall / cores:13.0f} {1 / then_cpu:12.0f} {then_cpu / cpu:7.2f}x"
        print(line)
    if args.before:
        print(
            f"before: {args.before} (float32 out; its full recipe also normalises and erases "
            "on the host); speed-up: ratio of CPU time per image"
        )


if __name__ == "__main__":
    main()
