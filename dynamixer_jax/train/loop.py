"""``train_and_evaluate(config, workdir)``: the whole training run, resumable at any step.

1. Read the config into a plan (``plan.py``), create the workdir and lock it for this run
   (``workdir_lock.py``), open the dataset and build the model: every user error surfaces
   here, as one line, before anything is compiled.
2. Restore the latest checkpoint in ``WORKDIR/checkpoints`` if there is one (warning if the
   data settings changed), else initialise (from ``init_from`` when fine-tuning); record this
   start's config in the workdir (``run_record.py``).
3. Loop: global batch -> compiled train step. Each step's metrics are fetched one step late, so
   the host never waits for the step it just queued; a non-finite loss or parameter stops the
   run there, before anything is saved, and sets aside the checkpoint whose parameters gave it. Logging, evaluation (raw and EMA parameters) and checkpoints
   follow ``cadence.py``. SIGTERM checkpoints the current step and returns (``status``
   "preempted").

Because batch ``k`` and the step's random key are pure functions of ``(seed, k)``, a run
restarted from the checkpoint of step ``k`` computes exactly what the uninterrupted run did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any

import jax
import numpy as np

from dynamixer_jax.data.build import make_eval_data, make_train_data, open_configured_source
from dynamixer_jax.errors import DataError, TrainingDiverged
from dynamixer_jax.model.variants import abstract_variables, init_variables
from dynamixer_jax.train import memory, parallel, run_record, workdir_lock
from dynamixer_jax.train.cadence import Cadence
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.evaluation import evaluate_params
from dynamixer_jax.train.optimizer import optimizer_from_plan
from dynamixer_jax.train.plan import InitPlan, RunPlan, StepCounts, make_plan
from dynamixer_jax.train.preemption import PreemptionWatch
from dynamixer_jax.train.profiling import StepProfiler
from dynamixer_jax.train.reporting import MetricsLog, Progress
from dynamixer_jax.train.state import TrainState, create_train_state
from dynamixer_jax.train.steps import make_eval_step, make_train_step
from dynamixer_jax.train.weights import grid_patterns, load_params, merge_params, resample_to

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the loop works with, built once before it starts."""

    steps: StepCounts
    train_step: Any
    eval_step: Any
    train_data: Any
    eval_data: Any
    mesh: Any
    checkpoints: Checkpoints
    metrics_log: MetricsLog
    workdir: str
    meta: dict
    use_ema: bool
    num_classes: int


def _check_dataset_classes(dataset_classes: int | None, dataset: str) -> None:
    """DataError for a dataset with fewer than two classes: it trains to loss 0 and top-1 1.0
    and learns nothing."""
    if dataset_classes is not None and dataset_classes < 2:
        raise DataError(
            f"dataset {dataset} has {dataset_classes} class: a classifier learns nothing from it "
            "(loss 0, top-1 1.0 at once); give the training split two or more classes "
            "(for a folder dataset, one folder per class)"
        )


def check_labels(batch: dict, num_classes: int, step: int, *, agree: bool = False) -> None:
    """DataError if a label of the host batch ``batch`` (for step ``step + 1``) has no output
    among the head's ``num_classes`` (checked on the host: costs nothing next to a step).

    ``agree``: every process takes the extremes of all processes' labels (a collective, so
    that all of them stop, not one)."""
    labels = np.asarray(batch["label"])
    if "mask" in batch:
        labels = labels[np.asarray(batch["mask"], bool)]
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if agree:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        both = np.asarray(multihost_utils.process_allgather(np.array([low, high], np.int64)))
        low, high = int(both.reshape(-1, 2)[:, 0].min()), int(both.reshape(-1, 2)[:, 1].max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DataError(
            f"label {bad} in the batch of step {step + 1} is outside the model's "
            f"{num_classes} classes (0 to {num_classes - 1}); set --config.num_classes to "
            "the number of classes of the dataset's labels"
        )


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Train (or resume training) as ``config`` says, in ``workdir``; evaluate along the way.

    Returns ``{"status": "finished" | "preempted", "step": ..., **last eval metrics}``.
    Raises ``ConfigError``/``DataError``/``CheckpointError`` for user errors (before compiling)
    and ``TrainingDiverged`` when the loss stops being finite.
    """
    plan = make_plan(config)  # every config error, before TensorFlow is even imported
    workdir = workdir_lock.create_workdir(workdir)
    # A second run on this workdir stops at the lock. SIGTERM and Ctrl-C are caught from here on,
    # while the data opens and the step compiles too: the loop stops before its next step.
    with workdir_lock.lock_for_training(workdir), PreemptionWatch() as preemption:
        return _train(plan, workdir, preemption)


def _train(plan: RunPlan, workdir: str, preemption: PreemptionWatch) -> dict[str, Any]:
    """:func:`train_and_evaluate` once the plan is checked and the workdir is this run's."""
    mesh = parallel.make_mesh()
    source = open_configured_source(plan.data)
    train_data, eval_data = make_train_data(plan, source), make_eval_data(plan.data, source)
    num_classes = plan.model.classes(source.num_classes, f"dataset {plan.data.dataset}")
    _check_dataset_classes(source.num_classes, plan.data.dataset)
    model = plan.model.build(num_classes)
    steps = plan.steps(train_data.steps_per_epoch)
    schedule, tx = optimizer_from_plan(plan.optim, steps)
    _log_start(plan, num_classes, train_data, steps, mesh)
    meta = data_meta(plan, train_data.steps_per_epoch)
    checkpoints = Checkpoints(
        os.path.join(workdir, "checkpoints"),
        keep=plan.cadence.keep_checkpoints,
        asynchronous=plan.cadence.async_checkpointing,
    )
    try:
        state = initial_state(checkpoints, model, tx, plan, meta, mesh)
        first_step = int(jax.device_get(state.step))
        run_record.write_config(plan.config_json, workdir, first_step)
        train_step = make_train_step(
            model,
            tx,
            schedule,
            mesh,
            num_classes=num_classes,
            mixup=plan.mixup,
            augment=plan.data.augment.on_device(),
            ema_decay=plan.optim.ema_decay,
            grad_accum_steps=plan.optim.grad_accum_steps,
            state_sharding=state_layout(model, tx, plan, mesh),
        )
        eval_step = make_eval_step(model, mesh, mean=plan.data.mean, std=plan.data.std)
        metrics_log = MetricsLog(workdir, enabled=jax.process_index() == 0, start_step=first_step)
        run = _Run(
            steps=steps,
            train_step=train_step,
            eval_step=eval_step,
            train_data=train_data,
            eval_data=eval_data,
            mesh=mesh,
            checkpoints=checkpoints,
            metrics_log=metrics_log,
            workdir=workdir,
            meta=meta,
            use_ema=plan.optim.ema_decay > 0,
            num_classes=num_classes,
        )
        try:
            return _loop(run, plan, state, preemption)
        finally:
            metrics_log.close()
    finally:
        checkpoints.close()


def _log_start(
    plan: RunPlan, num_classes: int, train_data: Any, steps: StepCounts, mesh: Any
) -> None:
    log.info(
        "%s on %s: %d classes, %d training examples, %d steps of %d (%d per epoch), %s",
        plan.model.name,
        plan.data.dataset,
        num_classes,
        train_data.num_examples,
        steps.total_steps,
        plan.data.batch_size,
        steps.steps_per_epoch,
        parallel.describe(mesh),
    )


def data_meta(plan: RunPlan, steps_per_epoch: int) -> dict:
    """What the data position of a checkpoint means (checked when resuming)."""
    return {
        "seed": plan.seed,
        "global_batch_size": plan.data.batch_size,
        "dataset": plan.data.dataset,
        "train_split": plan.data.train_split,
        "steps_per_epoch": int(steps_per_epoch),
    }


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


def _loop(
    run: _Run, plan: RunPlan, state: TrainState, preemption: PreemptionWatch
) -> dict[str, Any]:
    """The training loop proper, from ``state``'s step to the end (or a preemption)."""
    step, total = int(jax.device_get(state.step)), run.steps.total_steps
    cadence = Cadence(plan.cadence, run.steps)
    progress = Progress(step, total, plan.data.batch_size)
    losses: list[float] = []  # of the steps since the last log line
    last_eval: dict[str, float] = {}
    if step >= total:
        log.info("already trained for %d steps; evaluating", step)
        last_eval = _evaluate(run, state, step)
    batches = run.train_data.batches(start_step=step)
    pending = None  # (step, metrics) of the step queued last, not yet fetched
    profiler = StepProfiler(
        run.workdir, plan.cadence.profile_first_step, plan.cadence.profile_num_steps
    )
    first_step = step
    with contextlib.closing(profiler):
        while step < total:
            stop = preemption.requested(step)
            if stop and step == first_step:
                log.info("%s before the first step: nothing new to save", preemption.reason)
                return {"status": "preempted", "step": step, **last_eval}
            if stop:
                if pending is not None:
                    _fetch(run.checkpoints, *pending)
                return _preempted(run, step, state, last_eval, preemption.reason)
            waiting = time.perf_counter()
            host_batch = next(batches)
            if jax.process_count() == 1 or step == first_step:  # several: once, together
                check_labels(host_batch, run.num_classes, step, agree=jax.process_count() > 1)
            batch = parallel.global_batch(host_batch, run.mesh)
            progress.waited_for_input(time.perf_counter() - waiting)
            with profiler.step(step + 1):
                if step == first_step:
                    state, metrics = _first_step(run, plan, state, batch)
                else:
                    state, metrics = run.train_step(state, batch)
            profiler.finished(step + 1, metrics)
            run.checkpoints.check()
            if pending is not None:
                losses.append(_fetch(run.checkpoints, *pending)["train_loss"])
                progress.step_done(pending[0])
            step, pending = step + 1, (step + 1, metrics)
            due = cadence(step)
            if not due:
                continue
            values = _fetch(run.checkpoints, *pending)
            progress.step_done(step)
            losses, pending = [*losses, values["train_loss"]], None
            if due.log:
                _log_train(run.metrics_log, progress, step, losses, values)
                losses = []
            if due.evaluate:
                last_eval = _evaluate(run, state, step)
            if due.save:
                scores = {"eval_top1": last_eval["eval_top1"]} if due.evaluate else None
                run.checkpoints.save(step, state, run.meta, metrics=scores)
            if due.evaluate or due.save:
                progress.restart(step)  # throughput counts training time only
    run.checkpoints.wait()
    return {"status": "finished", "step": step, **last_eval}


def _first_step(run: _Run, plan: RunPlan, state: TrainState, batch: Any) -> tuple[Any, Any]:
    """The first (compiled) step, waited for: a step that does not fit the devices is one
    :class:`OutOfMemory` line with what it needs and what fits, instead of XLA's traceback."""
    args = memory.abstract((state, batch))
    try:
        state, metrics = run.train_step(state, batch)
        jax.block_until_ready(metrics)
    except Exception as error:
        if not memory.is_out_of_memory(error):
            raise
        raise memory.out_of_memory(
            run.train_step,
            args,
            batch_size=plan.data.batch_size,
            image_size=plan.model.image_size,
            grad_accum_steps=plan.optim.grad_accum_steps,
            remat=plan.model.remat,
        ) from None
    return state, metrics


def _fetch(checkpoints: Checkpoints, step: int, metrics: Any) -> dict[str, float]:
    """The step's metrics on the host; TrainingDiverged if they are not finite."""
    values = {key: float(value) for key, value in jax.device_get(metrics).items()}
    if values.pop("finite"):
        return values
    raise _diverged(checkpoints, step, values)


def _diverged(checkpoints: Checkpoints, step: int, values: dict[str, float]) -> TrainingDiverged:
    """Set aside the checkpoints that are not known good, and say where a re-run resumes.

    Step ``step``'s loss was computed with the parameters of step ``step - 1``: when that loss
    is not finite, checkpoint ``step - 1`` (if saved) holds parameters that diverge, and resuming
    from it would diverge again at once. It moves to ``WORKDIR/diverged`` (kept for inspection,
    no longer resumed from), so the newest checkpoint left is one whose parameters gave a finite
    loss.
    """
    checkpoints.wait()
    loss_finite = math.isfinite(values["train_loss"])
    moved = checkpoints.set_aside(first_step=step if loss_finite else step - 1)
    kept = checkpoints.latest_step()
    cause = (
        f"training loss is {values['train_loss']} (gradient norm {values['grad_norm']}) at "
        f"step {step}"
        if not loss_finite or not math.isfinite(values["grad_norm"])
        else f"the parameters after step {step} are not finite"
    )
    aside = (
        f"checkpoint {', '.join(os.path.basename(path) for path in moved)}, whose parameters "
        f"gave that, was moved to {os.path.dirname(moved[0])}; "
        if moved
        else ""
    )
    where = (
        f"the last good checkpoint, step {kept}, is kept in {checkpoints.directory} and a "
        "re-run resumes from it"
        if kept is not None
        else "no good checkpoint had been written yet, so a re-run starts afresh"
    )
    return TrainingDiverged(
        f"{cause}; {aside}{where}. Lower --config.learning_rate, raise --config.warmup_epochs "
        "or set --config.grad_clip_norm, then run again"
    )


def _log_train(
    metrics_log: MetricsLog,
    progress: Progress,
    step: int,
    losses: list[float],
    values: dict[str, float],
) -> None:
    """One progress line and metrics record: the mean loss since the last one."""
    measured = progress.measure(step)
    loss = float(np.mean(losses))
    record = {
        "train_loss": loss,
        "learning_rate": values["learning_rate"],
        "grad_norm": values["grad_norm"],
    }
    if math.isfinite(measured.images_per_second):  # not on a line of the compiled first step
        record["images_per_second"] = measured.images_per_second
        record["input_wait_fraction"] = measured.input_wait_fraction
    metrics_log.write(step, record)
    log.info("%s", progress.line(step, loss, values["learning_rate"], measured))


def _evaluate(run: _Run, state: TrainState, step: int) -> dict[str, float]:
    """Raw (and EMA) parameters on the whole eval split; logged and recorded."""
    params = {"raw": state.params, **({"ema": state.ema_params} if run.use_ema else {})}
    # The eval step takes replicated weights: a sharded EMA (or FSDP parameters) is gathered.
    params = jax.device_put(params, parallel.replicated(run.mesh))
    results = evaluate_params(run.eval_step, params, run.eval_data, run.mesh)
    results.pop("eval_examples", None)
    run.metrics_log.write(step, results)
    log.info(
        "eval at step %d: %s",
        step,
        "  ".join(f"{key} {value:.4f}" for key, value in results.items()),
    )
    return results


def _preempted(
    run: _Run, step: int, state: TrainState, last_eval: dict, reason: str
) -> dict[str, Any]:
    """Save the current step after SIGTERM or Ctrl-C (``reason``) and end the run."""
    run.checkpoints.save(step, state, run.meta)
    run.checkpoints.wait()
    log.info(
        "%s: saved checkpoint %s/%d; run the same command to resume",
        reason,
        run.checkpoints.directory,
        step,
    )
    return {"status": "preempted", "step": step, **last_eval}
