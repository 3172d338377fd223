"""Keeps Orbax's and TensorStore's internals off the user's screen.

Every checkpoint failure (a damaged checkpoint, a failed save) is reported by
``checkpoint_reading.py`` or ``train/checkpoints.py`` as one line. What Orbax would print
around it is dropped here:

* its own log records (it logs through absl, i.e. Python's ``absl`` logger), below CRITICAL;
* asyncio's "exception was never retrieved" records for Orbax's abandoned tasks;
* the "unraisable" exceptions of work left in flight when Orbax gives up on a save or a
  restore: TensorStore callbacks into Orbax's closed event loop ("Event loop is closed") and
  Orbax coroutines that died with the error already reported.

Anything else reaches the handlers and hooks that were there before. :func:`install` is
idempotent.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

_ORBAX_DIR = f"{os.sep}orbax{os.sep}"


def _mentions_orbax(exc_info: Any) -> bool:
    if not exc_info or exc_info[2] is None:
        return False
    return any(_ORBAX_DIR in frame.filename for frame in traceback.extract_tb(exc_info[2]))


class _OrbaxRecords(logging.Filter):
    """Drops Orbax's own records below CRITICAL and asyncio's records about Orbax's tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        if _ORBAX_DIR in record.pathname:
            return False
        text = record.getMessage()
        return not (_ORBAX_DIR in text or "orbax" in text or _mentions_orbax(record.exc_info))


def _is_orbax_leftover(unraisable: Any) -> bool:
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True  # a TensorStore callback into the loop of a save or restore that gave up
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and _ORBAX_DIR in code.co_filename


class _UnraisableFilter:
    """``sys.unraisablehook`` that drops Orbax's leftovers and passes on the rest."""

    def __init__(self, previous: Any):
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not _is_orbax_leftover(unraisable):
            self.previous(unraisable)


def install() -> None:
    """Put the filters in place (once per process)."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _OrbaxRecords) for existing in logger.filters):
            logger.addFilter(_OrbaxRecords())
    if not isinstance(sys.unraisablehook, _UnraisableFilter):
        sys.unraisablehook = _UnraisableFilter(sys.unraisablehook)
