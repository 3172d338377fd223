"""``main.py``'s command line: ml_collections' ``config_flags`` reads ``--config=FILE[:ARG]`` and its
``--config.FIELD=VALUE`` overrides; this module makes each user error one line and lets ``None``
unset a field whose default is None.

config_flags chooses a field's parser by the field's type alone, and a placeholder's type is
its value's (``placeholder(int)`` is an int field), so ``--config.FIELD=None`` is taken out of
the command line before absl parses it and applied after (:func:`_unset`). What goes wrong while
absl parses (a misspelt field, a wrong value, a broken config file) is explained after the fact
(:func:`_explained`), with the closest field name or the field's type and an example.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dynamixer_jax.errors import ConfigError
from dynamixer_jax.train import process
from dynamixer_jax.train.config_files import check_field, read_config_file

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def parse_flags(argv: Sequence[str]) -> list[str]:
    """``app.run``'s ``flags_parser``: the arguments absl leaves. A user error ends the process
    with one line, ``error: ...``, exit 2 (and every process of a multi-process run with it)."""
    from absl import flags  # noqa: PLC0415

    try:
        return read_command_line(argv, flags.FLAGS)
    except ConfigError as error:
        process.exit_at_once(process.start_together(str(error), **process.joining_flags(argv)))


def read_command_line(argv: Sequence[str], flag_values: Any) -> list[str]:
    """``argv`` parsed into ``flag_values``, whose ``--config`` is config_flags' (which finds the
    overrides in ``sys.argv``, or the ``sys_argv`` it was given: the same command line); the
    arguments absl leaves. ConfigError, one line, for anything wrong."""
    from ml_collections import config_dict  # noqa: PLC0415

    argv = flag_values.read_flags_from_files(argv, force_gnu=False)
    end = argv.index("--") if "--" in argv else len(argv)  # arguments, not flags, after it
    texts = {match[1]: match[2] for match in map(_OVERRIDE.match, argv[:end]) if match}
    unset = [name for name, text in texts.items() if text == "None"]  # the last one given
    try:
        args = flag_values([arg for arg in argv[:end] if not _unsets(arg)] + argv[end:])
        if not isinstance(flag_values.config, config_dict.ConfigDict):
            raise TypeError("not a ConfigDict")  # config_flags' stand-in for a missing file
    except Exception as error:
        raise ConfigError(_explained(error, argv)) from None
    for name in unset:
        _unset(flag_values.config, name)
    return args


def _unsets(arg: str) -> bool:
    match = _OVERRIDE.match(arg)
    return bool(match) and match[2] == "None"


def _unset(config: Any, name: str) -> None:
    """``--config.name=None``: a field whose default is None (a placeholder) unset; the text
    "None" for a string field; else ConfigError."""
    from ml_collections import config_dict  # noqa: PLC0415
    from ml_collections.config_flags import config_path  # noqa: PLC0415

    check_field(config, name, f"--config.{name}")
    *parents, leaf = name.split(".")
    holder = config_path.get_value(".".join(parents), config) if parents else config
    field = dict(holder.items(preserve_field_references=True))[leaf]
    if isinstance(field, config_dict.FieldReference) or field is None:
        holder[leaf] = None
    elif isinstance(field, str):
        holder[leaf] = "None"
    else:
        raise ConfigError(
            f"--config.{name}=None: {_takes(config, name)} (None unsets a placeholder)"
        )


def _explained(error: Exception, argv: Sequence[str]) -> str:
    """One line for ``error``, raised while absl parsed ``argv``: the config file's own error,
    a misspelt field with the closest name, a wrong value with the field's type and an example,
    else absl's line."""
    line = " ".join(str(error).split())
    path = process.given_flags(argv, {"config": str}).get("config")
    if path is None:
        return f"{line} (--helpfull lists the flags)"
    config = read_config_file(path)  # ConfigError: what is wrong with the file
    names = [match[1] for match in map(_OVERRIDE.match, argv) if match]
    for name in names:
        check_field(config, name, f"--config.{name}")
    flag = re.match(r"flag --config\.([^=]+)=", line)
    if flag and flag[1] in names:
        return f"{line.removeprefix('flag ')}; {_takes(config, flag[1])}"
    return f"{line} (--helpfull lists the flags)"


def _takes(config: Any, name: str) -> str:
    """What field ``name`` of ``config`` takes: its type, and its value as an example."""
    from ml_collections.config_flags import config_path  # noqa: PLC0415

    kind, value = config_path.get_type(name, config), config_path.get_value(name, config)
    value = f'"{value}"' if isinstance(value, tuple) else value
    example = "" if value is None or hasattr(value, "items") else f", e.g. --config.{name}={value}"
    return f"{name} takes {_KINDS.get(kind, f'a {kind.__name__}')}{example}"
