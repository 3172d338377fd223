"""Orbax checkpoints of the training state in ``WORKDIR/checkpoints/<step>``.

One ``orbax.checkpoint.CheckpointManager``: saves are asynchronous (the arrays are copied off the
devices, then written in the background while training goes on); a checkpoint directory only
appears under its final name once it is complete, so a run killed mid-save leaves the previous
checkpoint as the latest. Kept: the last ``keep`` checkpoints plus the one with the best
``eval_top1`` (Orbax preservation policies). Each checkpoint holds the ``TrainState`` and a small
JSON record (``meta``) of what the data position means (seed, global batch size, dataset).

Restoring takes the shardings of the current mesh, whatever mesh wrote the checkpoint: a
checkpoint written on 8 devices restores on 1 and the other way round.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from dynamixer_jax import trees
from dynamixer_jax.errors import CheckpointError

log = logging.getLogger(__name__)

BEST_METRIC = "eval_top1"


def _score(metrics: dict) -> float:
    """What "best" means: eval top-1 (checkpoints saved without an evaluation never win)."""
    return float(metrics.get(BEST_METRIC, -math.inf))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class Checkpoints:
    """The checkpoints of one workdir (see the module docstring)."""

    def __init__(
        self, directory: str, *, keep: int = 3, asynchronous: bool = True, read_only: bool = False
    ):
        self.directory = os.path.abspath(directory)
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
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step of the kept checkpoint with the highest ``eval_top1``, or None (Orbax
        tracks it through ``best_fn``; checkpoints saved without an evaluation never count)."""
        step = self.manager.best_step()
        if step is None or _score(self.manager.metrics(step) or {}) == -math.inf:
            return None
        return step

    def save(self, step: int, state: Any, meta: dict, metrics: dict | None = None) -> None:
        """Start saving ``state`` as checkpoint ``step`` (returns once the arrays are copied)."""
        if step in self.manager.all_steps():
            return  # already saved (e.g. a final save right after a periodic one)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

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

    def _unreadable(self, step: int, error: BaseException) -> CheckpointError:
        older = [s for s in self.all_steps() if s < step]
        then = (
            f"move it out of {self.directory} to resume from step {older[-1]}"
            if older
            else "move it away to start from scratch"
        )
        return CheckpointError(
            f"checkpoint {self._path(step)} cannot be read ({_first_line(error)}); {then}"
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Checkpoint ``step`` as ``(state, meta)``, placed as ``abstract_state``'s shardings say.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (e.g.
        ``jax.eval_shape`` of the state creation, then shardings added).
        """
        self._check_fits(step, abstract_state)
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

    def saved_state_metadata(self, step: int) -> Any:
        """Shapes and dtypes of checkpoint ``step``'s state, without reading the arrays."""
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as error:
            raise self._unreadable(step, error) from None
        return getattr(saved, "tree", saved)


def find_checkpoint(path: str) -> tuple[Checkpoints, int]:
    """The checkpoints and step a user's path points at: a workdir (its latest checkpoint), a
    workdir's ``checkpoints`` directory, or one step directory inside it."""
    path = os.path.abspath(os.path.expanduser(path))
    candidates = [(os.path.join(path, "checkpoints"), None), (path, None)]
    parent, name = os.path.split(path.rstrip("/"))
    if name.isdigit():
        candidates.append((parent, int(name)))
    for directory, step in candidates:
        if not os.path.isdir(directory):
            continue
        checkpoints = Checkpoints(directory, read_only=True, asynchronous=False)
        steps = checkpoints.all_steps()
        if step is None and steps:
            return checkpoints, steps[-1]
        if step is not None and step in steps:
            return checkpoints, step
    raise CheckpointError(
        f"no checkpoint found at {path}: expected a workdir, its checkpoints/ "
        "directory or one checkpoint step directory in it"
    )
