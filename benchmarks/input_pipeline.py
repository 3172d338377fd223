"""Training input throughput: images/s (and per core) of the whole tf.data pipeline.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--images 1024] [--rounds 3]

Writes an ImageNet-style folder of generated 500x375 quality-90 JPEGs to a temporary directory
and reads it with ``TrainData`` (the pipeline training uses), at 224, global batch 32, for a
ladder of recipes that adds one augmentation at a time: decode + random resized crop (the
baseline), + flip, + RandAugment, + random erasing (the full SPEC recipe). Each step's share
of the full recipe's time is the difference to the step before. The last line compares the
pipeline with a plain ``map`` of ``train_preprocess`` over the same files, which is the cost
of keeping undecodable files from stopping a run. Rounds alternate between the recipes (the
machine is noisy); the median round counts. Read the figures on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from augment_ops import make_jpegs  # noqa: E402

from dynamixer_jax.data import augment  # noqa: E402
from dynamixer_jax.data.pipeline import TrainAugment, TrainData  # noqa: E402

BATCH = 32
LADDER = {
    "decode + random resized crop": TrainAugment(hflip=0, rand_augment="", color_jitter=0,
                                                 random_erase_prob=0),
    "+ horizontal flip": TrainAugment(rand_augment="", color_jitter=0, random_erase_prob=0),
    "+ RandAugment m9-mstd0.5-inc1": TrainAugment(random_erase_prob=0),
    "+ random erasing 0.25 (full recipe)": TrainAugment(),
}
COLOUR_JITTER = TrainAugment(rand_augment="", random_erase_prob=0)


def write_folder(root: str, unique: int, total: int) -> None:
    """ROOT/train/<class>/<n>.JPEG: ``unique`` generated JPEGs, hard-linked up to ``total``."""
    jpegs = make_jpegs(unique)
    for index in range(total):
        directory = os.path.join(root, "train", f"class_{index % 4}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{index:05d}.JPEG")
        if index < unique:
            with open(path, "wb") as file:
                file.write(jpegs[index])
        else:
            source = os.path.join(root, "train", f"class_{index % unique % 4}",
                                  f"{index % unique:05d}.JPEG")
            os.link(source, path)


def seconds_per_image(batches, images: int) -> float:
    """Wall time per image over ``images`` images, after two warm-up batches."""
    next(batches), next(batches)
    start = time.perf_counter()
    for _ in range(images // BATCH):
        next(batches)
    return (time.perf_counter() - start) / (images // BATCH * BATCH)


def pipeline_batches(root: str, recipe: TrainAugment):
    return TrainData(root, global_batch_size=BATCH, image_size=224, seed=0, augment=recipe,
                     process_index=0, process_count=1).batches()


def plain_map_batches(root: str):
    """The full recipe as one plain ``map`` (no protection against undecodable files)."""
    files = tf.io.gfile.glob(os.path.join(root, "train", "*", "*.JPEG"))
    dataset = (tf.data.Dataset.from_tensor_slices(sorted(files)).enumerate()
               .map(lambda i, path: augment.train_preprocess(
                   tf.io.read_file(path), tf.stack([tf.constant(0, tf.int64), i]), 224),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .batch(BATCH, drop_remainder=True).prefetch(2))
    return dataset.as_numpy_iterator()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="timed images per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    recipes = {**LADDER, "colour jitter 0.4 instead of RandAugment": COLOUR_JITTER}
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, unique=128, total=args.images + 4 * BATCH)
        times = {name: [] for name in [*recipes, "plain map of train_preprocess"]}
        for round_index in range(args.rounds):
            for name, recipe in recipes.items():
                times[name].append(seconds_per_image(pipeline_batches(root, recipe),
                                                     args.images))
            times["plain map of train_preprocess"].append(
                seconds_per_image(plain_map_batches(root), args.images))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    median = {name: statistics.median(values) for name, values in times.items()}
    full = median["+ random erasing 0.25 (full recipe)"]
    baseline = median["decode + random resized crop"]
    print(f"training input at 224, batch {BATCH}, {cores} cores, median of {args.rounds} "
          "alternating rounds")
    print(f"{'recipe':42s} {'ms/img':>7s} {'img/s':>7s} {'/core':>6s} {'x base':>7s} "
          f"{'share':>6s}")
    previous = 0.0
    for name, seconds in median.items():
        share = ""
        if name in LADDER:
            share = f"{(seconds - previous) / full:6.0%}"
            previous = seconds
        print(f"{name:42s} {seconds * 1e3:7.2f} {1 / seconds:7.0f} {1 / seconds / cores:6.0f} "
              f"{seconds / baseline:7.2f} {share:>6s}")
    plain = median["plain map of train_preprocess"]
    print(f"pipeline / plain map, full recipe: {full / plain:.2f}x the time per image")


if __name__ == "__main__":
    main()
