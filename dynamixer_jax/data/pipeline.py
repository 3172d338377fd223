"""Training and evaluation batches on tf.data, deterministic and multi-process.

:class:`TrainData` yields this process's share of every global training batch, as numpy:
``{"image": uint8 (b, S, S, 3), "label": int32 (b,), "mask": bool (b,), "id": bytes (b,)}``
where ``b = global_batch_size / process_count``. Images stay uint8 (a quarter of float32's
bytes): normalisation and random erasing run on device in the train step
(``dynamixer_jax.data.device_augment``), and the eval step normalises the (uint8) eval batches.
Batch ``k`` is a pure function of ``(seed, k)``: the example order of an epoch comes from the
source (see ``sources.py``) and each example's augmentation is seeded by its global position
in the stream, so ``TrainData.batches(start_step=k)`` gives exactly what an uninterrupted run
sees from step k, without decoding the k steps before. Epochs drop their last partial batch. Each epoch's
pipeline is built from functions traced once, and in the background while the epoch before it
is read, so an epoch boundary costs the training loop nothing.

:class:`EvalData` yields the whole eval split exactly once: the last batches are padded, and
``mask`` is False on padding, so nothing is dropped or repeated. Every process yields the same
number of batches (the jitted eval step runs on all of them together).

An image that cannot be decoded (a corrupt or truncated file) does not stop the run: it comes
out as a zero image with ``mask`` False, at its place in the batch, and is counted and named in
the log (``damaged.py``, on the host, per batch). Grey, CMYK and PNG-named-JPEG files decode
to RGB. Mixup/CutMix and label smoothing run on device, in ``dynamixer_jax.data.mixup``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from dynamixer_jax.data import damaged
from dynamixer_jax.data.augment import train_augment
from dynamixer_jax.data.decode import eval_preprocess, train_decode
from dynamixer_jax.data.recipe import TrainAugment
from dynamixer_jax.data.sources import FolderSource, TfdsSource, open_source
from dynamixer_jax.errors import DataError

__all__ = ["TrainAugment", "TrainData", "EvalData"]  # TrainAugment: re-exported, its old home

log = logging.getLogger(__name__)


def _process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count) of this process: given, or asked of JAX."""
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise DataError(
            f"batch_size {global_batch_size} must be a positive multiple of the "
            f"number of processes ({process_count})"
        )
    return global_batch_size // process_count


def _options(threads: int | None) -> tf.data.Options:
    """Deterministic order; parallel steps as wide as the thread pool, fixed rather than tuned.

    tf.data's autotuner runs a thread per iterator that sleeps between tunings (doubling up to
    a minute), and destroying the iterator waits for that sleep to end whenever the thread
    wakes to its cancellation before the cancellation is complete (a race in TensorFlow,
    ``docs/studies.md``): the end of every epoch and every evaluation could stall the training
    loop for up to a minute. What it would tune is fixed instead: each ``AUTOTUNE`` map runs as
    many calls at once as the pool has threads (the tuner's ceiling); prefetch depths are ours.
    """
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = False
    options.autotune.initial_parallelism = threads or os.cpu_count() or 1
    if threads:
        options.threading.private_threadpool_size = threads
    return options


def _traced_once(decode, augment, size: int):
    """``decode`` (bytes, seed -> uint8 image) and ``augment`` (image, seed -> image) as graph
    functions with fixed signatures, so every pipeline built from them reuses one trace."""
    seed = tf.TensorSpec([2], tf.int64)
    image = tf.TensorSpec([size, size, 3], tf.uint8)
    return (
        tf.function(decode, input_signature=(tf.TensorSpec([], tf.string), seed), autograph=False),
        tf.function(augment, input_signature=(image, seed), autograph=False),
    )


class TrainData:
    """This process's stream of training batches (see the module docstring)."""

    def __init__(
        self,
        dataset: str | TfdsSource | FolderSource,
        *,
        global_batch_size: int,
        image_size: int,
        seed: int = 0,
        split: str = "train",
        augment: TrainAugment = TrainAugment(),
        data_dir: str | None = None,
        shuffle_buffer_size: int = 10_000,
        process_index: int | None = None,
        process_count: int | None = None,
        threads: int | None = None,
        prefetch_batches: int = 2,
    ):
        self.source = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
        self.process_index, self.process_count = _process_info(process_index, process_count)
        self.local_batch_size = _local_batch_size(global_batch_size, self.process_count)
        self.global_batch_size = global_batch_size
        self.image_size, self.seed, self.split, self.augment = image_size, seed, split, augment
        self.shuffle_buffer_size, self.threads = shuffle_buffer_size, threads
        self.prefetch_batches = prefetch_batches
        self.num_classes = self.source.num_classes
        self.num_examples = self.source.num_examples(split)
        self.steps_per_epoch = self.source.steps_per_epoch(
            split, global_batch_size, self.process_count
        )
        if self.steps_per_epoch < 1:
            raise DataError(
                f"split {split!r} of {self.source.name} has {self.num_examples} "
                f"examples, fewer than one global batch of {global_batch_size} "
                f"({self.process_count} process(es)); lower batch_size"
            )
        self.skipped = damaged.SkipCounter(f"{self.source.name}/{split}")
        # Traced once, not once per epoch's pipeline: RandAugment's graph takes ~2 s of Python
        # to trace, which stalled training at every epoch boundary.
        self._decode, self._augment = _traced_once(
            lambda data, seed: train_decode(data, seed, image_size, augment),
            lambda image, seed: train_augment(image, seed, augment),
            image_size,
        )

    def epoch_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """The batches of steps ``start_step..steps_per_epoch-1`` of ``epoch`` (0-based), with
        ``real`` (True but for padding)."""
        batches, count, ids = self.epoch_dataset(epoch, start_step)
        b, size = self.local_batch_size, self.image_size
        return damaged.fill_gaps(batches.as_numpy_iterator(), count, b, size, ids)

    def epoch_dataset(
        self, epoch: int, start_step: int = 0
    ) -> tuple[tf.data.Dataset, int, np.ndarray | None]:
        """What :meth:`epoch_batches` reads: the tf.data pipeline of batched, numbered examples
        (a failed one missing), how many examples it holds and their ids (None for TFDS)."""
        b, steps = self.local_batch_size, self.steps_per_epoch
        records, ids = self.source.train_records(
            self.split,
            seed=self.seed,
            epoch=epoch,
            process_index=self.process_index,
            process_count=self.process_count,
            local_batch_size=b,
            steps_per_epoch=steps,
            start_step=start_step,
            shuffle_buffer_size=self.shuffle_buffer_size,
        )
        # The global stream position of each record: its augmentation seed.
        steps_done = epoch * steps + np.arange(start_step, steps, dtype=np.int64)
        positions = (
            steps_done[:, None] * self.global_batch_size
            + self.process_index * b
            + np.arange(b, dtype=np.int64)[None, :]
        ).reshape(-1)
        records = tf.data.Dataset.zip(records, tf.data.Dataset.from_tensor_slices(positions))
        seed, size = self.seed, self.image_size
        records = records.map(
            lambda r, position: {
                **r,
                "seed": tf.stack([tf.constant(seed, tf.int64), position]),
                "real": True,
            }
        )
        batches = damaged.decode_in_order(
            records,
            lambda data, r: self._decode(data, r["seed"]),
            lambda image, r: self._augment(image, r["seed"]),
            size,
            b,
        )
        batches = batches.prefetch(self.prefetch_batches).with_options(_options(self.threads))
        return batches, len(positions), ids

    def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start_step, start_step + 1, ...`` forever (numpy, this process's share)."""
        epoch, step_in_epoch = divmod(start_step, self.steps_per_epoch)
        # Each epoch's pipeline is built (and starts decoding) in the background while the
        # epoch before it is consumed: starting a tf.data iterator takes ~1 s of the runtime's
        # own work, which would otherwise stall training at every epoch boundary.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="next-epoch") as ahead:
            upcoming = ahead.submit(self.epoch_batches, epoch, step_in_epoch)
            while True:
                current, upcoming = upcoming.result(), ahead.submit(self.epoch_batches, epoch + 1)
                for batch in current:
                    yield self.skipped.check(batch)
                epoch += 1


class EvalData:
    """The whole eval split once, in padded batches (see the module docstring)."""

    def __init__(
        self,
        dataset: str | TfdsSource | FolderSource,
        *,
        global_batch_size: int,
        image_size: int,
        crop_fraction: float = 0.875,
        split: str = "validation",
        data_dir: str | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        threads: int | None = None,
    ):
        self.source = open_source(dataset, data_dir) if isinstance(dataset, str) else dataset
        self.process_index, self.process_count = _process_info(process_index, process_count)
        self.local_batch_size = _local_batch_size(global_batch_size, self.process_count)
        self.image_size, self.crop_fraction, self.split = image_size, crop_fraction, split
        self.threads = threads
        # Traced once for all the evaluations of a run (as TrainData's functions).
        self._preprocess = tf.function(
            lambda data: eval_preprocess(data, image_size, crop_fraction),
            input_signature=(tf.TensorSpec([], tf.string),),
            autograph=False,
        )
        self.num_classes = self.source.num_classes
        self.num_examples = self.source.num_examples(split)
        largest_share = -(-self.num_examples // self.process_count)
        self.num_batches = -(-largest_share // self.local_batch_size)
        self.skipped = damaged.SkipCounter(f"{self.source.name}/{split}")

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The eval batches once (numpy, this process's share; ``mask`` False on padding)."""
        batches, total, ids = self.dataset()
        b, size = self.local_batch_size, self.image_size
        for batch in damaged.fill_gaps(batches.as_numpy_iterator(), total, b, size, ids):
            yield self.skipped.check(batch)

    def dataset(self) -> tuple[tf.data.Dataset, int, np.ndarray | None]:
        """What :meth:`batches` reads: the tf.data pipeline of batched, numbered examples with
        the padding (a failed one missing), how many it holds and their ids (None for TFDS)."""
        records, count, ids = self.source.eval_records(
            self.split, process_index=self.process_index, process_count=self.process_count
        )
        records = records.map(lambda r: {**r, "real": True})
        total = self.num_batches * self.local_batch_size
        pad = {key: tf.zeros([], spec.dtype) for key, spec in records.element_spec.items()}
        records = records.concatenate(tf.data.Dataset.from_tensors(pad).repeat(total - count))
        if ids is not None:
            ids = np.concatenate([ids, np.full(total - count, b"", dtype=ids.dtype)])
        size, b = self.image_size, self.local_batch_size
        batches = damaged.decode_in_order(
            records,
            lambda data, r: self._preprocess(data),
            lambda image, r: image,
            size,
            b,
        )
        return batches.prefetch(2).with_options(_options(self.threads)), total, ids
