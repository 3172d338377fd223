"""Config files (``configs/*.py``) read from Python, as ``main.py --config=...`` reads them.

``load_config("configs/quickstart.py", batch_size=32)`` gives the ConfigDict of
``--config=configs/quickstart.py --config.batch_size=32``; nested fields take their dotted names,
``load_config(path, **{"mixup.cutmix_alpha": 0.0})``; ``"configs/imagenet.py:dynamixer_m"``
passes ``dynamixer_m`` to the file's ``get_config``, as ``config_flags`` does.
:class:`ConfigReader` holds the rules of reading a config's fields, for ``plan.make_plan``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from dynamixer_jax.errors import ConfigError

# Fields whose "unset" used to be spelled -1; it is None now.
_UNSET_WAS_MINUS_ONE = ("num_classes", "eval_batch_size", "num_train_steps", "eval_every_steps")


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


class ConfigReader:
    """Reads a config strictly (every default is in configs/default.py, none here) and
    remembers which fields it read, so that the rest can be reported as unknown."""

    def __init__(self, config: Any):
        self.config, self.read = config, set()

    def __call__(self, name: str) -> Any:
        node = self.config
        for part in name.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError):
                raise ConfigError(
                    f"the config has no field {name}; start it from "
                    "configs/default.py, which lists every field"
                ) from None
        self.read.add(name)
        if name in _UNSET_WAS_MINUS_ONE and node is not None and node <= 0:
            raise ConfigError(
                f"{name} {node}: -1 no longer means unset; leave "
                f"--config.{name} out (unset, None, is the default)"
            )
        return tuple(node) if isinstance(node, list) else node

    def unknown(self) -> list[str]:
        """Fields of the config that nothing read (misspelt or from another version)."""
        names = []
        for name, value in self.config.items():
            if name in self.read:
                continue
            if hasattr(value, "items"):
                names += [f"{name}.{key}" for key in value if f"{name}.{key}" not in self.read]
            else:
                names.append(name)
        return sorted(names)
