"""Config files (``configs/*.py``) read from Python, and the one-line errors of a broken one.

``load_config("configs/quickstart.py", batch_size=32)`` gives the ConfigDict of
``--config=configs/quickstart.py --config.batch_size=32``; nested fields take their dotted names,
``load_config(path, **{"mixup.cutmix_alpha": 0.0})``; ``"configs/imagenet.py:dynamixer_m"``
passes ``dynamixer_m`` to the file's ``get_config``, as ``config_flags`` does.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import inspect
import os
import sys
import traceback
from typing import Any

from dynamixer_jax.errors import ConfigError


def load_config(path: str, **overrides: Any) -> Any:
    """The ``get_config()`` of a config file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked
    as the command line locks it, with ``overrides`` (dotted names for nested fields) applied;
    a ConfigError of one line if it cannot be."""
    config = read_config_file(path)
    for name in overrides:
        check_field(config, name, f"override {name}")
    try:
        config.update_from_flattened_dict(overrides)
    except TypeError as error:
        raise ConfigError(f"override: {' '.join(str(error).split())}") from None
    return config


def field_names(config: Any) -> list[str]:
    """Every field of ``config`` by its dotted name (``mixup`` and ``mixup.cutmix_alpha``)."""
    names = []
    for name, value in config.items():
        children = field_names(value) if hasattr(value, "items") else []
        names += [name, *(f"{name}.{child}" for child in children)]
    return names


def check_field(config: Any, name: str, flag: str) -> None:
    """ConfigError unless ``name`` (dotted) is a field of ``config``, naming the closest one."""
    if name not in field_names(config):
        close = difflib.get_close_matches(name, field_names(config), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"{flag}: the config has no field {name}; {hint}configs/default.py lists every field"
        )


def read_config_file(path: str) -> Any:
    """``get_config()`` of the file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked; a
    ConfigError of one line (the file and its line) for anything that stops it.

    Configs may ``from configs import default``: the folder above the file is importable."""
    file, *argument = path.split(":", 1)
    path = os.path.abspath(os.path.expanduser(file))
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        files = sorted(os.path.basename(py) for py in glob.glob(os.path.join(folder, "*.py")))
        hint = f"; {folder} has {', '.join(files)}" if files else ""
        raise ConfigError(f"no config file {file}{hint}")
    if os.path.dirname(os.path.dirname(path)) not in sys.path:
        sys.path.insert(0, os.path.dirname(os.path.dirname(path)))
    name = f"_dynamixer_config_{os.path.splitext(os.path.basename(path))[0]}"
    where = "reading the config file"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        get_config, where = getattr(module, "get_config", None), "get_config()"
        if get_config is None:
            raise ConfigError(f"{file}: the file has no get_config() function")
        try:
            inspect.signature(get_config).bind(*argument)
        except TypeError:
            raise ConfigError(
                f"{file} takes no ':ARGUMENT'; use --config={file}"
                if argument
                else f"{file} needs an argument: --config={file}:ARGUMENT"
            ) from None
        config = get_config(*argument)
    except ConfigError:
        raise
    except SyntaxError as error:  # IndentationError too
        raise ConfigError(f"{file}:{error.lineno}: {error.msg} (a syntax error); fix it") from None
    except Exception as error:
        line = "?"  # the deepest line of the file in the traceback
        for frame, number in traceback.walk_tb(error.__traceback__):
            line = number if frame.f_code.co_filename == path else line
        message = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"{file}:{line}: {type(error).__name__}: {message} (in {where}); fix it"
        ) from None
    from ml_collections import config_dict  # noqa: PLC0415 (not for every import of train/)

    if not isinstance(config, config_dict.ConfigDict):
        raise ConfigError(
            f"{file}:{get_config.__code__.co_firstlineno}: get_config() returned a "
            f"{type(config).__name__}, not an ml_collections ConfigDict; start it from "
            "configs/default.py (config = default.get_config()) and return that"
        )
    return config.lock()
