"""``train_and_evaluate(config, workdir)``: the whole training run, resumable at any step.

1. Check the config against the devices, open the dataset and build the model: every user
   error surfaces here, as one line, before anything is compiled.
2. Restore the latest checkpoint in ``WORKDIR/checkpoints`` if there is one, else initialise
   (from ``config.init_from`` when fine-tuning).
3. Loop: global batch -> compiled train step. Each step's metrics are fetched one step late, so
   the host never waits for the step it just queued; a non-finite loss stops the run there.
   Log every ``log_every_steps``, evaluate raw and EMA parameters every ``eval_every_steps``
   (default: each epoch), checkpoint every ``checkpoint_every_steps`` and after every
   evaluation. SIGTERM checkpoints the current step and returns (``status`` "preempted").

Because batch ``k`` and the step's random key are pure functions of ``(seed, k)``, a run
restarted from the checkpoint of step ``k`` computes exactly what the uninterrupted run did.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np

from dynamixer_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from dynamixer_jax.model.init import abstract_variables, init_variables
from dynamixer_jax.train import builders, parallel
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.evaluation import evaluate_params, make_eval_data, open_configured_source
from dynamixer_jax.train.optimizer import learning_rate_schedule, make_optimizer
from dynamixer_jax.train.preemption import PreemptionWatch
from dynamixer_jax.train.reporting import MetricsLog, Progress
from dynamixer_jax.train.state import TrainState, create_train_state
from dynamixer_jax.train.steps import make_eval_step, make_train_step

log = logging.getLogger("dynamixer_jax.train")


def _initial_params(config, model, mesh) -> Any:
    """Fresh parameters (the authors' init), merged with ``config.init_from`` when set."""
    params = init_variables(model, jax.random.key(config.seed))["params"]
    init_from = config.get("init_from")
    if init_from:
        from dynamixer_jax.train.weights import (  # noqa: PLC0415
            grid_patterns, load_params, merge_params)
        loaded = load_params(init_from, mesh, ema=config.get("init_from_ema", False))
        params, report = merge_params(jax.device_get(params), loaded,
                                      reset_head=config.get("reset_head", True),
                                      reinit=grid_patterns(loaded, model))
        log.info("fine-tuning from %s: %d tensors loaded, %d freshly initialised (%s), "
                 "%d unused", init_from, len(report["taken"]), len(report["reinitialised"]),
                 ", ".join(report["reinitialised"][:6]) + (" ..." if len(report["reinitialised"]) > 6 else ""),
                 len(report["unused"]))
    return jax.device_put(params, parallel.replicated(mesh))


def _with_sharding(abstract: Any, sharding) -> Any:
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), abstract)


def _data_meta(config, train_data) -> dict:
    """What the data position of a checkpoint means (checked when resuming)."""
    return {"seed": int(config.seed), "global_batch_size": int(config.batch_size),
            "dataset": str(config.dataset), "train_split": str(config.train_split),
            "steps_per_epoch": int(train_data.steps_per_epoch)}


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as file:
            file.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
                       else json.dumps(dict(config), indent=2, default=str))


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Train (or resume training) as ``config`` says, in ``workdir``; evaluate along the way.

    Returns ``{"status": "finished" | "preempted", "step": ..., **last eval metrics}``.
    Raises ``ConfigError``/``DataError``/``CheckpointError`` for user errors (before compiling)
    and ``TrainingDiverged`` when the loss stops being finite.
    """
    from dynamixer_jax.data.pipeline import TrainData  # noqa: PLC0415 (TensorFlow)

    workdir = os.path.abspath(os.path.expanduser(workdir))
    builders.check_numbers(config)
    builders.check_devices(config)
    augment = builders.build_augment(config)
    mixup = builders.build_mixup(config)
    mesh = parallel.make_mesh()
    source = open_configured_source(config)
    num_classes = config.num_classes if config.num_classes > 0 else source.num_classes
    model = builders.build_model(config, num_classes)
    train_data = TrainData(source, global_batch_size=config.batch_size,
                           image_size=config.image_size, seed=config.seed,
                           split=config.train_split, augment=augment,
                           shuffle_buffer_size=config.shuffle_buffer_size,
                           threads=config.get("data_threads"),
                           prefetch_batches=config.get("prefetch_batches", 2))
    eval_data = make_eval_data(config, source)
    plan = builders.plan_steps(config, train_data.steps_per_epoch)
    schedule = learning_rate_schedule(
        learning_rate=config.learning_rate, warmup_learning_rate=config.warmup_learning_rate,
        min_learning_rate=config.min_learning_rate, warmup_steps=plan.warmup_steps,
        cosine_steps=plan.cosine_steps)
    tx = make_optimizer(schedule, weight_decay=config.weight_decay, b1=config.adam_b1,
                        b2=config.adam_b2, eps=config.adam_eps,
                        grad_clip_norm=config.grad_clip_norm)
    os.makedirs(workdir, exist_ok=True)
    log.info("%s on %s: %d classes, %d training examples, %d steps of %d (%d per epoch), %s",
             config.model, config.dataset, num_classes, train_data.num_examples,
             plan.total_steps, config.batch_size, plan.steps_per_epoch, parallel.describe(mesh))

    use_ema = config.ema_decay > 0
    replicated = parallel.replicated(mesh)
    create = functools.partial(create_train_state, tx=tx, seed=config.seed, use_ema=use_ema)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                              asynchronous=config.get("async_checkpointing", True))
    meta = _data_meta(config, train_data)
    try:
        latest = checkpoints.latest_step()
        if latest is not None:
            abstract = jax.eval_shape(create, abstract_variables(model)["params"])
            state, saved_meta = checkpoints.restore(latest, _with_sharding(abstract, replicated))
            changed = {key: (saved_meta.get(key), value) for key, value in meta.items()
                       if saved_meta.get(key) not in (None, value)}
            if changed:
                log.warning("resuming with different data settings %s: batches from here on "
                            "differ from the interrupted run's", changed)
            log.info("resumed from checkpoint %s/%d", checkpoints.directory, latest)
        else:
            state = jax.jit(create, out_shardings=replicated)(_initial_params(config, model, mesh))
        _write_config(config, workdir)
        return _run(config, state, model, tx, schedule, mixup, num_classes, mesh, plan,
                    train_data, eval_data, checkpoints, meta, workdir)
    finally:
        checkpoints.close()


def _run(config, state: TrainState, model, tx, schedule, mixup, num_classes, mesh, plan,
         train_data, eval_data, checkpoints: Checkpoints, meta: dict, workdir: str
         ) -> dict[str, Any]:
    step = int(jax.device_get(state.step))
    metrics_log = MetricsLog(workdir, enabled=jax.process_index() == 0, start_step=step)
    train_step = make_train_step(model, tx, schedule, mesh, num_classes=num_classes, mixup=mixup,
                                 augment=train_data.augment.on_device(),
                                 ema_decay=config.ema_decay,
                                 grad_accum_steps=config.grad_accum_steps)
    eval_step = make_eval_step(model, mesh, mean=tuple(config.mean), std=tuple(config.std))
    progress = Progress(step, plan.total_steps, config.batch_size)
    interval_losses: list[float] = []
    last_eval: dict[str, float] = {}
    status = "finished"

    def evaluate_now(at_step: int) -> dict[str, float]:
        params = {"raw": state.params}
        if config.ema_decay > 0:
            params["ema"] = state.ema_params
        results = evaluate_params(eval_step, params, eval_data, mesh)
        results.pop("eval_examples", None)
        metrics_log.write(at_step, results)
        log.info("eval at step %d: %s", at_step,
                 "  ".join(f"{key} {value:.4f}" for key, value in results.items()))
        return results

    def check(at_step: int, metrics) -> dict[str, float]:
        values = {key: float(value) for key, value in jax.device_get(metrics).items()}
        if not values.pop("finite"):
            checkpoints.wait()
            kept = checkpoints.latest_step()
            where = (f"the last good checkpoint, step {kept}, is kept in {checkpoints.directory}"
                     if kept is not None else "no checkpoint had been written yet")
            raise TrainingDiverged(
                f"training loss is {values['train_loss']} (gradient norm "
                f"{values['grad_norm']}) at step {at_step}; {where}. Lower "
                "--config.learning_rate, raise --config.warmup_epochs or set "
                "--config.grad_clip_norm, then run again")
        interval_losses.append(values["train_loss"])
        return values

    try:
        with PreemptionWatch() as preemption:
            if step >= plan.total_steps:
                log.info("already trained for %d steps; evaluating", step)
                last_eval = evaluate_now(step)
            batches = train_data.batches(start_step=step)
            pending = None
            while step < plan.total_steps:
                if preemption.requested(step):
                    if pending is not None:
                        check(*pending)
                    checkpoints.save(step, state, meta)
                    checkpoints.wait()
                    log.info("preempted: saved checkpoint %s/%d; run the same command to resume",
                             checkpoints.directory, step)
                    status = "preempted"
                    break
                batch = parallel.global_batch(next(batches), mesh)
                state, metrics = train_step(state, batch)
                if pending is not None:
                    check(*pending)
                step += 1
                pending = (step, metrics)
                log_now = step % config.log_every_steps == 0
                eval_now = step % plan.eval_every_steps == 0 or step == plan.total_steps
                save_now = (step % config.checkpoint_every_steps == 0 or eval_now)
                if not (log_now or eval_now or save_now):
                    continue
                values = check(*pending)
                pending = None
                if log_now or step == plan.total_steps:
                    rate = progress.images_per_second(step)
                    loss = float(np.mean(interval_losses))
                    interval_losses.clear()
                    metrics_log.write(step, {"train_loss": loss,
                                             "learning_rate": values["learning_rate"],
                                             "grad_norm": values["grad_norm"],
                                             "images_per_second": rate})
                    log.info("%s", progress.line(step, loss, values["learning_rate"], rate))
                scores = None
                if eval_now:
                    last_eval = evaluate_now(step)
                    scores = {"eval_top1": last_eval["eval_top1"]}
                if save_now:
                    checkpoints.save(step, state, meta, metrics=scores)
                if eval_now or save_now:
                    progress.restart(step)  # throughput counts training time only
    finally:
        metrics_log.close()
    checkpoints.wait()
    return {"status": status, "step": step, **last_eval}
