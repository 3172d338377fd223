"""What ``main.py`` does around the library calls: the command line, logging and one-line errors.

``--config=FILE`` is an ordinary absl flag (``--helpfull`` lists it); the ``--config.FIELD``
overrides are taken out of the command line before absl parses it (:func:`split_overrides`)
and applied by :func:`config_from_command_line`, each text read as its field's type the way
ml_collections' ``config_flags`` reads it (:func:`value_from_text`), so that a misspelt field
(with the closest name) or a wrong value (with the field's type and an example) is one line,
``error: ...``, exit 2, like every other user error, and costs no TensorFlow import.
(``config_flags``' own errors, raised inside absl's parsing, have neither hint.)
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dynamixer_jax.errors import ConfigError, DynaMixerError, TrainingDiverged
from dynamixer_jax.train.config_files import check_field, read_config_file

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by Ctrl-C

_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)(=(.*))?$", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """What ``main`` gets from :func:`parse_flags`: the arguments absl left (the program name
    first) and the ``--config.FIELD`` overrides as ``(field, [text, ...])`` in command-line
    order (every text a field was given, for repeated tuple fields)."""

    args: list[str]
    overrides: list[tuple[str, list[str]]]
    # Bare ``--config.FIELD VALUE`` pairs, wrong for a bool FIELD (bare means true): (field,
    # VALUE); and fields given bare at the end or before another flag (taken as "true").
    separate: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    bare: list[str] = dataclasses.field(default_factory=list)


def split_overrides(argv: Sequence[str]) -> CommandLine:
    """``argv`` without its ``--config.FIELD[=VALUE]`` overrides, and the overrides.

    The forms ml_collections' ``config_flags`` took: ``--config.f=v``, ``--config.f v``,
    ``--config.f`` (a bool: true) and ``--noconfig.f`` (false); ``--`` ends the flags.
    """
    args, overrides, separate, bare = [], {}, [], []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            args += argv[index - 1 :]
            break
        match = _OVERRIDE.match(arg)
        if not match:
            args.append(arg)
            continue
        negated, name, has_value, value = match.groups()
        if negated:
            if has_value:
                raise ConfigError(f"{arg}: --noconfig.{name} takes no value")
            text = "false"
        elif has_value:
            text = value
        elif index < len(argv) and not argv[index].startswith("-"):
            text = argv[index]
            separate.append((name, text))
            index += 1
        else:
            text = "true"
            bare.append(name)
        overrides.setdefault(name, []).append(text)
        overrides[name] = overrides.pop(name)  # the last given comes last, as in config_flags
    return CommandLine(args, list(overrides.items()), separate, bare)


def config_from_command_line(path: str, command_line: CommandLine) -> Any:
    """The config of ``--config=path`` with the command line's overrides (ConfigError if not)."""
    config = read_config_file(path)
    for name, text in command_line.separate:
        if _field_type(config, name) is bool:
            raise ConfigError(
                f"--config.{name} {text}: a bool field takes its value after '=', "
                f"--config.{name}={text} (alone, --config.{name} means true)"
            )
    for name in command_line.bare:
        if _field_type(config, name) not in (bool, None):
            raise ConfigError(f"--config.{name} needs a value: --config.{name}=VALUE")
    values = {name: value_from_text(config, name, texts) for name, texts in command_line.overrides}
    for name, value in values.items():
        try:
            config.update_from_flattened_dict({name: value})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--config.{name}: {' '.join(str(error).split())}") from None
    return config


def _field_type(config: Any, name: str) -> type | None:
    """The type of field ``name`` (dotted) of ``config``; None if it has no such field."""
    from ml_collections.config_flags import config_path  # noqa: PLC0415

    try:
        check_field(config, name)
    except ConfigError:
        return None
    return config_path.get_type(name, config)


_KINDS = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    tuple: 'a tuple such as "(1, 2)"',
}


def value_from_text(config: Any, name: str, texts: Sequence[str]) -> Any:
    """The value of field ``name`` of ``config`` given on the command line as ``texts``, each
    time it was given (a tuple field given several times collects them; any other field takes
    the last), parsed as ``config_flags`` parses ``--config.FIELD=VALUE``: absl's parsers for
    int, float, bool and str, its tuple parser, Python literals for anything else. ``"None"``
    unsets a field whose default is None."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_dict  # noqa: PLC0415
    from ml_collections.config_flags import config_path, tuple_parser  # noqa: PLC0415

    flag, text = f"--config.{name}", texts[-1]
    check_field(config, name, flag)
    field_type = config_path.get_type(name, config)
    *parents, leaf = name.split(".")
    holder = config_path.get_value(".".join(parents), config) if parents else config
    # A placeholder (a FieldReference in the ConfigDict) is the one way to tell that None is
    # allowed, whatever value a config file gave the field since.
    if text == "None" and (
        isinstance(holder._fields.get(leaf), config_dict.FieldReference) or holder[leaf] is None
    ):
        return None
    parsers = {
        bool: flags.BooleanParser(),
        int: flags.IntegerParser(),
        float: flags.FloatParser(),
        str: flags.ArgumentParser(),
        tuple: tuple_parser.TupleParser(),
    }
    current = holder[leaf]
    example = "" if current is None or hasattr(current, "items") else f", e.g. {flag}="
    if example:
        example += _as_text(current)
    try:
        if field_type is tuple and len(texts) > 1:
            return tuple(_literal(text) for text in texts)
        if field_type in parsers:
            return parsers[field_type].parse(text)
        if isinstance(field_type, type) and issubclass(field_type, config_dict.ConfigDict):
            value = ast.literal_eval(text)
            if not isinstance(value, dict):
                raise ValueError("not a dict")
            return config_dict.ConfigDict(value)
        return _literal(text)
    except (ValueError, SyntaxError) as error:
        kind = _KINDS.get(field_type, "a dict such as \"{'layers': (2, 2)}\"")
        reason = "" if field_type in _KINDS else f" ({' '.join(str(error).split())})"
        raise ConfigError(f"{flag}={text}: {name} takes {kind}{reason}{example}") from None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{tuple(value)}"' if isinstance(value, (tuple, list)) else str(value)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.capitalize() if text in ("true", "false") else text)
    except (SyntaxError, ValueError):
        return text


def parse_flags(argv: Sequence[str]) -> CommandLine:
    """The ``flags_parser`` of ``app.run``: absl parses the flags but the config overrides;
    a flag absl rejects is one line, ``error: ...``, exit 2."""
    from absl import flags  # noqa: PLC0415

    try:
        command_line = split_overrides(flags.FLAGS.read_flags_from_files(argv, force_gnu=False))
        args = flags.FLAGS(command_line.args)
    except (flags.Error, DynaMixerError) as error:
        message = " ".join(str(error).split())
        # Several processes: the others learn of it (when this one can still tell its place).
        exit_at_once(start_together(f"{message} (--helpfull lists the flags)", **_joining(argv)))
    return dataclasses.replace(command_line, args=args)


_JOINING = {
    "coordinator_address": str,
    "num_processes": int,
    "process_id": int,
    "join_timeout": int,
}


def _joining(argv: Sequence[str]) -> dict:
    """The flags that say how to join the other processes, read from a command line that absl
    rejected (for another flag): each one given as ``--NAME=VALUE`` or ``--NAME VALUE`` and
    readable, the last one given winning."""
    found = {}
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name not in _JOINING:
            continue
        if not equals:
            if index + 1 >= len(argv):
                continue
            value = argv[index + 1]
        try:
            found[name] = _JOINING[name](value)
        except ValueError:
            found.pop(name, None)
    if "join_timeout" in found:
        found["timeout"] = found.pop("join_timeout")
    return found


def config_or_problem(path: str, command_line: CommandLine) -> tuple[Any, str | None]:
    """:func:`config_from_command_line`, or None and its error's line."""
    try:
        return config_from_command_line(path, command_line), None
    except DynaMixerError as error:
        return None, str(error)


def start_together(
    problem: str | None,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout: int | None = None,
) -> int:
    """0 when this process, and every other one, can start; else the exit code, its one line
    (``error: ...``) printed.

    ``problem`` is this process's own error line (None: none). A single process prints it
    and joins nothing. One of several (a coordinator given, or a cluster in the environment)
    joins the others even when it has failed, and all exchange their statuses
    (``parallel.agree_to_start``): if any failed, every one prints the same line,
    ``error: process K: ...``, and ends within seconds. A process that cannot join in
    ``timeout`` seconds (one failed before it knew where to join, or was never started) ends
    with a line saying so instead of JAX's abort.
    """
    from dynamixer_jax.train import parallel  # noqa: PLC0415

    if not parallel.several_processes(coordinator_address):
        if problem is None:
            return 0
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    timeout = parallel.JOIN_TIMEOUT if timeout is None else timeout
    where = f" at {coordinator_address}" if coordinator_address else ""
    # JAX's own waits are longer than ours: ours ends the process with a line, JAX's aborts it.
    line = [
        problem
        or (
            f"the other processes did not all join{where} within {timeout} s "
            "(--join_timeout): one failed before it could (its own line says why) or was not "
            "started"
        )
    ]

    def give_up():
        print(f"error: {line[0]}", file=sys.stderr)
        exit_at_once(EXIT_USER_ERROR)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        parallel.initialize_distributed(
            coordinator_address, num_processes, process_id, timeout=timeout + 60, announce=False
        )
        failure = parallel.agree_to_start(problem, timeout=timeout + 60)
    except Exception as error:  # could not join: JAX's reason, on one line
        watchdog.cancel()
        failure = problem or "cannot join the other processes: " + " ".join(str(error).split())
    else:
        if failure is None:
            watchdog.cancel()
            parallel.log_place()
            return 0
        line[0] = failure
        parallel.leave_together()
        watchdog.cancel()
    print(f"error: {failure}", file=sys.stderr)
    return EXIT_USER_ERROR


def setup_logging(level: int = logging.INFO) -> None:
    """Our progress lines on stderr as ``HH:MM:SS message``; other libraries' chatter at WARNING."""
    from absl import logging as absl_logging  # noqa: PLC0415 (optax, a core dependency, needs absl)

    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger("dynamixer_jax")
    logger.setLevel(level)
    if not any(getattr(handler, "_dynamixer", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._dynamixer = True
        logger.addHandler(handler)
    logger.propagate = False
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
    except KeyboardInterrupt:  # a second Ctrl-C in training, or Ctrl-C in evaluation
        print("interrupted: stopped without saving", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def exit_at_once(code: int) -> NoReturn:
    """End the process with ``code`` now, our output flushed, skipping the interpreter's shutdown.

    For a run that ended in an error: its one line must be the last thing printed, and the
    process must not outlive it. A normal exit would wait for the libraries' threads and then
    finalise their objects; after a failed save, Orbax's commit threads wait up to its 300 s
    coordination timeout for signals the failed step never sends, and their never-run
    coroutines are then reported after our line. Nothing of ours is lost: the metrics log and
    every started checkpoint are closed or waited for before the error reaches ``main``."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(code)
