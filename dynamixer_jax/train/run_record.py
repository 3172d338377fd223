"""A workdir's record of each start's config: ``config.json`` and ``config_history/``.

``WORKDIR/config.json`` is the config of the latest start (``dynamixer_jax.load`` reads the
architecture back from it); ``WORKDIR/config_history/`` keeps every config a start brought
when it differed from the one before, and a resume with changed fields warns with them.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax

log = logging.getLogger(__name__)


CONFIG_FILE = "config.json"
CONFIG_HISTORY = "config_history"
_HISTORY_NAME = re.compile(r"^(\d+)-.*\.json$")


def write_config(config_json: str, workdir: str, step: int = 0) -> None:
    """Keep the run's config beside its checkpoints (process 0 only), and every earlier one.

    ``WORKDIR/config.json`` is the config of the latest start (``dynamixer_jax.load`` reads the
    architecture from it). ``WORKDIR/config_history/NNNN-stepK.json`` keeps each config a start
    brought, from step ``K`` on, when it differs from the one before (``0000-earlier.json``: a
    ``config.json`` found without a history). A resume at ``step`` > 0 with changed fields warns
    with their names and both values."""
    if jax.process_index() != 0:
        return
    history = os.path.join(workdir, CONFIG_HISTORY)
    previous = _read_text(os.path.join(workdir, CONFIG_FILE))
    os.makedirs(history, exist_ok=True)
    entries = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(history)
        if (match := _HISTORY_NAME.match(name))
    )
    if not entries and previous is not None:
        _write(os.path.join(history, "0000-earlier.json"), previous)
        entries = [(0, "0000-earlier.json")]
    latest = _read_text(os.path.join(history, entries[-1][1])) if entries else None
    if latest is None or _parsed(latest) != _parsed(config_json):
        number = entries[-1][0] + 1 if entries else 1
        _write(os.path.join(history, f"{number:04d}-step{int(step)}.json"), config_json)
    changed = _changed_fields(_parsed(previous), _parsed(config_json))
    if step > 0 and changed:
        log.warning(
            "resuming at step %d with config fields changed since the last start: %s; each "
            "start's config is kept in %s",
            step,
            ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()),
            history,
        )
    _write(os.path.join(workdir, CONFIG_FILE), config_json)


def _read_text(path: str) -> str | None:
    """The file's text (undecodable bytes replaced), or None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _parsed(text: str | None) -> dict:
    """The JSON object in ``text``, flattened to dotted names ({} if it is none)."""
    try:
        value = json.loads(text) if text is not None else {}
    except ValueError:
        return {}
    return _flatten(value) if isinstance(value, dict) else {}


def _flatten(value: dict, prefix: str = "") -> dict:
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _changed_fields(before: dict, after: dict) -> dict:
    """``{field: (before, after)}`` for the fields whose values differ ({} if ``before`` is)."""
    if not before:
        return {}
    return {
        name: (before.get(name), after.get(name))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _write(path: str, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file, then renamed)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
