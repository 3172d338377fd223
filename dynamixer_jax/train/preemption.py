"""Preemption: SIGTERM (how Cloud TPU VMs and spot GPU instances announce it) or Ctrl-C becomes
a checkpoint.

A single process catches SIGTERM and SIGINT itself and the training loop polls
:meth:`requested` between steps; a second Ctrl-C stops at once (``KeyboardInterrupt``), without
saving. Several processes must all stop at the same step (a checkpoint is a collective write), so
there the loop asks JAX's preemption sync manager, which ``jax.distributed.initialize`` starts
and which turns a SIGTERM on any host into one agreed step on all of them.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatch:
    """Notices SIGTERM (and, in one process, Ctrl-C); ``requested(step)`` is True on every
    process at the same step. ``reason`` says which: "preempted" or "interrupted"."""

    def __init__(self):
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1
        self.reason = "preempted"

    def __enter__(self) -> PreemptionWatch:
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        del frame
        if signum == signal.SIGINT:
            if self._event.is_set():
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            self.reason = "interrupted"
        self._event.set()

    def requested(self, step: int) -> bool:
        """Whether to checkpoint and stop now, before running ``step``."""
        if self._multi:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._event.is_set()
