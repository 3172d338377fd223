"""From a config (``configs/default.py`` lists every field) to the library's objects, checking
everything a user can get wrong before anything is compiled.

Each problem raises :class:`ConfigError` with one line that says what is wrong and what to do;
``main.py`` prints it without a traceback.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from dynamixer_jax.errors import ConfigError
from dynamixer_jax.train.mixup import MixupConfig
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import create_model, list_models

ARCHITECTURE_FIELDS = ("layers", "embed_dims", "transitions", "num_segments", "reduced_dims",
                       "mlp_ratios", "patch_size")


def _get(config, name: str, default: Any = None) -> Any:
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def model_overrides(config) -> dict[str, Any]:
    """The architecture fields the config sets (``model_overrides``; None means the variant's)."""
    overrides = _get(config, "model_overrides") or {}
    overrides = dict(overrides.items()) if hasattr(overrides, "items") else dict(overrides)
    unknown = set(overrides) - set(ARCHITECTURE_FIELDS)
    if unknown:
        raise ConfigError(f"model_overrides has unknown field(s) {sorted(unknown)}; "
                          f"known: {', '.join(ARCHITECTURE_FIELDS)}")
    return {key: (tuple(value) if isinstance(value, (list, tuple)) else value)
            for key, value in overrides.items() if value is not None}


def build_model(config, num_classes: int, *, train: bool = True) -> DynaMixer:
    """The configured DynaMixer for ``num_classes`` classes (ConfigError if it cannot be built)."""
    if config.model not in list_models():
        raise ConfigError(f"unknown model {config.model!r}: set --config.model to one of "
                          f"{', '.join(list_models())}")
    try:
        return create_model(
            config.model, num_classes=num_classes, image_size=config.image_size,
            drop_path_rate=config.drop_path_rate if train else 0.0,
            drop_rate=config.drop_rate if train else 0.0,
            remat=_get(config, "remat", "minimal"),
            scan_layers=bool(_get(config, "scan_layers", False)),
            dtype=jnp.bfloat16 if config.half_precision else None, **model_overrides(config))
    except ValueError as error:
        raise ConfigError(f"model {config.model} at image_size {config.image_size}: "
                          f"{error}") from None


def build_mixup(config) -> MixupConfig:
    """Mixup/CutMix and label smoothing settings of the train step."""
    try:
        return MixupConfig(mixup_alpha=config.mixup.mixup_alpha,
                           cutmix_alpha=config.mixup.cutmix_alpha,
                           switch_prob=config.mixup.switch_prob, prob=config.mixup.prob,
                           label_smoothing=config.label_smoothing)
    except ValueError as error:
        raise ConfigError(f"mixup: {error}") from None


def build_augment(config):
    """Per-image training augmentation (a ``TrainAugment``, checked; no TensorFlow)."""
    from dynamixer_jax.data.recipe import TrainAugment  # noqa: PLC0415 (no TF now: can go on top)
    return TrainAugment.from_fields(config.augment, mean=tuple(config.mean), std=tuple(config.std))


def check_devices(config) -> None:
    """Batch sizes and accumulation that fit the devices and processes, checked up front."""
    devices, processes = jax.device_count(), jax.process_count()
    for name in ("batch_size", "eval_batch_size"):
        size = eval_batch_size(config) if name == "eval_batch_size" else config.batch_size
        if size <= 0 or size % devices:
            where = f"{devices} devices" + (f" in {processes} processes" if processes > 1 else "")
            multiple = devices * max(1, round(size / devices)) if size > 0 else devices
            raise ConfigError(f"{name} {size} is not divisible by the {where}; use a multiple "
                              f"of {devices}, e.g. --config.{name}={multiple}")
    accum = config.grad_accum_steps
    per_device = config.batch_size // devices
    if accum < 1 or per_device % accum:
        raise ConfigError(f"grad_accum_steps {accum} must divide the per-device batch "
                          f"({config.batch_size} / {devices} devices = {per_device})")


def check_numbers(config) -> None:
    """Ranges of the optimisation fields."""
    if not 0.0 <= config.ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in [0, 1) (0 turns the EMA off), not {config.ema_decay}")
    if not config.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive, not {config.learning_rate}")
    if config.num_train_steps <= 0 and not config.num_epochs > 0:
        raise ConfigError("set num_epochs > 0 or num_train_steps > 0")
    for name in ("warmup_epochs", "cooldown_epochs", "weight_decay", "grad_clip_norm",
                 "drop_path_rate"):
        if _get(config, name, 0) < 0:
            raise ConfigError(f"{name} must be >= 0, not {_get(config, name)}")
    if _get(config, "init_from") == "":
        raise ConfigError("this config fine-tunes: give the starting weights with "
                          "--config.init_from=PATH (a workdir, checkpoint, .msgpack or .pth file)")
    for name in ("log_every_steps", "checkpoint_every_steps"):
        if _get(config, name) <= 0:
            raise ConfigError(f"{name} must be a positive number of steps, not {_get(config, name)}")


def eval_batch_size(config) -> int:
    """The global eval batch size (``eval_batch_size``, or ``batch_size`` when it is -1)."""
    size = _get(config, "eval_batch_size", -1)
    return config.batch_size if size is None or size <= 0 else size


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How long the run is, in steps."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    cosine_steps: int
    eval_every_steps: int


def plan_steps(config, steps_per_epoch: int) -> StepPlan:
    """Steps of the run from epochs (or ``num_train_steps``), warmup, cooldown and eval period.

    With ``num_train_steps`` > 0 the run has that many steps and the cosine ends
    ``cooldown_epochs`` before the end; otherwise it lasts ``num_epochs + cooldown_epochs`` epochs.
    """
    cooldown = round(config.cooldown_epochs * steps_per_epoch)
    if config.num_train_steps > 0:
        total = int(config.num_train_steps)
    else:
        total = math.ceil((config.num_epochs + config.cooldown_epochs) * steps_per_epoch)
    cosine = max(total - cooldown, 1)
    warmup = min(round(config.warmup_epochs * steps_per_epoch), cosine)
    every = _get(config, "eval_every_steps", -1)
    every = steps_per_epoch if every is None or every <= 0 else int(every)
    return StepPlan(steps_per_epoch, total, warmup, cosine, every)
