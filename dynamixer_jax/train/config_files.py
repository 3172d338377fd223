"""Config files (``configs/*.py``) read from Python, as ``main.py --config=...`` reads them.

``load_config("configs/quickstart.py", batch_size=32)`` gives the ConfigDict of
``--config=configs/quickstart.py --config.batch_size=32``; nested fields take their dotted names,
``load_config(path, **{"mixup.cutmix_alpha": 0.0})``; ``"configs/imagenet.py:dynamixer_m"``
passes ``dynamixer_m`` to the file's ``get_config``, as ``config_flags`` did.
:func:`value_from_text` reads a command-line value (``"(2, 2)"``, ``"true"``, ``"None"``) as
the field's type, the way ml_collections' ``config_flags`` parses ``--config.FIELD=VALUE``.
Every problem is a one-line :class:`ConfigError` that names the field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from dynamixer_jax.errors import ConfigError


def _module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"_dynamixer_config_{os.path.splitext(os.path.basename(path))[0]}", path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def field_names(config: Any) -> list[str]:
    """Every field of ``config`` by its dotted name (``batch_size``, ``mixup.cutmix_alpha``)."""
    names = []
    for name, value in config.items():
        names.append(name)
        if hasattr(value, "items"):
            names += [f"{name}.{child}" for child in field_names(value)]
    return names


def unknown_field(config: Any, name: str, flag: str | None = None) -> ConfigError:
    """The error for a field ``config`` does not have, naming the closest field that it has."""
    close = difflib.get_close_matches(name, field_names(config), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    where = flag or f"override {name}"
    return ConfigError(
        f"{where}: the config has no field {name}; {hint}(configs/default.py lists every field)"
    )


def _check_field(config: Any, name: str, flag: str | None = None) -> None:
    """ConfigError unless ``name`` (dotted) is a field of ``config``."""
    if "__" in name:
        raise ConfigError(
            f"override {name}: nested fields take dotted names, e.g. "
            f"load_config(path, **{{{name.replace('__', '.')!r}: ...}})"
        )
    node = config
    for part in name.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise unknown_field(config, name, flag)
        node = node[part]


def read_config_file(path: str) -> Any:
    """``get_config()`` of the file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked."""
    given = path
    path, *argument = path.split(":", 1)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        folder = os.path.dirname(path)
        choices = sorted(
            name
            for name in (os.listdir(folder) if os.path.isdir(folder) else ())
            if name.endswith(".py")
        )
        hint = f"; {folder} has {', '.join(choices)}" if choices else ""
        raise ConfigError(f"no config file {given.split(':', 1)[0]}{hint}")
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    file = given.split(":", 1)[0]
    try:
        module = _module(path)
    except SyntaxError as error:  # IndentationError too
        raise ConfigError(
            f"{file}:{error.lineno}: {error.msg} (a syntax error in the config file); fix it"
        ) from None
    except Exception as error:
        raise _failed(file, path, error, "reading the config file") from None
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ConfigError(f"{given}: the file has no get_config() function")
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
    ``file``): the line of the file where it happened, the error's type and first line."""
    line = "?"
    for frame, number in traceback.walk_tb(error.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == path:
            line = number  # the deepest line of the config file itself
    message = (str(error).strip().splitlines() or [""])[0]
    return ConfigError(f"{file}:{line}: {type(error).__name__}: {message} (in {what}); fix it")


def load_config(path: str, **overrides: Any) -> Any:
    """The ``get_config()`` of a config file (``FILE.py:ARG`` calls ``get_config(ARG)``), locked
    as the command line locks it, with ``overrides`` (dotted names for nested fields) applied.

    Configs may ``from configs import default``: the folder above the file is importable.
    """
    config = read_config_file(path)
    for name in overrides:
        _check_field(config, name)
    try:
        config.update_from_flattened_dict(overrides)
    except TypeError as error:
        raise ConfigError(f"override: {error}") from None
    return config


def _nullable(config: Any, name: str) -> bool:
    """Whether the field may be None: a ``config_dict.placeholder`` (None is its "unset")."""
    from ml_collections import config_dict  # noqa: PLC0415

    *parents, leaf = name.split(".")
    holder = config
    for part in parents:
        holder = holder[part]
    # ConfigDict keeps a placeholder as a FieldReference: the one way to tell that None is
    # allowed, whatever value a config file gave the field since.
    return isinstance(holder._fields.get(leaf), config_dict.FieldReference) or (
        holder[leaf] is None
    )


def _parser(field_type: type) -> Any:
    """The absl/ml_collections parser ``config_flags`` uses for a field of ``field_type``."""
    from absl import flags  # noqa: PLC0415
    from ml_collections.config_flags import tuple_parser  # noqa: PLC0415

    parsers = {
        bool: flags.BooleanParser(),
        int: flags.IntegerParser(),
        float: flags.FloatParser(),
        str: flags.ArgumentParser(),
        tuple: tuple_parser.TupleParser(),
    }
    return parsers.get(field_type)


def _literal(text: str) -> Any:
    if text in ("true", "false"):
        text = text.capitalize()
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def value_from_text(config: Any, name: str, texts: Sequence[str], flag: str | None = None) -> Any:
    """The value of field ``name`` of ``config`` given as text on the command line.

    ``texts``: each time the field was given (a tuple field given several times collects the
    values, ``--config.f=1 --config.f=2`` is ``(1, 2)``; any other field takes the last).
    ``"None"`` unsets a field whose default is None. Types are parsed as ml_collections'
    ``config_flags`` parses them (absl's int, float and bool parsers, its tuple parser,
    Python literals for anything else).
    """
    from ml_collections import config_dict  # noqa: PLC0415
    from ml_collections.config_flags import config_path  # noqa: PLC0415

    flag = flag or f"--config.{name}"
    _check_field(config, name, flag)
    field_type = config_path.get_type(name, config)
    if texts[-1] == "None" and _nullable(config, name):
        return None
    parser = _parser(field_type)
    current = config_path.get_value(name, config)
    example = (
        "" if current is None or hasattr(current, "items") else f", e.g. {flag}={_as_text(current)}"
    )
    try:
        if field_type is tuple:
            if len(texts) > 1:
                return tuple(_literal(text) for text in texts)
            return parser.parse(texts[-1])
        if parser is not None:
            return parser.parse(texts[-1])
        if isinstance(field_type, type) and issubclass(field_type, config_dict.ConfigDict):
            value = ast.literal_eval(texts[-1])
            if not isinstance(value, dict):
                raise ValueError("not a dict")
            return config_dict.ConfigDict(value)
        return _literal(texts[-1])
    except (ValueError, SyntaxError) as error:
        kind = _KINDS.get(field_type, "a dict such as \"{'layers': (2, 2)}\"")
        reason = "" if field_type in _KINDS else f" ({' '.join(str(error).split())})"
        raise ConfigError(f"{flag}={texts[-1]}: {name} takes {kind}{reason}{example}") from None


_KINDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: 'a tuple such as "(1, 2)"',
}


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return f'"{tuple(value)}"'
    return str(value)


def field_type(config: Any, name: str) -> type | None:
    """The type of field ``name`` (dotted) of ``config``; None if it has no such field."""
    from ml_collections.config_flags import config_path  # noqa: PLC0415

    try:
        _check_field(config, name)
    except ConfigError:
        return None
    return config_path.get_type(name, config)


def apply_text_overrides(config: Any, overrides: Sequence[tuple[str, Sequence[str]]]) -> Any:
    """``config`` with command-line overrides applied: ``(field, [text, ...])`` pairs, each
    text parsed as the field's type (:func:`value_from_text`); returns ``config``."""
    values = {name: value_from_text(config, name, texts) for name, texts in overrides}
    for name, value in values.items():
        try:
            config.update_from_flattened_dict({name: value})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--config.{name}: {' '.join(str(error).split())}") from None
    return config
