"""Config files (``configs/*.py``) read from Python, as ``main.py --config=...`` reads them.

``load_config("configs/quickstart.py", batch_size=32)`` gives the ConfigDict of
``--config=configs/quickstart.py --config.batch_size=32``; nested fields take their dotted names,
``load_config(path, **{"mixup.cutmix_alpha": 0.0})``; ``"configs/imagenet.py:dynamixer_m"``
passes ``dynamixer_m`` to the file's ``get_config``, as ``config_flags`` did. Every problem is a
one-line :class:`ConfigError` that names the field, or the file and its line.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import sys
import traceback
from typing import Any

from dynamixer_jax.errors import ConfigError


def check_field(config: Any, name: str, flag: str | None = None) -> None:
    """ConfigError unless ``name`` (dotted) is a field of ``config``, naming the closest one."""
    if "__" in name:
        raise ConfigError(
            f"override {name}: nested fields take dotted names, e.g. "
            f"load_config(path, **{{{name.replace('__', '.')!r}: ...}})"
        )
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            close = difflib.get_close_matches(name, _field_names(config), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{flag or f'override {name}'}: the config has no field {name}; {hint}"
                "(configs/default.py lists every field)"
            )
        node = node[part]


def _field_names(config: Any) -> list[str]:
    """Every field of ``config`` by its dotted name (``batch_size``, ``mixup.cutmix_alpha``)."""
    names = []
    for name, value in config.items():
        names.append(name)
        if hasattr(value, "items"):
            names += [f"{name}.{child}" for child in _field_names(value)]
    return names


def read_config_file(path: str) -> Any:
    """``get_config()`` of the file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked.

    Configs may ``from configs import default``: the folder above the file is importable."""
    file, *argument = path.split(":", 1)
    path = os.path.abspath(os.path.expanduser(file))
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        files = os.listdir(folder) if os.path.isdir(folder) else ()
        choices = sorted(name for name in files if name.endswith(".py"))
        hint = f"; {folder} has {', '.join(choices)}" if choices else ""
        raise ConfigError(f"no config file {file}{hint}")
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    name = f"_dynamixer_config_{os.path.splitext(os.path.basename(path))[0]}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as error:  # IndentationError too
        raise ConfigError(
            f"{file}:{error.lineno}: {error.msg} (a syntax error in the config file); fix it"
        ) from None
    except Exception as error:
        raise _failed(file, path, error, "reading the config file") from None
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ConfigError(f"{':'.join([file, *argument])}: the file has no get_config() function")
    try:
        inspect.signature(get_config).bind(*argument)
    except TypeError:
        raise ConfigError(
            f"{file} takes no ':ARGUMENT'; use --config={file}"
            if argument
            else f"{file} needs an argument: --config={file}:ARGUMENT"
        ) from None
    try:
        config = get_config(*argument)
    except ConfigError:
        raise
    except Exception as error:
        raise _failed(file, path, error, "get_config()") from None
    from ml_collections import config_dict  # noqa: PLC0415

    if not isinstance(config, config_dict.ConfigDict):
        line = getattr(getattr(get_config, "__code__", None), "co_firstlineno", "?")
        raise ConfigError(
            f"{file}:{line}: get_config() returned a {type(config).__name__}, not an "
            "ml_collections ConfigDict; start it from configs/default.py "
            "(config = default.get_config()) and return that"
        )
    config.lock()
    return config


def _failed(file: str, path: str, error: Exception, what: str) -> ConfigError:
    """The one-line error for ``error`` raised while running config file ``path`` (given as
    ``file``): the deepest line of the file in its traceback, the error's type and first line."""
    line = "?"
    for frame, number in traceback.walk_tb(error.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == path:
            line = number
    message = (str(error).strip().splitlines() or [""])[0]
    return ConfigError(f"{file}:{line}: {type(error).__name__}: {message} (in {what}); fix it")


def load_config(path: str, **overrides: Any) -> Any:
    """The ``get_config()`` of a config file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked
    as the command line locks it, with ``overrides`` (dotted names for nested fields) applied."""
    config = read_config_file(path)
    for name in overrides:
        check_field(config, name)
    try:
        config.update_from_flattened_dict(overrides)
    except TypeError as error:
        raise ConfigError(f"override: {error}") from None
    return config
