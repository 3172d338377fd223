"""``main.py``'s process around a run: its log lines, its start together with the other processes
of a multi-process run, and its end: one line, ``error: ...``, for a user error, and an exit code.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from dynamixer_jax.errors import DynaMixerError, TrainingDiverged

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by Ctrl-C


def given_flags(argv: Sequence[str], types: dict[str, type]) -> dict[str, Any]:
    """The flags named in ``types`` read off ``argv`` as their types, for a command line that absl
    rejected (for another flag): each one given as ``--NAME=VALUE`` or ``--NAME VALUE`` and
    readable, the last one given winning; nothing after ``--``."""
    found = {}
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name not in types:
            continue
        if not equals:
            if index + 1 >= len(argv):
                continue
            value = argv[index + 1]
        try:
            found[name] = types[name](value)
        except ValueError:
            found.pop(name, None)
    return found


def joining_flags(argv: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of :func:`start_together` that ``argv`` gives (:func:`given_flags`)."""
    names = dict(coordinator_address=str, num_processes=int, process_id=int, join_timeout=int)
    found = given_flags(argv, names)
    if "join_timeout" in found:
        found["timeout"] = found.pop("join_timeout")
    return found


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
