"""Reading the checkpoints a training run left in ``WORKDIR/checkpoints/<step>``, without training.

What ``dynamixer_jax.load`` and evaluation need of a workdir: :func:`find_checkpoint` (the
checkpoints and step a user's path points at) and :class:`CheckpointReader` (which steps are
there, the newest one that reads, some parts of its state restored); the training run's
manager (``train/checkpoints.py``) is a reader that also saves.

Damaged checkpoints (truncated or deleted files, broken JSON) never block a workdir: those whose
JSON files do not parse (:func:`json_damage`) are hidden from Orbax when the reader is made,
those that fail to restore are hidden when they do (:meth:`CheckpointReader.restore_newest`
goes on to the next older one); each gets one warning and stays where it is. The full read of
the arrays that names the damage (:func:`array_damage`) runs only after a restore failed, never
before one. What Orbax itself would print is kept off the screen (``orbax_quiet.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

from dynamixer_jax import orbax_quiet
from dynamixer_jax.errors import CheckpointError

log = logging.getLogger(__name__)

# The small JSON files of a step directory: (relative path, whether every checkpoint has it).
JSON_FILES = (
    ("_CHECKPOINT_METADATA", False),
    ("metrics/metrics", False),
    ("meta/metadata", True),
    ("state/_METADATA", True),
)

T = TypeVar("T")


def first_line(error: BaseException, within: str = "") -> str:
    """The error's type and first line, short (paths inside ``within`` made relative to it)."""
    text = str(error)
    if within:
        text = text.replace(f"{within}{os.sep}", "")
    text = text.strip().splitlines()
    line = f"{type(error).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 160 else line[:157] + "..."


def json_damage(step_dir: str) -> str | None:
    """Why the small JSON files of checkpoint directory ``step_dir`` cannot be read, or None."""
    for name, required in JSON_FILES:
        path = os.path.join(step_dir, name)
        if not os.path.exists(path):
            if required:
                return f"{name} is missing"
            continue
        try:
            with open(path) as file:
                content = json.load(file)
        except (OSError, ValueError) as error:
            return f"{name}: {first_line(error, within=step_dir)}"
        if not isinstance(content, dict):
            return f"{name}: not a JSON object"
    return None


# How the arrays of a state directory are stored: the metadata key that marks an array, and the
# TensorStore driver that reads it.
_ARRAY_DRIVERS = {"/.zarray": "zarr", "/zarr.json": "zarr3"}


def array_damage(step_dir: str, *, batch: int = 64) -> str | None:
    """Why the arrays of checkpoint directory ``step_dir`` cannot be read, or None.

    Reads and decodes every array of the state's OCDBT store with TensorStore, waited on
    synchronously (``batch`` arrays at a time): about one more read of the checkpoint, run only
    once a restore has failed, to name the damage (Orbax's own error names its machinery).

    The store is opened by a spec, never a ``file://`` URL, so that any path a filesystem takes
    works (``#``, ``?``, ``%``, spaces...). Only the data can be judged damaged: if TensorStore
    cannot read back the manifest file that Python reads (the check's own machinery fails), the
    answer is None and Orbax's restore decides."""
    state = os.path.join(step_dir, "state")
    if not os.path.exists(os.path.join(state, "manifest.ocdbt")):
        return None  # not an OCDBT checkpoint: Orbax's restore reports any damage
    problem = _machinery_problem(state)
    if problem is not None:
        log.warning(
            "cannot check the arrays of checkpoint %s (%s); leaving it to Orbax's restore",
            step_dir,
            problem,
        )
        return None
    import tensorstore as ts  # noqa: PLC0415 (Orbax's own dependency)

    store = {"driver": "ocdbt", "base": _file_kvstore(state)}
    try:
        context = ts.Context()
        keys = ts.KvStore.open(store, context=context).result().list().result()
        arrays = [
            (key.decode()[: -len(marker)], driver)
            for key in keys
            for marker, driver in _ARRAY_DRIVERS.items()
            if key.decode().endswith(marker)
        ]
        for first in range(0, len(arrays), batch):
            opened = [
                ts.open(
                    {"driver": driver, "kvstore": {**store, "path": f"{name}/"}}, context=context
                )
                for name, driver in arrays[first : first + batch]
            ]
            reads = [future.result().read() for future in opened]
            for read in reads:
                read.result()
    except Exception as error:
        return first_line(error, within=step_dir)
    return None


def _file_kvstore(directory: str) -> dict:
    """TensorStore's spec of the local directory ``directory`` (a spec: no URL parsing)."""
    return {"driver": "file", "path": directory.rstrip(os.sep) + os.sep}


def _machinery_problem(state: str) -> str | None:
    """Why TensorStore cannot be trusted to judge the state directory ``state``, or None:
    it must read the manifest file byte for byte as Python reads it."""
    try:
        import tensorstore as ts  # noqa: PLC0415

        with open(os.path.join(state, "manifest.ocdbt"), "rb") as file:
            expected = file.read()
        found = ts.KvStore.open(_file_kvstore(state)).result().read(b"manifest.ocdbt").result()
        if found.state != "value" or bytes(found.value) != expected:
            return "TensorStore does not read the manifest that is there"
    except Exception as error:  # an import, a spec or a file read failing: not the arrays
        return first_line(error)
    return None


class _Hiding:
    """Orbax's standard step-name format, minus the steps in ``hidden`` (damaged ones)."""

    def __init__(self, base: Any, hidden: set[int]):
        self._base, self._hidden = base, hidden

    def build_name(self, step: int) -> str:
        return self._base.build_name(step)

    def find_all(self, base_path: Any) -> Iterator[Any]:
        return iter(
            [meta for meta in self._base.find_all(base_path) if meta.step not in self._hidden]
        )

    def find_step(self, base_path: Any, step: int) -> Any:
        return self._base.find_step(base_path, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read (damaged, truncated, deleted)."""

    def __init__(self, path: str, reason: str):
        super().__init__(
            f"checkpoint {path} cannot be read ({reason}); evaluate or resume from another "
            "step, or give the workdir to use its newest readable checkpoint"
        )
        self.path, self.reason = path, reason


class CheckpointReader:
    """The checkpoints of one directory, read only (see the module docstring).

    One ``orbax.checkpoint.CheckpointManager`` that sees every step but the damaged ones
    (``skipped``: step -> why it cannot be read). A subclass that writes gives its own Orbax
    options and handlers (:meth:`_options`, :meth:`_handlers`)."""

    def __init__(self, directory: str):
        orbax_quiet.install()
        self.directory = os.path.abspath(directory)
        self.skipped: dict[int, str] = {}  # step -> why it cannot be read
        self._hidden: set[int] = set()  # the skipped steps, hidden from Orbax
        for step in self._step_dirs():
            reason = json_damage(self._path(step))
            if reason is not None:
                self._skip(step, reason)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=self._options(_Hiding(ocp.step.standard_name_format(), self._hidden)),
            item_handlers=self._handlers(),
        )

    def _options(self, step_name_format: Any) -> ocp.CheckpointManagerOptions:
        """Orbax's options: reading only, no directory made or cleaned."""
        return ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            create=False,
            read_only=True,
            save_interval_steps=0,
            cleanup_tmp_directories=False,
            step_name_format=step_name_format,
        )

    def _handlers(self) -> dict[str, Any]:
        """The items of a checkpoint; reading only, the state's handler restores any part of
        it (partial restore)."""
        return {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}

    def _step_dirs(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _skip(self, step: int, reason: str) -> None:
        """Hide checkpoint ``step`` from Orbax, with one warning; its files stay as they are."""
        self.skipped[step] = reason
        self._hidden.add(step)
        log.warning(
            "checkpoint %s cannot be read (%s): skipped, left in place",
            self._path(step),
            reason,
        )
        if hasattr(self, "manager"):
            self.manager.reload()

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception:  # a failed save is reported by the writer's wait()
            pass

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _unreadable(self, step: int, error: BaseException) -> UnreadableCheckpoint:
        """Checkpoint ``step`` failed to read with ``error``: the damage :func:`array_damage`
        finds in its arrays, else ``error``'s first line."""
        path = self._path(step)
        return UnreadableCheckpoint(path, array_damage(path) or first_line(error, within=path))

    def saved_state_metadata(self, step: int) -> Any:
        """Shapes and dtypes of checkpoint ``step``'s state (:class:`UnreadableCheckpoint` if
        they cannot be read)."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as error:
            raise self._unreadable(step, error) from None
        return getattr(saved, "tree", saved)

    def restore_parts(self, step: int, names: tuple[str, ...], sharding: Any) -> dict[str, Any]:
        """Only the top-level parts ``names`` of checkpoint ``step``'s state (e.g. ``params``
        and ``ema_params``), read in one go and placed with ``sharding``; the rest (the
        optimizer state) is not read."""
        saved = self.saved_state_metadata(step)
        try:
            abstract = {
                name: jax.tree_util.tree_map(
                    lambda leaf: jax.ShapeDtypeStruct(
                        tuple(leaf.shape), leaf.dtype, sharding=sharding
                    ),
                    saved[name],
                )
                for name in names
                if name in saved
            }
            restore_args = jax.tree_util.tree_map(
                lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding), abstract
            )
            args = ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            )
            restored = self.manager.restore(step, args=ocp.args.Composite(state=args))
        except Exception as error:
            raise self._unreadable(step, error) from None
        return dict(restored["state"])

    def restore_newest(self, restore: Callable[[int], T]) -> tuple[int, T] | None:
        """``(step, restore(step))`` for the newest checkpoint ``restore`` can read, or None.

        Each one it cannot read (:class:`UnreadableCheckpoint`) gets one warning and is hidden
        from then on (left in place); any other error (e.g. another model's) propagates.
        """
        for step in reversed(self.all_steps()):
            try:
                return step, restore(step)
            except UnreadableCheckpoint as error:
                self._skip(step, error.reason)
        return None


def find_checkpoint(path: str) -> tuple[CheckpointReader, int | None]:
    """The checkpoints and step a user's path points at: a workdir or its ``checkpoints``
    directory (step None: the newest readable one, see
    :meth:`CheckpointReader.restore_newest`), or one step directory inside it (that step)."""
    path = os.path.abspath(os.path.expanduser(path))
    candidates = [(os.path.join(path, "checkpoints"), None), (path, None)]
    parent, name = os.path.split(path.rstrip("/"))
    if name.isdigit():
        candidates.append((parent, int(name)))
    for directory, step in candidates:
        if not os.path.isdir(directory) or not any(n.isdigit() for n in os.listdir(directory)):
            continue
        if step is not None:
            reason = json_damage(os.path.join(directory, str(step)))
            if reason is not None:
                raise UnreadableCheckpoint(os.path.join(directory, str(step)), reason)
        checkpoints = CheckpointReader(directory)
        steps = checkpoints.all_steps()
        if step is None and (steps or checkpoints.skipped):
            return checkpoints, None
        if step is not None and step in steps:
            return checkpoints, step
        checkpoints.close()
    raise CheckpointError(
        f"no checkpoint found at {path}: expected a workdir, its checkpoints/ "
        "directory or one checkpoint step directory in it"
    )
