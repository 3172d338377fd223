"""What a person watching a run sees: a progress line, TensorBoard events and ``metrics.jsonl``.

* ``WORKDIR/metrics.jsonl``: one JSON object per line: every logged training step
  (``step``, ``train_loss``, ``learning_rate``, ``grad_norm``, and ``images_per_second`` and
  ``input_wait_fraction`` of the steady-state steps since the last line: absent on a line that
  has only the compiled first step) and every
  evaluation (``step``, ``eval_top1``, ``eval_top5``, ``eval_loss``, and the ``ema_``-prefixed
  three when the EMA is on). A resumed run first drops the lines after the restored step, so the
  file always tells one consistent history; lines that are no record (damaged bytes, a
  half-written line) are moved to ``metrics.jsonl.unreadable``.
* TensorBoard event files in ``WORKDIR`` (``tf.summary``'s file writer), the same scalars.
* The log: ``step 120/3000  loss 1.2345  lr 2.00e-03  812 img/s  input 3%  ETA 0:03:12``
  (``input``: the share of the time spent waiting for batches; one warning when it passes
  :data:`INPUT_BOUND`).

Only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
UNREADABLE_SUFFIX = ".unreadable"


def read_metrics(workdir: str) -> list[dict]:
    """Every record of ``WORKDIR/metrics.jsonl`` (lines that are not a JSON object with a
    numeric ``step``, such as a partly written last line or damaged bytes, are skipped)."""
    return _read_records(os.path.join(workdir, METRICS_FILE))[0]


def _read_records(path: str) -> tuple[list[dict], list[bytes]]:
    """The records of the metrics file ``path`` and the lines that are none (as bytes)."""
    records, unreadable = [], []
    if not os.path.exists(path):
        return records, unreadable
    with open(path, "rb") as file:
        for line in file:
            try:
                record = json.loads(line)  # bytes: UTF-8 expected, a decoding error is a ValueError
            except ValueError:
                record = None
            step = record.get("step") if isinstance(record, dict) else None
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                records.append(record)
            elif line.strip():
                unreadable.append(line)
    return records, unreadable


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, *, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.writer = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._truncate_after(start_step)
        # tf.summary itself, not clu's writer: clu's imports TensorBoard's hparams plugin, which
        # needs Keras, and main.py keeps Keras out of its process (1.1 s of every start).
        import tensorflow as tf  # noqa: PLC0415 (training only)

        self.writer = tf.summary.create_file_writer(workdir)

    def _truncate_after(self, step: int) -> None:
        """Keep only the records up to ``step`` (a resumed run replays what came after)."""
        if not os.path.exists(self.path):
            return
        records, unreadable = _read_records(self.path)
        if unreadable:  # kept aside, not lost
            with open(self.path + UNREADABLE_SUFFIX, "ab") as file:
                file.writelines(
                    line if line.endswith(b"\n") else line + b"\n" for line in unreadable
                )
            # A partly written last line alone is what a killed run leaves: no damage.
            partial = len(unreadable) == 1 and not unreadable[0].endswith(b"\n")
            (log.info if partial else log.warning)(
                "%d line(s) of %s are not metrics records (damaged or partly written): moved to %s",
                len(unreadable),
                self.path,
                self.path + UNREADABLE_SUFFIX,
            )
        kept = [record for record in records if record["step"] <= step]
        temporary = self.path + ".tmp"
        with open(temporary, "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(temporary, self.path)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """One record: ``{"step": step, **scalars}``."""
        if not self.enabled:
            return
        values = {key: float(value) for key, value in scalars.items()}
        with open(self.path, "a") as file:
            file.write(json.dumps({"step": int(step), **values}) + "\n")
            file.flush()
        import tensorflow as tf  # noqa: PLC0415 (imported by __init__ already)

        with self.writer.as_default(step=int(step)):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# A share of step time spent waiting for input above which the run says, once, that the input
# pipeline is the bottleneck (a steady step waits a little for every batch's transfer).
INPUT_BOUND = 0.2


@dataclasses.dataclass(frozen=True)
class Throughput:
    """One log interval's measure: images per second and the share of the wall time the loop
    spent waiting for input (next batch from tf.data, and its transfer to the devices); NaN
    when no steady step has been timed yet."""

    images_per_second: float
    input_wait_fraction: float


class Progress:
    """Throughput, input stalls and ETA between log lines, from steady-state steps only.

    The first step of a run (or of a resumed run) includes compiling it, which can take longer
    than a short run itself: the clock starts when that step is done (``step_done``), so the
    throughput and the ETA are the steady state's. Evaluation and saving are left out likewise
    (``restart``).
    """

    def __init__(self, start_step: int, total_steps: int, global_batch_size: int):
        self.total_steps, self.batch = total_steps, global_batch_size
        self.last_step, self.last_time = start_step, time.perf_counter()
        self.input_wait = 0.0
        self.compiled = False
        self.warned = False

    def step_done(self, step: int) -> None:
        """The host has seen ``step`` finish (its metrics are fetched)."""
        if not self.compiled:
            self.compiled = True
            self.restart(step)

    def waited_for_input(self, seconds: float) -> None:
        """The loop spent ``seconds`` getting the next batch onto the devices."""
        self.input_wait += seconds

    def restart(self, step: int) -> None:
        """Start the next interval at ``step`` now (after an evaluation, say)."""
        self.last_step, self.last_time, self.input_wait = step, time.perf_counter(), 0.0

    def measure(self, step: int) -> Throughput:
        """The interval since the previous call (or since the start), and start the next."""
        now = time.perf_counter()
        steps, seconds = step - self.last_step, now - self.last_time
        waited = self.input_wait
        self.last_step, self.last_time, self.input_wait = step, now, 0.0
        if steps <= 0 or seconds <= 0:
            return Throughput(math.nan, math.nan)
        result = Throughput(steps * self.batch / seconds, min(waited / seconds, 1.0))
        if result.input_wait_fraction > INPUT_BOUND and not self.warned:
            self.warned = True
            log.warning(
                "the input pipeline is the bottleneck: %.0f%% of the time up to step %d went to "
                "waiting for batches; give tf.data more cores (--config.data_threads) or see "
                "benchmarks/input_pipeline.py",
                100 * result.input_wait_fraction,
                step,
            )
        return result

    def line(self, step: int, loss: float, learning_rate: float, measured: Throughput) -> str:
        """``step 120/3000  loss 1.2345  lr 2.00e-03  812 img/s  input 3%  ETA 0:03:12``."""
        rate = measured.images_per_second
        if math.isfinite(rate) and rate > 0:
            remaining = (self.total_steps - step) * self.batch / rate
            shown = f"{rate:.0f} img/s  input {100 * measured.input_wait_fraction:.0f}%"
            eta = str(datetime.timedelta(seconds=int(remaining)))
        else:
            shown, eta = "? img/s", "?"
        return (
            f"step {step}/{self.total_steps}  loss {loss:.4f}  lr {learning_rate:.2e}  "
            f"{shown}  ETA {eta}"
        )
