"""Evaluation: top-1, top-5 and cross-entropy over a whole eval split.

:func:`evaluate_params` runs the compiled eval step over every batch of an ``EvalData`` (padded
batches are masked, so each example counts exactly once) for one or more parameter sets at
once. :func:`evaluate` is the entry point behind ``main.py --mode=evaluate``: it evaluates a
workdir of ours (raw and EMA parameters), a converted Flax checkpoint or an authors' PyTorch
checkpoint on the configured dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dynamixer_jax import trees
from dynamixer_jax.data.build import make_eval_data, open_configured_source
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.model.variants import abstract_variables
from dynamixer_jax.train import memory, parallel
from dynamixer_jax.train.plan import ModelPlan, make_plan
from dynamixer_jax.train.steps import make_eval_step
from dynamixer_jax.train.weights import load_param_sets, resample_to

log = logging.getLogger(__name__)


def evaluate_params(
    eval_step, params_by_name: Mapping[str, Any], eval_data, mesh
) -> dict[str, float]:
    """``{eval_top1, eval_top5, eval_loss}`` for ``"raw"`` params and ``{name}_eval_...`` for
    the others (e.g. ``ema_eval_top1``), over the whole split of ``eval_data``."""
    totals = None
    for batch in eval_data.batches():
        batch = parallel.global_batch(batch, mesh)
        if totals is None:  # the first batch compiles: a step that does not fit is one line
            sums = _first_eval_step(eval_step, dict(params_by_name), batch)
        else:
            sums = eval_step(dict(params_by_name), batch)
        totals = sums if totals is None else jax.tree_util.tree_map(np.add, totals, sums)
    totals = jax.device_get(totals)
    results = {}
    for name, sums in totals.items():
        prefix = "" if name == "raw" else f"{name}_"
        count = max(float(sums["count"]), 1.0)
        results[f"{prefix}eval_top1"] = float(sums["top1"]) / count
        results[f"{prefix}eval_top5"] = float(sums["top5"]) / count
        results[f"{prefix}eval_loss"] = float(sums["loss"]) / count
    results["eval_examples"] = float(next(iter(totals.values()))["count"])
    return results


def _first_eval_step(eval_step: Any, params_by_name: dict, batch: Any) -> Any:
    """The first evaluation step, waited for (OutOfMemory in one line if it does not fit)."""
    args = memory.abstract((params_by_name, batch))
    try:
        return jax.block_until_ready(eval_step(params_by_name, batch))
    except Exception as error:
        if not memory.is_out_of_memory(error):
            raise
        image = batch["image"].shape
        raise memory.eval_out_of_memory(
            eval_step,
            args,
            batch_size=int(image[0]),
            image_size=int(image[1]) if image[1] == image[2] else tuple(image[1:3]),
        ) from None


def _check_fit(params: Any, abstract: Any, source: str, model: ModelPlan, num_classes: int) -> None:
    trees.check(
        abstract,
        params,
        error=ConfigError,
        what=f"weights at {source} do not fit model {model.name} at image_size "
        f"{model.image_size} with {num_classes} classes",
        advice="set --config.model, --config.image_size, --config.model_overrides and "
        "the dataset to the ones they were trained with",
    )


def evaluate(config, source: str) -> dict[str, float]:
    """Evaluate the weights at ``source`` on ``config``'s eval split; returns the metrics.

    ``source``: a workdir (its latest checkpoint, raw and EMA parameters), a checkpoint
    directory, a Flax checkpoint from ``dynamixer_jax.convert``, or an authors' .pth file (its
    ``state_dict_ema`` is evaluated too when present).
    """

    plan = make_plan(config)
    mesh = parallel.make_mesh()
    # The weights first: an unreadable file is one line before TensorFlow is imported.
    params_by_name = load_param_sets(source, mesh)  # raw and EMA, from one restore
    data_source = open_configured_source(plan.data)
    num_classes = plan.model.classes(data_source.num_classes, f"dataset {plan.data.dataset}")
    model = plan.model.build(num_classes, train=False)
    abstract = abstract_variables(model)["params"]
    # Weights trained at another image size: generate layers resampled (model/resolution.py).
    params_by_name = {
        name: resample_to(params, model, source, announce=name == "raw")
        for name, params in params_by_name.items()
    }
    for params in params_by_name.values():
        _check_fit(params, abstract, source, plan.model, num_classes)
    params_by_name = jax.device_put(params_by_name, parallel.replicated(mesh))
    eval_data = make_eval_data(plan.data, data_source)
    log.info(
        "evaluating %s (%s) on %s/%s: %d examples",
        source,
        ", ".join(params_by_name),
        plan.data.dataset,
        plan.data.eval_split,
        eval_data.num_examples,
    )
    eval_step = make_eval_step(model, mesh, mean=plan.data.mean, std=plan.data.std)
    results = evaluate_params(eval_step, params_by_name, eval_data, mesh)
    log.info("%s", "  ".join(f"{key} {value:.4f}" for key, value in results.items()))
    return results
