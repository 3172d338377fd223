"""Matching parameter trees: one path convention, one comparison, one fine-tuning merge.

Every tree (Flax variables, a ``TrainState``, the metadata Orbax reads back, a flat state_dict)
is seen as ``{"a/b/c": leaf}``: dict keys, attribute names and sequence indices joined by "/".
On that view:

* :func:`compare` names the paths that are missing, unexpected, mis-shaped and (optionally) of
  another dtype between an expected tree (arrays or ``jax.ShapeDtypeStruct``) and a given one;
  :meth:`TreeDiff.summary` puts that in one line for an error message;
* :func:`check` raises a given :class:`~dynamixer_jax.errors.DynaMixerError` subclass when the
  trees differ, with the caller's advice;
* :func:`merge` fits loaded weights into freshly initialised ones for fine-tuning, as big_vision's
  ``dont_load``: only paths matching explicit regex patterns are re-initialised, any other
  difference is an error.

Needs only jax and numpy.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from dynamixer_jax.errors import DynaMixerError

SEP = "/"


def _key_name(key: Any) -> str:
    """One path entry as plain text, whether a dict key, an attribute or an index."""
    for field in ("key", "name", "idx"):
        if hasattr(key, field):
            return str(getattr(key, field))
    return str(key)


def path_name(path: tuple) -> str:
    """A jax key path (as ``tree_flatten_with_path`` gives) as an 'a/b/c' string."""
    return SEP.join(_key_name(key) for key in path)


def flatten(tree: Any) -> dict[str, Any]:
    """``{"a/b/c": leaf}`` of any pytree (nested dicts, dataclasses, tuples; None is no leaf)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts from ``{"a/b/c": leaf}`` (the inverse of :func:`flatten` for dict trees)."""
    nested: dict[str, Any] = {}
    for path, leaf in flat.items():
        *parents, last = path.split(SEP)
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return nested


def shape_of(leaf: Any) -> tuple[int, ...]:
    """The shape of an array, a ``ShapeDtypeStruct``, array metadata or a Python scalar."""
    return tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))


def dtype_of(leaf: Any) -> str:
    """The dtype name of an array, a ``ShapeDtypeStruct``, array metadata or a Python scalar."""
    return str(leaf.dtype) if hasattr(leaf, "dtype") else str(np.asarray(leaf).dtype)


def natural_key(path: str) -> tuple:
    """Sort key that orders numbers inside names by value ('layers_2' before 'layers_10')."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", path)
        if part
    )


@dataclasses.dataclass(frozen=True)
class TreeDiff:
    """How a given tree differs from an expected one (paths in a stable order)."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    misshaped: tuple[tuple[str, tuple, tuple], ...] = ()  # (path, given shape, expected shape)
    mistyped: tuple[tuple[str, str, str], ...] = ()  # (path, given dtype, expected dtype)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.misshaped or self.mistyped)

    def summary(
        self,
        limit: int | None = 3,
        *,
        noun: str = "paths",
        given: str = "given",
        expected: str = "expected",
    ) -> str:
        """One line: "missing paths: a, b; mis-shaped paths: c (given (2,), expected (3,))", the
        first ``limit`` of each kind then "and N more" (``limit=None``: all of them)."""
        kinds = [
            ("missing", list(self.missing)),
            ("unexpected", list(self.unexpected)),
            ("mis-shaped", [f"{p} ({given} {g}, {expected} {e})" for p, g, e in self.misshaped]),
            ("mistyped", [f"{p} ({given} {g}, {expected} {e})" for p, g, e in self.mistyped]),
        ]
        parts = []
        for title, items in kinds:
            if not items:
                continue
            shown = items if limit is None else items[:limit]
            more = len(items) - len(shown)
            tail = f" and {more} more" if more else ""
            parts.append(f"{title} {noun}: {', '.join(shown)}{tail}")
        return "; ".join(parts) or "no differences"


def compare(
    expected: Any, given: Any, *, dtypes: bool = False, order: Callable[[str], Any] = natural_key
) -> TreeDiff:
    """The differences of ``given`` from ``expected`` (any pytrees, or flat ``{path: leaf}``);
    dtypes are compared only with ``dtypes=True``. ``order`` sorts the paths in each list."""
    want, have = flatten(expected), flatten(given)
    common = sorted(set(want) & set(have), key=order)
    return TreeDiff(
        missing=tuple(sorted(set(want) - set(have), key=order)),
        unexpected=tuple(sorted(set(have) - set(want), key=order)),
        misshaped=tuple(
            (p, shape_of(have[p]), shape_of(want[p]))
            for p in common
            if shape_of(have[p]) != shape_of(want[p])
        ),
        mistyped=tuple(
            (p, dtype_of(have[p]), dtype_of(want[p]))
            for p in common
            if dtypes and dtype_of(have[p]) != dtype_of(want[p])
        ),
    )


def check(
    expected: Any,
    given: Any,
    *,
    error: type[DynaMixerError],
    what: str,
    advice: str,
    dtypes: bool = False,
    limit: int | None = 3,
) -> None:
    """Raise ``error("{what} ({differences}); {advice}")`` unless the trees match."""
    diff = compare(expected, given, dtypes=dtypes)
    if diff:
        raise error(f"{what} ({diff.summary(limit)}); {advice}")


def _compile(patterns: Iterable[str]) -> list[re.Pattern]:
    return [re.compile(pattern) for pattern in patterns]


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` matches one of the regex ``patterns`` as a whole (``re.fullmatch``)."""
    return any(pattern.fullmatch(path) for pattern in _compile(patterns))


def merge(
    fresh: Any,
    loaded: Any,
    *,
    reinit: Iterable[str] = (),
    error: type[DynaMixerError] = DynaMixerError,
    advice: str = "",
) -> tuple[Any, dict]:
    """``fresh`` with every leaf taken from ``loaded``, except the paths matching a ``reinit``
    pattern (regexes over the whole 'a/b/c' path), which keep their fresh values.

    Loaded leaves take the fresh leaves' dtypes. Any other difference (a path missing from
    ``loaded`` or unexpected in it, another shape) raises one-line ``error`` ending in ``advice``.
    Returns ``(merged, report)``; ``report`` lists the ``taken`` and ``reinitialised`` paths and
    the loaded paths left ``unused`` (those matching a pattern that the fresh tree lacks).
    """
    patterns = _compile(reinit)

    def skipped(path: str) -> bool:
        return any(pattern.fullmatch(path) for pattern in patterns)

    fresh_flat, loaded_flat = flatten(fresh), flatten(loaded)
    diff = compare(
        {p: v for p, v in fresh_flat.items() if not skipped(p)},
        {p: v for p, v in loaded_flat.items() if not skipped(p)},
    )
    if diff:
        found = diff.summary(given="loaded", expected="model")
        raise error(
            f"the loaded weights do not fit this model ({found})"
            + (f"; {advice}" if advice else "")
        )
    report = {
        "taken": [p for p in fresh_flat if not skipped(p)],
        "reinitialised": [p for p in fresh_flat if skipped(p)],
        "unused": sorted(set(loaded_flat) - set(fresh_flat), key=natural_key),
    }

    def pick(path: tuple, leaf: Any) -> Any:
        name = path_name(path)
        return leaf if skipped(name) else np.asarray(loaded_flat[name], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh), report
