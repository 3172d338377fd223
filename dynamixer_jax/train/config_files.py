"""Config files (``configs/*.py``) read from Python, as ``main.py --config=...`` reads them.

``load_config("configs/quickstart.py", batch_size=32)`` gives the ConfigDict of
``--config=configs/quickstart.py --config.batch_size=32``; nested fields take their dotted names,
``load_config(path, **{"mixup.cutmix_alpha": 0.0})``; ``"configs/imagenet.py:dynamixer_m"``
passes ``dynamixer_m`` to the file's ``get_config``, as ``config_flags`` does.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from dynamixer_jax.errors import ConfigError


def _module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"_dynamixer_config_{os.path.splitext(os.path.basename(path))[0]}", path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_field(config: Any, name: str) -> None:
    """ConfigError unless ``name`` (dotted) is a field of ``config``."""
    if "__" in name:
        raise ConfigError(
            f"override {name}: nested fields take dotted names, e.g. "
            f"load_config(path, **{{{name.replace('__', '.')!r}: ...}})"
        )
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise ConfigError(
                f"override {name}: the config has no such field "
                "(configs/default.py lists every field)"
            )
        node = node[part]


def load_config(path: str, **overrides: Any) -> Any:
    """The ``get_config()`` of a config file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked
    as the command line locks it, with ``overrides`` (dotted names for nested fields) applied.

    Configs may ``from configs import default``: the folder above the file is importable.
    """
    path, *argument = path.split(":", 1)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(f"no config file {path}")
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    config = _module(path).get_config(*argument)
    config.lock()
    for name in overrides:
        _check_field(config, name)
    try:
        config.update_from_flattened_dict(overrides)
    except TypeError as error:
        raise ConfigError(f"override: {error}") from None
    return config
