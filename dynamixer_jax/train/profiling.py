"""A ``jax.profiler`` trace of chosen training steps, written into the workdir for TensorBoard.

``--config.profile_first_step=20 --config.profile_num_steps=5`` traces steps 20-24 into
``WORKDIR/plugins/profile/<time>/`` (``tensorboard --logdir WORKDIR``, Profile tab; or open the
``.trace.json.gz`` in Perfetto). Every step is annotated with its number
(``jax.profiler.StepTraceAnnotation``), so the trace viewer's step markers line up with the log.
clu's ``periodic_actions.Profile`` starts on a timer and repeats; here the steps are chosen, and
the trace ends only once the last of them has finished on the device (steps are queued ahead).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import jax

log = logging.getLogger(__name__)


class StepProfiler:
    """Traces steps ``first_step`` .. ``first_step + num_steps - 1`` (nothing if ``first_step``
    is None). Call :meth:`step` around each step and :meth:`finished` with the step's outputs."""

    def __init__(self, workdir: str, first_step: int | None, num_steps: int):
        self.workdir = workdir
        self.first_step = first_step
        self.last_step = None if first_step is None else first_step + max(num_steps, 1) - 1
        self.tracing = False

    def step(self, step: int) -> contextlib.AbstractContextManager:
        """The context to run step ``step`` in: starts the trace at the first chosen step and
        annotates every step while tracing."""
        if self.first_step is not None and step == self.first_step and not self.tracing:
            jax.profiler.start_trace(self.workdir)
            self.tracing = True
        if not self.tracing:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def finished(self, step: int, outputs: Any) -> None:
        """Step ``step`` was queued with ``outputs``; ends the trace after the last chosen step
        (waiting for it to finish on the device)."""
        if self.tracing and step >= self.last_step:
            jax.block_until_ready(outputs)
            self.close()
            log.info(
                "profiled steps %d-%d into %s/plugins/profile (tensorboard --logdir %s)",
                self.first_step,
                step,
                self.workdir,
                self.workdir,
            )

    def close(self) -> None:
        """End the trace if it is running (also when the run ends before its last step)."""
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
