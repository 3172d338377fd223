"""What ``main.py`` does around the library calls: logging setup and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from dynamixer_jax.errors import DynaMixerError, TrainingDiverged

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def setup_logging(level: int = logging.INFO) -> None:
    """Our progress lines on stderr as ``HH:MM:SS message``; other libraries' chatter at WARNING."""
    try:
        from absl import logging as absl_logging  # noqa: PLC0415 (absl may be absent)

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    logger = logging.getLogger("dynamixer_jax")
    logger.setLevel(level)
    if not any(getattr(handler, "_dynamixer", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._dynamixer = True
        logger.addHandler(handler)
    logger.propagate = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TFDS's deprecation notices


def run_reporting_errors(function: Callable[[], Any]) -> int:
    """Run ``function``; turn user errors and divergence into a one-line message and exit code."""
    try:
        function()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except DynaMixerError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
