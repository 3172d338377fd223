"""Orbax checkpoints of the training state in ``WORKDIR/checkpoints/<step>``.

One ``orbax.checkpoint.CheckpointManager``: saves are asynchronous (the arrays are copied off the
devices, then written in the background while training goes on); a checkpoint directory only
appears under its final name once it is complete, so a run killed mid-save leaves the previous
checkpoint as the latest. Kept: the last ``keep`` checkpoints plus the one with the best
``eval_top1`` (Orbax preservation policies). Each checkpoint holds the ``TrainState`` and a small
JSON record (``meta``) of what the data position means (seed, global batch size, dataset).

Damaged checkpoints (truncated or deleted files, broken JSON) never block a workdir: those whose
JSON files do not parse are hidden from Orbax when the manager is made (Orbax reads every
step's metrics then, for keep-N and the best step), those whose arrays do not read
(:func:`array_damage`, checked before every restore) are hidden when the restore is asked for
(:meth:`Checkpoints.restore_newest` then goes on to the next older one); each gets one warning
and stays where it is. Only a new save of the same step moves a damaged directory aside
(``<step>.unreadable``); nothing is ever deleted but what keep-N prunes among readable ones.
A save that fails (a full disk) is one :class:`CheckpointError` naming the latest intact
checkpoint, raised within a step of the failure (:meth:`Checkpoints.check`); a directory that
cannot be written at all is one before training starts. What Orbax itself would print is kept
off the screen (``orbax_quiet.py``).

Restoring takes the shardings of the current mesh, whatever mesh wrote the checkpoint: a
checkpoint written on 8 devices restores on 1 and the other way round.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dynamixer_jax import trees
from dynamixer_jax.errors import CheckpointError
from dynamixer_jax import orbax_quiet

log = logging.getLogger(__name__)

BEST_METRIC = "eval_top1"
# The small JSON files of a step directory: (relative path, whether every checkpoint has it).
JSON_FILES = (
    ("_CHECKPOINT_METADATA", False),
    ("metrics/metrics", False),
    ("meta/metadata", True),
    ("state/_METADATA", True),
)
SET_ASIDE_SUFFIX = ".unreadable"

T = TypeVar("T")


def _score(metrics: Any) -> float:
    """What "best" means: eval top-1 (checkpoints saved without an evaluation never win)."""
    try:
        return float(dict(metrics or {}).get(BEST_METRIC, -math.inf))
    except (TypeError, ValueError):
        return -math.inf


def _first_line(error: BaseException, within: str = "") -> str:
    """The error's type and first line, short (paths inside ``within`` made relative to it)."""
    text = str(error)
    if within:
        text = text.replace(f"{within}{os.sep}", "")
    text = text.strip().splitlines()
    line = f"{type(error).__name__}: {text[0] if text else ''}"
    return line if len(line) <= 160 else line[:157] + "..."


# Why a write fails, as the operating system says it (found inside TensorStore's messages).
_WRITE_ERRORS = tuple(
    os.strerror(number)
    for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)
)


def _save_reason(error: BaseException) -> str:
    """Why a save failed: the operating system's words where they can be found."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    found = [reason for reason in _WRITE_ERRORS if reason in text]
    return found[0] if found else _first_line(error)


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
            return f"{name}: {_first_line(error, within=step_dir)}"
        if not isinstance(content, dict):
            return f"{name}: not a JSON object"
    return None


# How the arrays of a state directory are stored: the metadata key that marks an array, and the
# TensorStore driver that reads it.
_ARRAY_DRIVERS = {"/.zarray": "zarr", "/zarr.json": "zarr3"}


def array_damage(step_dir: str, *, batch: int = 64) -> str | None:
    """Why the arrays of checkpoint directory ``step_dir`` cannot be read, or None.

    Reads and decodes every array of the state's OCDBT store with TensorStore, waited on
    synchronously (``batch`` arrays at a time), before Orbax restores: a restore that fails
    half-way leaves TensorStore reads in flight that print tracebacks once Orbax's event loop is
    closed. Costs about one more read of the checkpoint.

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
        return _first_line(error, within=step_dir)
    return None


def _directories_made_in_save() -> ocp.AsyncOptions:
    """Orbax's asynchronous options with a checkpoint's directories made inside ``save`` itself.

    Made in the background (Orbax's default), the directories are announced to the writing
    threads by signals; when making them fails (a full disk, a read-only or vanished
    directory), the signal never comes and those threads wait out Orbax's 300 s coordination
    timeout, holding the process's exit, then report the coroutines they never ran. Made in
    ``save``, such a failure raises there, and no writing thread waits for anything. The cost
    is a few directory creations in the training thread per save."""
    fields = {field.name for field in dataclasses.fields(ocp.AsyncOptions)}
    if "create_directories_asynchronously" not in fields:  # older Orbax: always made in save
        return ocp.AsyncOptions()
    return ocp.AsyncOptions(create_directories_asynchronously=False)


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
        return _first_line(error)
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


class Checkpoints:
    """The checkpoints of one workdir (see the module docstring)."""

    def __init__(
        self, directory: str, *, keep: int = 3, asynchronous: bool = True, read_only: bool = False
    ):
        orbax_quiet.install()
        self.directory = os.path.abspath(directory)
        self.skipped: dict[int, str] = {}  # step -> why it cannot be read
        self._hidden: set[int] = set()  # the skipped steps, hidden from Orbax
        self._saving: int | None = None  # the step of the save in flight
        self._failed = False  # a save failed (and was reported)
        if not read_only:
            self._check_writable()
        for step in self._step_dirs():
            reason = json_damage(self._path(step))
            if reason is not None:
                self._skip(step, reason)
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=max(int(keep), 1)),
                checkpoint_managers.BestN(
                    get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        # best_fn makes Orbax store each checkpoint's metrics (the policy above reads them) and
        # track the best step.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_score,
            best_mode="max",
            enable_async_checkpointing=asynchronous,
            async_options=_directories_made_in_save(),
            create=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,
            cleanup_tmp_directories=not read_only,
            step_name_format=_Hiding(ocp.step.standard_name_format(), self._hidden),
        )
        # Reading only: the state's handler restores any part of it (partial restore).
        state_handler = (
            ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
        )
        handlers = {"state": state_handler, "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def _check_writable(self) -> None:
        """CheckpointError now, before any training, where no checkpoint could be written (a
        read-only directory, a file in its place): the alternative is a whole run that fails at
        its first save. Each process checks, since each writes its own part of a checkpoint."""
        probe = os.path.join(self.directory, f".write_check.{os.getpid()}")
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.remove(probe)
        except OSError as error:
            reason = (
                "a file is in its place"
                if os.path.exists(self.directory) and not os.path.isdir(self.directory)
                else error.strerror or str(error)
            )
            raise CheckpointError(
                f"cannot write checkpoints in {self.directory} ({reason}); make it a writable "
                "directory (or choose another --workdir) and run again"
            ) from None

    def _step_dirs(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

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

    def best_step(self) -> int | None:
        """The step of the kept checkpoint with the highest ``eval_top1``, or None (Orbax
        tracks it through ``best_fn``; checkpoints saved without an evaluation never count)."""
        step = self.manager.best_step()
        if step is None or _score(self.manager.metrics(step)) == -math.inf:
            return None
        return step

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Start saving ``state`` as checkpoint ``step`` (returns once the arrays are copied).

        Raises :class:`CheckpointError` if an earlier save failed (e.g. a full disk)."""
        if step in self.manager.all_steps():
            return  # already saved (e.g. a final save right after a periodic one)
        self.wait()  # Orbax's save waits for the previous one too; this names its failure
        if step in self._hidden and os.path.exists(self._path(step)):
            self._move_unreadable(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        try:
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as error:
            raise self._save_failed(step, error) from None
        self._saving = step

    def _move_unreadable(self, step: int) -> None:
        """Rename the unreadable directory of ``step`` so that a new save can take its name."""
        aside, number = self._path(step) + SET_ASIDE_SUFFIX, 1
        while os.path.exists(aside):
            number += 1
            aside = f"{self._path(step)}{SET_ASIDE_SUFFIX}{number}"
        if jax.process_index() == 0:
            os.rename(self._path(step), aside)
        log.warning(
            "moved unreadable checkpoint %s to %s to save step %d", self._path(step), aside, step
        )

    def _intact_steps(self, failed: int | None) -> list[int]:
        return [
            step
            for step in self._step_dirs()
            if step != failed and step not in self._hidden and json_damage(self._path(step)) is None
        ]

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointError:
        self._failed = True
        intact = self._intact_steps(step)
        which = f"checkpoint {step}" if step is not None else "a checkpoint"
        then = (
            f"the latest intact checkpoint is {self._path(intact[-1])}; free space (or fix the "
            "cause) and run the same command to resume from it"
            if intact
            else "no intact checkpoint is left; free space (or fix the cause) and run the same "
            "command to start again"
        )
        return CheckpointError(
            f"saving {which} in {self.directory} failed ({_save_reason(error)}); {then}"
        )

    def check(self) -> None:
        """CheckpointError now if the save in flight has already failed; never waits (the loop
        calls it every step, so a full disk stops training within a step, not at the next
        save). Once Orbax says the save is no longer in progress, waiting for it returns at
        once, with its error if it failed."""
        if self._saving is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Block until every started save is on disk (CheckpointError if one failed)."""
        step, self._saving = self._saving, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as error:
            raise self._save_failed(step, error) from None

    def close(self) -> None:
        try:
            if not self._failed:  # a failed save raises once
                self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # a failed save is reported by wait() above
                pass

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        trees.check(
            abstract_state,
            self.saved_state_metadata(step),
            error=CheckpointError,
            what=f"checkpoint {self._path(step)} was written for a different model or "
            "training configuration",
            advice="run with the configuration it was written with, or use a new --workdir",
        )

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _unreadable(self, step: int, error: BaseException) -> UnreadableCheckpoint:
        return UnreadableCheckpoint(self._path(step), _first_line(error, within=self._path(step)))

    def _check_arrays(self, step: int) -> None:
        reason = array_damage(self._path(step))
        if reason is not None:
            raise UnreadableCheckpoint(self._path(step), reason)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Checkpoint ``step`` as ``(state, meta)``, placed as ``abstract_state``'s shardings say.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g.
        ``jax.eval_shape`` of the state creation, then shardings added). Raises
        :class:`UnreadableCheckpoint` if its files cannot be read, :class:`CheckpointError` if
        it was written for another model.
        """
        self._check_fits(step, abstract_state)  # reads the metadata, checks the arrays
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as error:
            raise self._unreadable(step, error) from None
        return restored["state"], dict(restored["meta"] or {})

    def restore_parts(self, step: int, names: tuple[str, ...], sharding: Any) -> dict[str, Any]:
        """Only the top-level parts ``names`` of checkpoint ``step``'s state (e.g. ``params``
        and ``ema_params``), read in one go and placed with ``sharding`` (a read-only
        ``Checkpoints``); the rest (the optimizer state) is not read."""
        saved = self.saved_state_metadata(step)  # checks the arrays
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

    def set_aside(self, first_step: int) -> list[str]:
        """Move the checkpoints of step ``first_step`` and later to ``diverged/`` beside the
        checkpoints directory (the run's parameters there are known bad); returns their new
        paths. Only process 0 moves files."""
        moved = []
        aside = os.path.join(os.path.dirname(self.directory), "diverged")
        for step in self.all_steps():
            if step < first_step:
                continue
            target = os.path.join(aside, str(step))
            if jax.process_index() == 0:
                os.makedirs(aside, exist_ok=True)
                if os.path.exists(target):
                    shutil.rmtree(target)  # an earlier divergence's copy of the same step
                os.replace(self._path(step), target)
            moved.append(target)
        if moved:
            self.manager.reload()
        return moved

    def saved_state_metadata(self, step: int) -> Any:
        """Shapes and dtypes of checkpoint ``step``'s state (:class:`UnreadableCheckpoint` if
        its arrays cannot be read, see :func:`array_damage`)."""
        self._check_arrays(step)
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as error:
            raise self._unreadable(step, error) from None
        return getattr(saved, "tree", saved)


def find_checkpoint(path: str) -> tuple[Checkpoints, int | None]:
    """The checkpoints and step a user's path points at: a workdir or its ``checkpoints``
    directory (step None: the newest readable one, see :meth:`Checkpoints.restore_newest`), or
    one step directory inside it (that step)."""
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
        checkpoints = Checkpoints(directory, read_only=True, asynchronous=False)
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
