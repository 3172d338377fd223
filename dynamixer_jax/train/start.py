"""Where a training run starts: fresh or fine-tuned parameters, or a checkpoint's state.

Also what a checkpoint records of the data position (checked when resuming), the
``config.json`` a workdir keeps (read back by ``dynamixer_jax.load``) and the history of the
configs its starts brought (``config_history/``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import Any

import jax

from dynamixer_jax.model.variants import abstract_variables, init_variables
from dynamixer_jax.train import parallel
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.plan import InitPlan, RunPlan
from dynamixer_jax.train.state import TrainState, create_train_state
from dynamixer_jax.train.weights import grid_patterns, load_params, merge_params, resample_to

log = logging.getLogger(__name__)


def initial_state(
    checkpoints: Checkpoints, model: Any, tx: Any, plan: RunPlan, meta: dict, mesh: Any
) -> TrainState:
    """The state to train from, laid out over ``mesh`` as ``plan.optim.state_sharding`` says
    (:func:`state_layout`): the newest readable checkpoint's if there is one, else fresh (or
    fine-tuned, with ``plan.init_from``) parameters and optimizer state. Unreadable checkpoints
    are skipped with a warning each and left in place."""
    create, abstract, layout = _creation(model, tx, plan, mesh)
    if checkpoints.all_steps():
        found = checkpoints.restore_newest(
            lambda step: restore_state(checkpoints, step, abstract, meta, mesh, layout)
        )
        if found is not None:
            return found[1]
    if checkpoints.skipped:
        log.warning(
            "no checkpoint in %s can be read: training starts from scratch (the unreadable "
            "ones are left in place)",
            checkpoints.directory,
        )
    params = initial_params(model, plan.seed, plan.init_from, mesh)
    return jax.jit(create, out_shardings=layout)(params)


def state_layout(model: Any, tx: Any, plan: RunPlan, mesh: Any) -> Any:
    """The shardings of the training state of ``model`` (``plan.optim.state_sharding``)."""
    return _creation(model, tx, plan, mesh)[2]


def _creation(model: Any, tx: Any, plan: RunPlan, mesh: Any) -> tuple[Any, Any, Any]:
    """``(create, abstract state, its shardings)``: ``create(params)`` makes a fresh state."""
    create = functools.partial(
        create_train_state, tx=tx, seed=plan.seed, use_ema=plan.optim.ema_decay > 0
    )
    abstract = jax.eval_shape(create, abstract_variables(model)["params"])
    return create, abstract, parallel.state_shardings(abstract, mesh, plan.optim.state_sharding)


def initial_params(model: Any, seed: int, init_from: InitPlan | None, mesh: Any) -> Any:
    """Fresh parameters (the authors' init), merged with ``init_from`` when fine-tuning."""
    params = init_variables(model, jax.random.key(seed))["params"]
    if init_from is not None:
        loaded = load_params(init_from.path, mesh, ema=init_from.ema)
        if init_from.resample_generate:
            loaded = resample_to(loaded, model, init_from.path)
        params, report = merge_params(
            jax.device_get(params),
            loaded,
            reset_head=init_from.reset_head,
            reinit=grid_patterns(loaded, model),
        )
        fresh = report["reinitialised"]
        log.info(
            "fine-tuning from %s: %d tensors loaded, %d freshly initialised (%s), %d unused",
            init_from.path,
            len(report["taken"]),
            len(fresh),
            ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""),
            len(report["unused"]),
        )
    return jax.device_put(params, parallel.replicated(mesh))


def restore_state(
    checkpoints: Checkpoints,
    step: int,
    abstract: Any,
    meta: dict,
    mesh: Any,
    layout: Any = None,
) -> Any:
    """The state of checkpoint ``step``, laid out as ``layout`` says (default replicated);
    warns if the data settings changed."""
    layout = layout or jax.tree_util.tree_map(lambda _: parallel.replicated(mesh), abstract)
    abstract = jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        layout,
    )
    state, saved_meta = checkpoints.restore(step, abstract)
    changed = {
        key: (saved_meta.get(key), value)
        for key, value in meta.items()
        if saved_meta.get(key) not in (None, value)
    }
    if changed:
        log.warning(
            "resuming with different data settings %s: batches from here on differ "
            "from the interrupted run's",
            changed,
        )
    log.info("resumed from checkpoint %s/%d", checkpoints.directory, step)
    return state


def data_meta(plan: RunPlan, steps_per_epoch: int) -> dict:
    """What the data position of a checkpoint means (checked when resuming)."""
    return {
        "seed": plan.seed,
        "global_batch_size": plan.data.batch_size,
        "dataset": plan.data.dataset,
        "train_split": plan.data.train_split,
        "steps_per_epoch": int(steps_per_epoch),
    }


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
