"""Training and evaluation batches on tf.data, deterministic and multi-process.

:class:`TrainData` yields this process's share of every global training batch, as numpy:
``{"image": float32 (b, S, S, 3) normalised, "label": int32 (b,), "mask": bool (b,), "id": bytes
(b,)}`` where ``b = global_batch_size / process_count``. Batch ``k`` is a pure function of
``(seed, k)``: the example order of an epoch comes from the source (see ``sources.py``) and each
example's augmentation is seeded by its global position in the stream, so
``TrainData.batches(start_step=k)`` gives exactly what an uninterrupted run sees from step k,
without decoding the k steps before. Epochs drop their last partial batch.

:class:`EvalData` yields the whole eval split exactly once: the last batches are padded, and
``mask`` is False on padding, so nothing is dropped or repeated. Every process yields the same
number of batches (the jitted eval step runs on all of them together).

An image that cannot be decoded (a corrupt or truncated file) does not stop the run: it comes
out as a zero image with ``mask`` False, at its place in the batch, and is counted and named in
the log. Grey, CMYK and PNG-named-JPEG files decode to RGB. Mixup/CutMix and label smoothing
run on device, in ``dynamixer_jax.mixup``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from dynamixer_jax.data import augment
from dynamixer_jax.data.sources import DataError, FolderSource, TfdsSource, open_source

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """Per-image training augmentation (SPEC section 6 by default); a falsy field turns a step off.

    Fields are the keyword arguments of :func:`dynamixer_jax.data.augment.train_preprocess`
    (split between ``decode`` and ``augment``):
    ``scale=None`` resizes the whole image instead of a random resized crop; ``rand_augment``
    is a timm-style string (``""`` off, then ``color_jitter`` applies); ``random_erase_prob``
    0 turns random erasing off.
    """
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "random"
    hflip: float = 0.5
    rand_augment: str = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    random_erase_prob: float = 0.25
    random_erase_mode: str = "pixel"
    random_erase_count: int = 1
    mean: tuple[float, float, float] = augment.IMAGENET_MEAN
    std: tuple[float, float, float] = augment.IMAGENET_STD

    def __post_init__(self):
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise DataError(f"augment scale must satisfy 0 < low <= high <= 1, not {self.scale}")
        if self.interpolation not in ("random", "bilinear", "bicubic"):
            raise DataError("augment interpolation must be 'random', 'bilinear' or 'bicubic', "
                            f"not {self.interpolation!r}")
        for name in ("hflip", "random_erase_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise DataError(f"augment {name} is a probability in [0, 1], "
                                f"not {getattr(self, name)}")
        if self.rand_augment:
            from dynamixer_jax.data.rand_augment import parse_rand_augment
            try:
                parse_rand_augment(self.rand_augment)
            except ValueError as error:
                raise DataError(f"augment rand_augment: {error}") from None

    _DECODE_FIELDS = ("scale", "ratio", "interpolation")

    def decode(self, image_bytes: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
        """Decode and crop one encoded image: uint8 (size, size, 3). Can fail on bad bytes."""
        fields = {name: getattr(self, name) for name in self._DECODE_FIELDS}
        return augment.train_decode(image_bytes, seed, size, **fields)

    def augment(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The rest of the recipe on a decoded crop: float32, normalised. Never fails."""
        fields = {name: value for name, value in dataclasses.asdict(self).items()
                  if name not in self._DECODE_FIELDS}
        return augment.train_augment(image, seed, **fields)


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this process: given, or asked of JAX (imported only when needed)."""
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataError(f"batch_size {global_batch_size} must be a positive multiple of the "
                        f"number of processes ({process_count})")
    return global_batch_size // process_count


def _decode_safely(records: tf.data.Dataset, count: int, decode, finish, size: int,
                   ids: np.ndarray | None = None) -> tf.data.Dataset:
    """Turn ``count`` records into examples, in order: ``decode`` (bytes -> uint8 image; the
    step that can fail) then ``finish`` (-> float32). A record that fails to read or decode,
    or is padding (``real`` False), becomes a zero image with ``mask`` False at its place.

    tf.data can only drop a failing element (``ignore_errors``), which would shift every later
    batch. So the examples are numbered before the parallel map, failures are dropped, and a
    ``scan`` puts a blank back into each gap the numbering shows (a sentinel numbered
    ``count`` closes a gap at the end). The blank's id comes from ``ids`` when the source knows
    them (folders), else it is empty.
    """
    zeros = tf.zeros([size, size, 3], tf.float32)
    reads_files = "path" in records.element_spec

    def example(number, record):
        def load():
            data = tf.io.read_file(record["path"]) if reads_files else record["image"]
            return finish(decode(data, record), record)

        return {"number": number, "image": tf.cond(record["real"], load, lambda: zeros),
                "mask": record["real"], "label": tf.cast(record["label"], tf.int32),
                "id": record["id"], "real": record["real"]}

    # The augmentation is written in graph-safe TF (tf.cond, no Python branches on tensors), so
    # AutoGraph has nothing to convert; skipping it saves ~10 s of tracing per pipeline.
    examples = records.enumerate().map(tf.autograph.experimental.do_not_convert(example),
                                       num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True).ignore_errors()
    sentinel = {"number": tf.constant(count, tf.int64), "image": zeros,
                "mask": tf.constant(False), "label": tf.constant(0, tf.int32),
                "id": tf.constant(b""), "real": tf.constant(False)}
    examples = examples.concatenate(tf.data.Dataset.from_tensors(sentinel))
    id_table = tf.constant(ids if ids is not None and len(ids) else [b""])

    def fill_gap(expected, example):
        gap = tf.cast(example["number"] - expected, tf.int32)
        gap_ids = (tf.gather(id_table, tf.range(expected, example["number"])) if ids is not None
                   else tf.fill([gap], b""))
        filled = {
            "image": tf.concat([tf.zeros(tf.stack([gap, size, size, 3])),
                                example["image"][None]], 0),
            "mask": tf.concat([tf.zeros([gap], tf.bool), [example["mask"]]], 0),
            "label": tf.concat([tf.zeros([gap], tf.int32), [example["label"]]], 0),
            "id": tf.concat([gap_ids, [example["id"]]], 0),
            "real": tf.concat([tf.ones([gap], tf.bool), [example["real"]]], 0),
            "sentinel": tf.concat([tf.zeros([gap], tf.bool), [example["number"] == count]], 0),
        }
        return example["number"] + 1, filled

    filled = examples.scan(tf.constant(0, tf.int64), fill_gap).unbatch()
    return filled.filter(lambda e: tf.logical_not(e["sentinel"])).map(
        lambda e: {key: value for key, value in e.items() if key != "sentinel"})


def _options(threads: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
    return options


class _SkipCounter:
    """Counts and logs the examples that could not be decoded."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0

    def check(self, batch: dict) -> dict:
        bad = batch["real"] & ~batch["mask"]
        if bad.any():
            names = [name.decode(errors="replace") for name in batch["id"][bad]]
            self.count += len(names)
            log.warning("%s: skipped %d undecodable image(s) (%d so far): %s", self.what,
                        len(names), self.count, ", ".join(names[:5]))
        del batch["real"]
        return batch


class TrainData:
    """This process's stream of training batches (see the module docstring)."""

    def __init__(self, dataset: str | TfdsSource | FolderSource, *, global_batch_size: int,
                 image_size: int, seed: int = 0, split: str = "train",
                 augment: TrainAugment = TrainAugment(), data_dir: str | None = None,
                 shuffle_buffer_size: int = 10_000, process_index: int | None = None,
                 process_count: int | None = None, threads: int | None = None,
                 prefetch_batches: int = 2):
        self.source = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
        self.process_index, self.process_count = _process_info(process_index, process_count)
        self.local_batch_size = _local_batch_size(global_batch_size, self.process_count)
        self.global_batch_size = global_batch_size
        self.image_size, self.seed, self.split, self.augment = image_size, seed, split, augment
        self.shuffle_buffer_size, self.threads = shuffle_buffer_size, threads
        self.prefetch_batches = prefetch_batches
        self.num_classes = self.source.num_classes
        self.num_examples = self.source.num_examples(split)
        self.steps_per_epoch = self.source.steps_per_epoch(split, global_batch_size,
                                                           self.process_count)
        if self.steps_per_epoch < 1:
            raise DataError(f"split {split!r} of {self.source.name} has {self.num_examples} "
                            f"examples, fewer than one global batch of {global_batch_size} "
                            f"({self.process_count} process(es)); lower batch_size")
        self.skipped = _SkipCounter(f"{self.source.name}/{split}")

    def epoch_dataset(self, epoch: int, start_step: int = 0) -> tf.data.Dataset:
        """The batches of steps ``start_step..steps_per_epoch-1`` of ``epoch`` (0-based)."""
        b, steps = self.local_batch_size, self.steps_per_epoch
        records, ids = self.source.train_records(
            self.split, seed=self.seed, epoch=epoch, process_index=self.process_index,
            process_count=self.process_count, local_batch_size=b, steps_per_epoch=steps,
            start_step=start_step, shuffle_buffer_size=self.shuffle_buffer_size)
        # The global stream position of each record: its augmentation seed.
        steps_done = epoch * steps + np.arange(start_step, steps, dtype=np.int64)
        positions = (steps_done[:, None] * self.global_batch_size + self.process_index * b
                     + np.arange(b, dtype=np.int64)[None, :]).reshape(-1)
        records = tf.data.Dataset.zip(records, tf.data.Dataset.from_tensor_slices(positions))
        seed, size, recipe = self.seed, self.image_size, self.augment
        records = records.map(lambda r, position: {
            **r, "seed": tf.stack([tf.constant(seed, tf.int64), position]), "real": True})
        batches = _decode_safely(records, len(positions),
                                 lambda data, r: recipe.decode(data, r["seed"], size),
                                 lambda image, r: recipe.augment(image, r["seed"]), size, ids)
        batches = batches.batch(b, drop_remainder=True).prefetch(self.prefetch_batches)
        return batches.with_options(_options(self.threads))

    def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start_step, start_step + 1, ...`` forever (numpy, this process's share)."""
        epoch, step_in_epoch = divmod(start_step, self.steps_per_epoch)
        while True:
            for batch in self.epoch_dataset(epoch, step_in_epoch).as_numpy_iterator():
                yield self.skipped.check(batch)
            epoch, step_in_epoch = epoch + 1, 0


class EvalData:
    """The whole eval split once, in padded batches (see the module docstring)."""

    def __init__(self, dataset: str | TfdsSource | FolderSource, *, global_batch_size: int,
                 image_size: int, crop_fraction: float = 0.875, split: str = "validation",
                 mean: Sequence[float] = augment.IMAGENET_MEAN,
                 std: Sequence[float] = augment.IMAGENET_STD, data_dir: str | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 threads: int | None = None):
        if not 0 < crop_fraction <= 1:
            raise DataError(f"crop_fraction must be in (0, 1], not {crop_fraction}")
        self.source = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
        self.process_index, self.process_count = _process_info(process_index, process_count)
        self.local_batch_size = _local_batch_size(global_batch_size, self.process_count)
        self.image_size, self.crop_fraction, self.split = image_size, crop_fraction, split
        self.mean, self.std, self.threads = tuple(mean), tuple(std), threads
        self.num_classes = self.source.num_classes
        self.num_examples = self.source.num_examples(split)
        largest_share = -(-self.num_examples // self.process_count)
        self.num_batches = -(-largest_share // self.local_batch_size)
        self.skipped = _SkipCounter(f"{self.source.name}/{split}")

    def dataset(self) -> tf.data.Dataset:
        """This process's eval batches, padded to ``num_batches`` full batches."""
        records, count, ids = self.source.eval_records(
            self.split, process_index=self.process_index, process_count=self.process_count)
        records = records.map(lambda r: {**r, "real": True})
        total = self.num_batches * self.local_batch_size
        pad = {key: tf.zeros([], spec.dtype) for key, spec in records.element_spec.items()}
        records = records.concatenate(tf.data.Dataset.from_tensors(pad).repeat(total - count))
        if ids is not None:
            ids = np.concatenate([ids, np.full(total - count, b"", dtype=ids.dtype)])
        size, crop, mean, std = self.image_size, self.crop_fraction, self.mean, self.std
        batches = _decode_safely(
            records, total, lambda data, r: augment.eval_preprocess(data, size, crop),
            lambda image, r: augment.normalize(image, mean, std), size, ids)
        batches = batches.batch(self.local_batch_size, drop_remainder=True).prefetch(2)
        return batches.with_options(_options(self.threads))

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The eval batches once (numpy, this process's share; ``mask`` False on padding)."""
        for batch in self.dataset().as_numpy_iterator():
            yield self.skipped.check(batch)
