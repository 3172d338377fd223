"""The run plan: a config (``configs/default.py`` lists every field) read and checked once.

:func:`make_plan` is the only code that reads a ``ConfigDict``. It turns one into a frozen
:class:`RunPlan` of typed parts (model, data, optimisation, schedule, cadence, fine-tuning) and
checks everything a user can get wrong before any data is opened or anything compiled: each
problem raises :class:`ConfigError` with one line naming the field and what to do. The rest of
the library takes these typed values. What only the opened dataset knows (its number of
classes, steps per epoch) is combined with the plan by :meth:`RunPlan.steps` and
:meth:`ModelPlan.classes`.

A field that is unset is ``None`` (``config_dict.placeholder``); every default is in
``configs/default.py`` and nowhere else (``config_files.ConfigReader`` reads fields strictly).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from dynamixer_jax.data.recipe import TrainAugment
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import create_model, list_models
from dynamixer_jax.train.config_files import ConfigReader
from dynamixer_jax.train.mixup import MixupConfig

ARCHITECTURE_FIELDS = (
    "layers",
    "embed_dims",
    "transitions",
    "num_segments",
    "reduced_dims",
    "mlp_ratios",
    "patch_size",
)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Which DynaMixer, at what size and precision."""

    name: str
    overrides: tuple[tuple[str, Any], ...]  # architecture fields replacing the variant's
    image_size: int
    num_classes: int | None  # None: the dataset's
    drop_path_rate: float
    drop_rate: float
    half_precision: bool
    remat: str
    scan_layers: bool

    def classes(self, dataset_classes: int) -> int:
        """The number of classes of the head, given the dataset's."""
        return self.num_classes if self.num_classes is not None else dataset_classes

    def build(self, num_classes: int, *, train: bool = True) -> DynaMixer:
        """The DynaMixer (no dropout nor stochastic depth unless ``train``)."""
        try:
            return create_model(
                self.name,
                num_classes=num_classes,
                image_size=self.image_size,
                drop_path_rate=self.drop_path_rate if train else 0.0,
                drop_rate=self.drop_rate if train else 0.0,
                remat=self.remat,
                scan_layers=self.scan_layers,
                dtype=jnp.bfloat16 if self.half_precision else None,
                **dict(self.overrides),
            )
        except ValueError as error:
            raise ConfigError(
                f"model {self.name} at image_size {self.image_size}: {error}"
            ) from None


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """Where the images come from and how they are batched and prepared."""

    dataset: str
    data_dir: str | None
    train_split: str
    eval_split: str
    image_key: str
    label_key: str
    batch_size: int  # global
    eval_batch_size: int  # global
    image_size: int
    crop_fraction: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: TrainAugment  # the per-image training recipe
    shuffle_buffer_size: int
    threads: int | None
    prefetch_batches: int


@dataclasses.dataclass(frozen=True)
class OptimPlan:
    """AdamW, its learning rates, clipping, accumulation and the EMA."""

    learning_rate: float
    warmup_learning_rate: float
    min_learning_rate: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    grad_clip_norm: float
    grad_accum_steps: int
    ema_decay: float  # 0: no EMA


@dataclasses.dataclass(frozen=True)
class SchedulePlan:
    """How long the run lasts, in epochs (or steps)."""

    num_epochs: float
    warmup_epochs: float
    cooldown_epochs: float
    num_train_steps: int | None  # None: (num_epochs + cooldown_epochs) epochs


@dataclasses.dataclass(frozen=True)
class CadencePlan:
    """When to log, evaluate and checkpoint, and which checkpoints to keep."""

    log_every_steps: int
    eval_every_steps: int | None  # None: once per epoch
    checkpoint_every_steps: int
    keep_checkpoints: int
    async_checkpointing: bool


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """Starting weights for fine-tuning."""

    path: str
    ema: bool
    reset_head: bool


@dataclasses.dataclass(frozen=True)
class Steps:
    """The schedule and cadence in steps, once the steps per epoch are known."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    cosine_steps: int
    eval_every_steps: int


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything a run does, as the config says it."""

    model: ModelPlan
    data: DataPlan
    optim: OptimPlan
    mixup: MixupConfig
    schedule: SchedulePlan
    cadence: CadencePlan
    init_from: InitPlan | None
    seed: int
    config_json: str = dataclasses.field(repr=False, default="{}")  # written to WORKDIR

    def steps(self, steps_per_epoch: int) -> Steps:
        """Steps of the run from epochs (or ``num_train_steps``), warmup, cooldown and eval period.

        With ``num_train_steps`` the run has that many steps and the cosine ends
        ``cooldown_epochs`` before the end; otherwise it lasts ``num_epochs + cooldown_epochs``
        epochs.
        """
        schedule = self.schedule
        cooldown = round(schedule.cooldown_epochs * steps_per_epoch)
        if schedule.num_train_steps is not None:
            total = schedule.num_train_steps
        else:
            total = math.ceil((schedule.num_epochs + schedule.cooldown_epochs) * steps_per_epoch)
        cosine = max(total - cooldown, 1)
        warmup = min(round(schedule.warmup_epochs * steps_per_epoch), cosine)
        every = self.cadence.eval_every_steps or steps_per_epoch
        return Steps(steps_per_epoch, total, warmup, cosine, every)


def augment_recipe(config: Any) -> TrainAugment:
    """Per-image training augmentation from ``config.augment``, ``mean`` and ``std``."""
    return TrainAugment.from_fields(config.augment, mean=tuple(config.mean), std=tuple(config.std))


def _model_overrides(value: Any) -> tuple[tuple[str, Any], ...]:
    overrides = dict(value.items()) if value is not None else {}
    unknown = set(overrides) - set(ARCHITECTURE_FIELDS)
    if unknown:
        raise ConfigError(
            f"model_overrides has unknown field(s) {sorted(unknown)}; "
            f"known: {', '.join(ARCHITECTURE_FIELDS)}"
        )
    return tuple(
        (key, tuple(item) if isinstance(item, (list, tuple)) else item)
        for key, item in overrides.items()
        if item is not None
    )


def _model(read: ConfigReader) -> ModelPlan:
    name = read("model")
    if name not in list_models():
        raise ConfigError(
            f"unknown model {name!r}: set --config.model to one of {', '.join(list_models())}"
        )
    model = ModelPlan(
        name=name,
        overrides=_model_overrides(read("model_overrides")),
        image_size=read("image_size"),
        num_classes=read("num_classes"),
        drop_path_rate=read("drop_path_rate"),
        drop_rate=read("drop_rate"),
        half_precision=bool(read("half_precision")),
        remat=read("remat"),
        scan_layers=bool(read("scan_layers")),
    )
    model.build(model.num_classes or 1)  # a model that cannot be built fails here
    return model


def _mixup(read: ConfigReader) -> MixupConfig:
    try:
        return MixupConfig(
            mixup_alpha=read("mixup.mixup_alpha"),
            cutmix_alpha=read("mixup.cutmix_alpha"),
            switch_prob=read("mixup.switch_prob"),
            prob=read("mixup.prob"),
            label_smoothing=read("label_smoothing"),
        )
    except ValueError as error:
        raise ConfigError(f"mixup: {error}") from None


def _check_batches(data: DataPlan, grad_accum_steps: int, devices: int, processes: int) -> None:
    for name in ("batch_size", "eval_batch_size"):
        size = getattr(data, name)
        if size <= 0 or size % devices:
            where = f"{devices} devices" + (f" in {processes} processes" if processes > 1 else "")
            multiple = devices * max(1, round(size / devices)) if size > 0 else devices
            raise ConfigError(
                f"{name} {size} is not divisible by the {where}; use a multiple "
                f"of {devices}, e.g. --config.{name}={multiple}"
            )
    per_device = data.batch_size // devices
    if grad_accum_steps < 1 or per_device % grad_accum_steps:
        raise ConfigError(
            f"grad_accum_steps {grad_accum_steps} must divide the per-device batch "
            f"({data.batch_size} / {devices} devices = {per_device})"
        )


def _check_numbers(
    optim: OptimPlan, schedule: SchedulePlan, cadence: CadencePlan, model: ModelPlan
) -> None:
    if not 0.0 <= optim.ema_decay < 1.0:
        raise ConfigError(
            f"ema_decay must be in [0, 1) (0 turns the EMA off), not {optim.ema_decay}"
        )
    if not optim.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive, not {optim.learning_rate}")
    if schedule.num_train_steps is None and not schedule.num_epochs > 0:
        raise ConfigError("set num_epochs > 0 or num_train_steps > 0")
    for name, value in [
        ("warmup_epochs", schedule.warmup_epochs),
        ("cooldown_epochs", schedule.cooldown_epochs),
        ("weight_decay", optim.weight_decay),
        ("grad_clip_norm", optim.grad_clip_norm),
        ("drop_path_rate", model.drop_path_rate),
    ]:
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, not {value}")
    for name in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if getattr(cadence, name) <= 0:
            raise ConfigError(f"{name} must be a positive number, not {getattr(cadence, name)}")


def _init_from(read: ConfigReader) -> InitPlan | None:
    path = read("init_from")
    ema, reset_head = bool(read("init_from_ema")), bool(read("reset_head"))
    required = bool(read("init_from_required"))
    if path is None and required:
        raise ConfigError(
            "this config fine-tunes: give the starting weights with "
            "--config.init_from=PATH (a workdir, checkpoint, .msgpack or .pth file)"
        )
    return None if path is None else InitPlan(str(path), ema, reset_head)


def make_plan(config: Any, *, devices: int | None = None, processes: int | None = None) -> RunPlan:
    """The checked, typed plan of ``config`` for ``devices`` devices in ``processes`` processes
    (default: JAX's); raises ConfigError with one line."""
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    read = ConfigReader(config)
    model = _model(read)
    batch_size = read("batch_size")
    eval_batch_size = read("eval_batch_size")
    read.read.add("augment")  # augment_recipe checks its fields
    data = DataPlan(
        dataset=str(read("dataset")),
        data_dir=read("data_dir"),
        train_split=read("train_split"),
        eval_split=read("eval_split"),
        image_key=read("image_key"),
        label_key=read("label_key"),
        batch_size=batch_size,
        eval_batch_size=batch_size if eval_batch_size is None else eval_batch_size,
        image_size=model.image_size,
        crop_fraction=read("crop_fraction"),
        mean=tuple(read("mean")),
        std=tuple(read("std")),
        augment=augment_recipe(config),
        shuffle_buffer_size=read("shuffle_buffer_size"),
        threads=read("data_threads"),
        prefetch_batches=read("prefetch_batches"),
    )
    optim = OptimPlan(
        learning_rate=read("learning_rate"),
        warmup_learning_rate=read("warmup_learning_rate"),
        min_learning_rate=read("min_learning_rate"),
        weight_decay=read("weight_decay"),
        b1=read("adam_b1"),
        b2=read("adam_b2"),
        eps=read("adam_eps"),
        grad_clip_norm=read("grad_clip_norm"),
        grad_accum_steps=read("grad_accum_steps"),
        ema_decay=read("ema_decay"),
    )
    schedule = SchedulePlan(
        num_epochs=read("num_epochs"),
        warmup_epochs=read("warmup_epochs"),
        cooldown_epochs=read("cooldown_epochs"),
        num_train_steps=read("num_train_steps"),
    )
    cadence = CadencePlan(
        log_every_steps=read("log_every_steps"),
        eval_every_steps=read("eval_every_steps"),
        checkpoint_every_steps=read("checkpoint_every_steps"),
        keep_checkpoints=read("keep_checkpoints"),
        async_checkpointing=bool(read("async_checkpointing")),
    )
    plan = RunPlan(
        model=model,
        data=data,
        optim=optim,
        mixup=_mixup(read),
        schedule=schedule,
        cadence=cadence,
        init_from=_init_from(read),
        seed=read("seed"),
        config_json=config.to_json_best_effort(indent=2),
    )
    if read.unknown():
        raise ConfigError(
            f"unknown config field(s) {', '.join(read.unknown())}; "
            "configs/default.py lists every field"
        )
    _check_numbers(optim, schedule, cadence, model)
    _check_batches(data, optim.grad_accum_steps, devices, processes)
    return plan
