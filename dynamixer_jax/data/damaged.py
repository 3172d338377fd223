"""Images that cannot be decoded: skipped without shifting any later batch, and reported.

tf.data can only drop a failing element (``ignore_errors``), which would shift every later
batch and break the rule that batch ``k`` is a pure function of ``(seed, k)``. So each example
carries its number in the stream (:func:`decode_in_order`), and :func:`fill_gaps` puts a masked
blank back into each gap on the host, batch by batch; :class:`SkipCounter` logs what was
skipped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


def decode_in_order(
    records: tf.data.Dataset, decode, finish, size: int, batch_size: int
) -> tf.data.Dataset:
    """Turn records into uint8 examples, in order, batched: ``decode`` (bytes -> uint8 image; the
    step that can fail) then ``finish`` (uint8 -> uint8). A padding record (``real`` False)
    becomes a zero image with ``mask`` False. A record that fails to read or decode is dropped.

    tf.data can only drop a failing element (``ignore_errors``), which would shift every later
    batch. So each example carries its ``number`` in the stream, and :func:`fill_gaps` puts a
    blank back into each gap, on the host, batch by batch: far cheaper than doing it per
    element in tf.data, and nothing at all when no record failed.
    """
    zeros = tf.zeros([size, size, 3], tf.uint8)
    reads_files = "path" in records.element_spec

    def example(number, record):
        def load():
            data = tf.io.read_file(record["path"]) if reads_files else record["image"]
            return finish(decode(data, record), record)

        return {
            "number": number,
            "image": tf.cond(record["real"], load, lambda: zeros),
            "mask": record["real"],
            "label": tf.cast(record["label"], tf.int32),
            "id": record["id"],
            "real": record["real"],
        }

    # The augmentation is written in graph-safe TF (tf.cond, no Python branches on tensors), so
    # AutoGraph has nothing to convert; skipping it saves ~10 s of tracing per pipeline.
    examples = (
        records.enumerate()
        .map(
            tf.autograph.experimental.do_not_convert(example),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
    )
    return examples.batch(batch_size)


def blank_batch(start: int, batch_size: int, size: int, ids: np.ndarray | None) -> dict:
    """Examples ``start .. start + batch_size - 1`` as failed ones: zero images, ``mask`` False,
    ``real`` True, ids from ``ids`` (indexed by stream number) or empty."""
    numbers = np.arange(start, start + batch_size)
    return {
        "image": np.zeros((batch_size, size, size, 3), np.uint8),
        "mask": np.zeros(batch_size, bool),
        "label": np.zeros(batch_size, np.int32),
        "id": (
            ids[numbers].astype(object) if ids is not None else np.full(batch_size, b"", object)
        ),
        "real": np.ones(batch_size, bool),
    }


def fill_gaps(
    batches: Iterable[dict], count: int, batch_size: int, size: int, ids: np.ndarray | None = None
) -> Iterator[dict]:
    """Exact batches of examples ``0 .. count - 1`` from batches of the numbered examples that
    survived (``decode_in_order``): example ``n`` is row ``n % batch_size`` of batch
    ``n // batch_size``, and a missing number becomes a blank (``blank_batch``). ``count`` is
    a multiple of ``batch_size``."""
    start, rows = 0, None  # rows: survivors not yet placed, numbers >= start
    for batch in itertools.chain(batches, [None]):
        numbers = None if batch is None else batch.pop("number")
        if (
            rows is None
            and batch is not None
            and len(numbers) == batch_size
            and numbers[0] == start
            and numbers[-1] == start + batch_size - 1
        ):
            yield batch  # the usual case: nothing failed
            start += batch_size
            continue
        if batch is not None:
            batch["number"] = numbers
            rows = (
                batch
                if rows is None
                else {key: np.concatenate([rows[key], batch[key]]) for key in rows}
            )
        # A batch is complete once a later number arrived, or the stream ended.
        while start < count and (
            batch is None or (rows is not None and rows["number"][-1] >= start + batch_size - 1)
        ):
            filled = blank_batch(start, batch_size, size, ids)
            if rows is not None:
                here = rows["number"] < start + batch_size
                for key, value in filled.items():
                    value[rows["number"][here] - start] = rows[key][here]
                rows = {key: value[~here] for key, value in rows.items()}
                rows = rows if len(rows["number"]) else None
            yield filled
            start += batch_size


class SkipCounter:
    """Counts and logs the examples that could not be decoded."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0

    def check(self, batch: dict) -> dict:
        bad = batch["real"] & ~batch["mask"]
        if bad.any():
            names = [name.decode(errors="replace") for name in batch["id"][bad]]
            self.count += len(names)
            log.warning(
                "%s: skipped %d undecodable image(s) (%d so far): %s",
                self.what,
                len(names),
                self.count,
                ", ".join(names[:5]),
            )
        del batch["real"]
        return batch
