"""Preemption: SIGTERM (how Cloud TPU VMs and spot GPU instances announce it) becomes a checkpoint.

A single process catches SIGTERM itself and the training loop polls :meth:`requested` between
steps. Several processes must all stop at the same step (a checkpoint is a collective write), so
there the loop asks JAX's preemption sync manager, which ``jax.distributed.initialize`` starts
and which turns a SIGTERM on any host into one agreed step on all of them.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Notices SIGTERM; ``requested(step)`` is True on every process at the same step."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        self._multi = jax.process_count() > 1

    def __enter__(self) -> PreemptionWatch:
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self._event.set()

    def requested(self, step: int) -> bool:
        """Whether to checkpoint and stop now, before running ``step``."""
        if self._multi:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._event.is_set()
