"""What ``main.py`` does around the library calls: logging, config files, one-line errors.

:func:`load_config` also serves notebooks: ``load_config("configs/quickstart.py",
batch_size=32)`` gives the ConfigDict that ``--config=configs/quickstart.py
--config.batch_size=32`` would.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Callable

from dynamixer_jax.errors import DynaMixerError, TrainingDiverged

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


def setup_logging(level: int = logging.INFO) -> None:
    """Our progress lines on stderr as ``HH:MM:SS message``; other libraries' chatter at WARNING."""
    try:
        from absl import logging as absl_logging  # noqa: PLC0415
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # pragma: no cover
        pass
    logger = logging.getLogger("dynamixer_jax")
    logger.setLevel(level)
    if not any(getattr(handler, "_dynamixer", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._dynamixer = True  # noqa: SLF001
        logger.addHandler(handler)
    logger.propagate = False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TFDS's deprecation notices


def load_config(path: str, **overrides: Any):
    """The ``get_config()`` of a config file, with ``field=value`` (dotted names as ``a__b``)
    overrides applied; configs may ``from configs import default`` (their parent is importable)."""
    path = os.path.abspath(path)
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(
        f"_dynamixer_config_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for name, value in overrides.items():
        target, *parts = name.split("__")
        node = config
        for part in [target, *parts][:-1]:
            node = node[part]
        node[([target, *parts])[-1]] = value
    return config


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
