"""The run plan: what a training run will do, as frozen, typed values.

A :class:`RunPlan` of typed parts (model, data, optimisation, schedule, cadence, fine-tuning) is
what the library takes instead of a config; ``config_reading.make_plan`` builds it from a
``ConfigDict`` and checks it. What only the opened dataset knows (its number of classes, steps
per epoch) is combined with the plan by :meth:`RunPlan.steps` and :meth:`ModelPlan.classes`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.data.recipe import TrainAugment
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import create_model


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
    mixing: str = "auto"

    def classes(self, dataset_classes: int | None, dataset: str = "the dataset") -> int:
        """The number of classes of the head, given the dataset's (None: it does not say).

        ConfigError if the head would be too small for the dataset's labels (they would train
        with no output of their own and evaluate to a NaN loss), or if neither says."""
        if self.num_classes is None:
            if dataset_classes is None:
                raise ConfigError(
                    f"{dataset} does not say how many classes its labels have; set "
                    "--config.num_classes"
                )
            return dataset_classes
        if dataset_classes is not None and self.num_classes < dataset_classes:
            raise ConfigError(
                f"num_classes {self.num_classes} is smaller than the {dataset_classes} classes "
                f"of {dataset} (labels {self.num_classes} to {dataset_classes - 1} would have "
                f"no output); set --config.num_classes={dataset_classes} or leave it out "
                "(the dataset's)"
            )
        return self.num_classes

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
                mixing=self.mixing,
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
    state_sharding: str  # parallel.STATE_SHARDINGS: replicated, zero1 or fsdp


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
    profile_first_step: int | None  # None: no profiler trace
    profile_num_steps: int


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """Starting weights for fine-tuning."""

    path: str
    ema: bool
    reset_head: bool
    resample_generate: bool  # at a new image size (else re-initialised)


@dataclasses.dataclass(frozen=True)
class StepCounts:
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

    def steps(self, steps_per_epoch: int) -> StepCounts:
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
        return StepCounts(steps_per_epoch, total, warmup, cosine, every)
