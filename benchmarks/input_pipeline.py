"""Training input throughput of the tf.data pipeline: images/s, and images per second of CPU time.

Reads generated JPEGs with ``TrainData`` (what training uses) for a ladder of recipes that adds
one augmentation at a time; rounds alternate between recipes, medians count; ``share`` is the
CPU time a step adds, over the whole recipe's. What it measures and the figures: README, "Data".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from benchlib import cpu_description, cpu_line, table_header, table_row
from dynamixer_jax.data.pipeline import TrainAugment, TrainData

BATCH = 32
FULL = "+ RandAugment m9-mstd0.5-inc1 (full recipe)"
# Random erasing is off but in the full recipe, as the ladder was when it ran on the host.
PLAIN = dict(rand_augment="", color_jitter=0, random_erase_prob=0)
RECIPES = {
    "decode + random resized crop": TrainAugment(hflip=0, **PLAIN),
    "+ horizontal flip": TrainAugment(**PLAIN),
    FULL: TrainAugment(),
}
ONE_PROCESS = dict(
    global_batch_size=BATCH, image_size=224, seed=0, process_index=0, process_count=1
)


def write_folder(root: str, unique: int, total: int) -> None:
    """ROOT/train/<class>/<n>.JPEG: ``unique`` photo-like 500x375 images (smooth colour fields
    plus noise) as quality-90 JPEGs, hard-linked up to ``total`` files."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500] / 500.0
    for index in range(total):
        path = os.path.join(root, "train", f"class_{index % 4}", f"{index:05d}.JPEG")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if index < unique:
            phases, freqs = rng.uniform(0, 2 * np.pi, (3, 2)), rng.uniform(2, 12, (3, 2))
            channels = [
                np.sin(freqs[c, 0] * x + phases[c, 0]) * np.cos(freqs[c, 1] * y + phases[c, 1])
                for c in range(3)
            ]
            image = 127 + 100 * np.stack(channels, -1) + rng.normal(0, 8, (375, 500, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="timed images per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name in RECIPES}
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, unique=128, total=args.images + 4 * BATCH)
        for round_index in range(args.rounds):
            for name, recipe in RECIPES.items():  # every recipe once a round, in order
                data = TrainData(root, augment=recipe, **ONE_PROCESS)
                times[name].append(seconds_per_image(data.batches(), args.images))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    cores = os.cpu_count() or 1
    print(
        f"training input at 224, batch {BATCH}, median of {args.rounds} alternating rounds; "
        "uint8 out: normalisation and random erasing run in the train step, on device, and are "
        f"not in these figures\n{cpu_line(cpu_description())}"
    )
    print(table_header(["recipe", "img/s", "/core", "CPU ms/img", "img/s per CPU core", "share"]))
    previous, full_cpu = 0.0, statistics.median(cpu for _, cpu in times[FULL])
    for name, measured in times.items():
        wall, cpu = (statistics.median(column) for column in zip(*measured))
        share, previous = (cpu - previous) / full_cpu, cpu
        rates = [f"{1 / wall:.0f}", f"{1 / wall / cores:.0f}", f"{cpu * 1e3:.2f}", f"{1 / cpu:.0f}"]
        print(table_row([name, *rates, f"{share:.0%}"]))


if __name__ == "__main__":
    main()
