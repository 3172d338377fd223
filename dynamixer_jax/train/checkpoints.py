"""Orbax checkpoints of the training state in ``WORKDIR/checkpoints/<step>``, as a run writes them.

:class:`Checkpoints` is a :class:`~dynamixer_jax.checkpoint_reading.CheckpointReader` (which
steps are there; damaged ones hidden, each with one warning, and left in place) that also
saves: asynchronously (the arrays are copied off the devices, then written in the background
while training goes on); a checkpoint directory only appears under its final name once it is
complete, so a run killed mid-save leaves the previous checkpoint as the latest. Kept: the last
``keep`` checkpoints plus the one with the best ``eval_top1`` (Orbax preservation policies).
Each checkpoint holds the ``TrainState`` and a small JSON record (``meta``) of what the data
position means (seed, global batch size, dataset).

Only a new save of the same step moves a damaged directory aside (``<step>.unreadable``);
nothing is ever deleted but what keep-N prunes among readable ones. A save that fails (a full
disk) is one :class:`CheckpointError` naming the latest intact checkpoint, raised within a step
of the failure (:meth:`Checkpoints.check`); a directory that cannot be written at all is one
before training starts. What Orbax itself would print is kept off the screen
(``orbax_quiet.py``).

Restoring takes the shardings of the current mesh, whatever mesh wrote the checkpoint: a
checkpoint written on 8 devices restores on 1 and the other way round.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dynamixer_jax import trees
from dynamixer_jax.checkpoint_reading import (
    CheckpointReader,
    UnreadableCheckpoint,
    array_damage,
    first_line,
    json_damage,
)
from dynamixer_jax.errors import CheckpointError

log = logging.getLogger(__name__)

BEST_METRIC = "eval_top1"
SET_ASIDE_SUFFIX = ".unreadable"


def _score(metrics: Any) -> float:
    """What "best" means: eval top-1 (checkpoints saved without an evaluation never win)."""
    try:
        return float(dict(metrics or {}).get(BEST_METRIC, -math.inf))
    except (TypeError, ValueError):
        return -math.inf


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
    return found[0] if found else first_line(error)


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


def _check_writable(directory: str) -> None:
    """CheckpointError now, before any training, where no checkpoint could be written (a
    read-only directory, a file in its place): the alternative is a whole run that fails at
    its first save. Each process checks, since each writes its own part of a checkpoint."""
    probe = os.path.join(directory, f".write_check.{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        reason = (
            "a file is in its place"
            if os.path.exists(directory) and not os.path.isdir(directory)
            else error.strerror or str(error)
        )
        raise CheckpointError(
            f"cannot write checkpoints in {directory} ({reason}); make it a writable "
            "directory (or choose another --workdir) and run again"
        ) from None


class Checkpoints(CheckpointReader):
    """The checkpoints of one workdir, written as training goes (see the module docstring)."""

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True):
        self._keep, self._asynchronous = max(int(keep), 1), asynchronous
        self._saving: int | None = None  # the step of the save in flight
        self._failed = False  # a save failed (and was reported)
        _check_writable(os.path.abspath(directory))
        super().__init__(directory)

    def _options(self, step_name_format: Any) -> ocp.CheckpointManagerOptions:
        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=self._keep),
                checkpoint_managers.BestN(
                    get_metric_fn=_score, n=1, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        # best_fn makes Orbax store each checkpoint's metrics (the policy above reads them) and
        # track the best step.
        return ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=_score,
            best_mode="max",
            enable_async_checkpointing=self._asynchronous,
            async_options=_directories_made_in_save(),
            create=True,
            read_only=False,
            save_interval_steps=1,
            cleanup_tmp_directories=True,
            step_name_format=step_name_format,
        )

    def _handlers(self) -> dict[str, Any]:
        return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}

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
            super().close()

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """CheckpointError if checkpoint ``step`` was written for another model, unless its
        arrays are damaged (then it is :class:`UnreadableCheckpoint`, skipped as any other)."""
        saved = self.saved_state_metadata(step)
        try:
            trees.check(
                abstract_state,
                saved,
                error=CheckpointError,
                what=f"checkpoint {self._path(step)} was written for a different model or "
                "training configuration",
                advice="run with the configuration it was written with, or use a new --workdir",
            )
        except CheckpointError:
            reason = array_damage(self._path(step))
            if reason is not None:
                raise UnreadableCheckpoint(self._path(step), reason) from None
            raise

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Checkpoint ``step`` as ``(state, meta)``, placed as ``abstract_state``'s shardings say.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g.
        ``jax.eval_shape`` of the state creation, then shardings added). Raises
        :class:`UnreadableCheckpoint` if its files cannot be read, :class:`CheckpointError` if
        it was written for another model.
        """
        self._check_fits(step, abstract_state)  # reads the metadata only
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as error:
            raise self._unreadable(step, error) from None
        return restored["state"], dict(restored["meta"] or {})

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
