"""The run plan: what a training run will do, as frozen, typed values, and how a config makes it.

A :class:`RunPlan` of typed parts (model, data, optimisation, schedule, cadence, fine-tuning) is
what the library takes instead of a config. :func:`make_plan` reads a ``ConfigDict``
(``configs/default.py`` lists every field) into one and checks everything a user can get wrong
before any data is opened or anything compiled: each problem raises :class:`ConfigError` with
one line naming the field and what to do. Each part declares, field by field, what the config
must hold (:func:`_checked`); fields are read strictly (:class:`ConfigReader`): a field that is
unset is ``None`` (``config_dict.placeholder``), every default is in ``configs/default.py`` and
nowhere else, and a field nothing reads is reported as unknown.
What only the opened dataset knows (its number of classes, steps per epoch) is combined with
the plan by :meth:`RunPlan.steps` and :meth:`ModelPlan.classes`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp

from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.data.recipe import TrainAugment
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.loading import saved_run_config
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import ARCHITECTURE_FIELDS, create_model, list_models
from dynamixer_jax.train.config_files import check_field, field_names
from dynamixer_jax.train.parallel import STATE_SHARDINGS

log = logging.getLogger(__name__)


def _checked(test: Any, must: str | None, config: str | None = None) -> Any:
    """A plan field read from the config field ``config`` (default: of its own name), which must
    pass ``test`` ("must be ``must``"; None: a count that is unset, None, or positive)."""
    return dataclasses.field(metadata=dict(check=(test, must), config=config))


_FRACTION = (lambda value: 0 <= value < 1, "in [0, 1)")
_FINITE = (lambda value: 0 <= value < math.inf, "a finite number >= 0")  # NaN fails too
_POSITIVE = (lambda value: value > 0, "a positive number")
_UNSET_OR_POSITIVE = (lambda value: value is None or value > 0, None)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Which DynaMixer, at what size and precision."""

    name: str = _checked(None, "", config="model")
    overrides: tuple[tuple[str, Any], ...]  # architecture fields replacing the variant's
    image_size: int
    num_classes: int | None = _checked(*_UNSET_OR_POSITIVE)  # None: the dataset's
    drop_path_rate: float = _checked(*_FRACTION)
    drop_rate: float = _checked(*_FRACTION)
    half_precision: bool
    remat: str
    scan_layers: bool
    mixing: str

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
        """The DynaMixer (no dropout nor stochastic depth unless ``train``); ConfigError if the
        network's own checks reject it (an unknown model, an image size its grid cannot take)."""
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
        except ValueError as error:  # its hint given as the command line's override
            message = str(error).replace(" image_size=", " --config.image_size=")
            raise ConfigError(f"model {self.name}: {message}") from None


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
    crop_fraction: float = _checked(lambda value: 0 < value <= 1, "in (0, 1]")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: TrainAugment  # the per-image training recipe
    shuffle_buffer_size: int = _checked(lambda value: value >= 1, ">= 1")
    threads: int | None = _checked(
        lambda value: value is None or value >= 1, ">= 1 (None: all cores)", "data_threads"
    )
    prefetch_batches: int = _checked(lambda value: value >= 0, ">= 0")


@dataclasses.dataclass(frozen=True)
class OptimPlan:
    """AdamW, its learning rates, clipping, accumulation and the EMA."""

    learning_rate: float = _checked(lambda value: 0 < value < math.inf, "positive and finite")
    warmup_learning_rate: float = _checked(*_FINITE)
    min_learning_rate: float = _checked(*_FINITE)
    weight_decay: float = _checked(*_FINITE)
    b1: float = _checked(*_FRACTION, "adam_b1")
    b2: float = _checked(*_FRACTION, "adam_b2")
    eps: float = _checked(*_FINITE, "adam_eps")
    grad_clip_norm: float = _checked(*_FINITE)
    grad_accum_steps: int
    ema_decay: float = _checked(_FRACTION[0], "in [0, 1) (0 turns the EMA off)")  # 0: no EMA
    state_sharding: str  # parallel.STATE_SHARDINGS: replicated, zero1 or fsdp


@dataclasses.dataclass(frozen=True)
class SchedulePlan:
    """How long the run lasts, in epochs (or steps)."""

    num_epochs: float = _checked(*_FINITE)  # wrong even where num_train_steps sets the length
    warmup_epochs: float = _checked(*_FINITE)
    cooldown_epochs: float = _checked(*_FINITE)
    # None: (num_epochs + cooldown_epochs) epochs
    num_train_steps: int | None = _checked(*_UNSET_OR_POSITIVE)


@dataclasses.dataclass(frozen=True)
class CadencePlan:
    """When to log, evaluate and checkpoint, and which checkpoints to keep."""

    log_every_steps: int = _checked(*_POSITIVE)
    eval_every_steps: int | None = _checked(*_UNSET_OR_POSITIVE)  # None: once per epoch
    checkpoint_every_steps: int = _checked(*_POSITIVE)
    keep_checkpoints: int = _checked(*_POSITIVE)
    async_checkpointing: bool
    profile_first_step: int | None  # None: no profiler trace
    profile_num_steps: int


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """Starting weights for fine-tuning."""

    path: str = _checked(None, "", config="init_from")
    ema: bool = _checked(None, "", config="init_from_ema")
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


class ConfigReader:
    """Reads a config strictly (every default is in configs/default.py, none here), checks each
    value as it is read and remembers which fields it read, so that the rest can be reported
    as unknown."""

    def __init__(self, config: Any):
        self.config, self.read = config, set()

    def __call__(self, name: str, check: tuple[Any, str | None] = (None, "")) -> Any:
        """Field ``name`` (dotted), which must pass ``check`` (as :func:`_checked` says)."""
        check_field(self.config, name, "make_plan")  # a config not from default.py
        node = functools.reduce(lambda holder, part: holder[part], name.split("."), self.config)
        self.read.add(name)
        test, must = check
        if test is not None and not test(node):
            raise ConfigError(
                f"{name} must be {must}, not {node}"
                if must is not None
                else f"{name} {node}: must be positive; leave "
                f"--config.{name} out (unset, None, is the default)"
            )
        return tuple(node) if isinstance(node, list) else node

    def plan(self, cls: type, **given: Any) -> Any:
        """A ``cls`` (one of the plan's parts) of the config's fields, but for those ``given``."""
        values = dict(given)
        for field in dataclasses.fields(cls):
            if field.name not in given:
                name, check = field.metadata.get("config"), field.metadata.get("check")
                values[field.name] = self(name or field.name, check or (None, ""))
        return cls(**values)

    def overrides(self) -> tuple[tuple[str, Any], ...]:
        """``model_overrides`` as (field, value) pairs, the unset (None) left out."""
        values = {name: self(f"model_overrides.{name}") for name in ARCHITECTURE_FIELDS}
        return tuple((name, value) for name, value in values.items() if value is not None)

    def unknown(self) -> list[str]:
        """Fields of the config that nothing read (misspelt or from another version)."""
        read = {f"{name}." for name in self.read}  # a field read whole, or one of its parts
        return sorted(
            name
            for name in field_names(self.config)
            if not any(f"{name}.".startswith(done) or done.startswith(f"{name}.") for done in read)
        )


def _check_batches(data: DataPlan, grad_accum_steps: int, devices: int, processes: int) -> None:
    """ConfigError unless both batches split evenly over the devices and the training one over
    ``grad_accum_steps`` micro-batches."""
    if data.batch_size <= 0:  # eval_batch_size: checked as it is read
        raise ConfigError(
            f"batch_size {data.batch_size}: must be positive (the global batch, a multiple of "
            f"the {devices} device(s)), e.g. --config.batch_size={devices * 8}"
        )
    for name in ("batch_size", "eval_batch_size"):
        size = getattr(data, name)
        if size % devices:
            where = f"{devices} devices" + (f" in {processes} processes" if processes > 1 else "")
            raise ConfigError(
                f"{name} {size} is not divisible by the {where}; use a multiple of {devices}, "
                f"e.g. --config.{name}={devices * max(1, round(size / devices))}"
            )
    per_device = data.batch_size // devices
    if grad_accum_steps < 1 or per_device % grad_accum_steps:
        raise ConfigError(
            f"grad_accum_steps {grad_accum_steps} must divide the per-device batch "
            f"({data.batch_size} / {devices} devices = {per_device})"
        )


def with_init_from_architecture(config: Any) -> Any:
    """``config`` with ``model`` and ``model_overrides`` taken from the ``config.json`` of the
    training workdir ``init_from`` names, if it is one of ours (weights of another architecture
    could not be loaded anyway); else ``config`` itself. ConfigError if the config asks for
    other overrides than the workdir was trained with."""
    read = ConfigReader(config)
    path = read("init_from")
    saved = saved_run_config(str(path)) if path is not None else {}
    if saved.get("model") not in list_models():
        return config
    trained = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in (saved.get("model_overrides") or {}).items()
        if value is not None
    }
    asked = dict(read.overrides())
    differ = {key: value for key, value in asked.items() if trained.get(key) != value}
    if differ:
        raise ConfigError(
            f"init_from {path} was trained as {saved['model']} with model_overrides "
            f"{trained or 'none'}, not {differ}; drop --config.model_overrides (the workdir's "
            "architecture is used)"
        )
    if config.model != saved["model"] or trained != asked:
        log.info("fine-tuning the architecture of %s: %s %s", path, saved["model"], trained)
    config = config.copy_and_resolve_references()
    config.model = saved["model"]
    config.model_overrides.update({key: trained.get(key) for key in config.model_overrides})
    return config


def make_plan(config: Any, *, devices: int | None = None, processes: int | None = None) -> RunPlan:
    """The checked, typed plan of ``config`` for ``devices`` devices in ``processes`` processes
    (default: JAX's); raises ConfigError with one line. Fine-tuning from one of our workdirs
    takes its architecture (:func:`with_init_from_architecture`)."""
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    config = with_init_from_architecture(config)
    read = ConfigReader(config)
    model = read.plan(ModelPlan, overrides=read.overrides())
    model.build(model.num_classes or 1)  # the network's checks: model name, image size, ...
    read.read.add("augment")  # TrainAugment checks its fields
    augment = TrainAugment.from_fields(config.augment, mean=config.mean, std=config.std)
    eval_batch_size = read("eval_batch_size", _UNSET_OR_POSITIVE)
    data = read.plan(
        DataPlan,
        eval_batch_size=read("batch_size") if eval_batch_size is None else eval_batch_size,
        image_size=model.image_size,
        augment=augment,
    )
    optim = read.plan(OptimPlan)
    if optim.state_sharding not in STATE_SHARDINGS:
        raise ConfigError(
            f"state_sharding {optim.state_sharding!r}: use one of {', '.join(STATE_SHARDINGS)}, "
            "e.g. --config.state_sharding=fsdp"
        )
    schedule = read.plan(SchedulePlan)
    if schedule.num_train_steps is None and not schedule.num_epochs > 0:
        raise ConfigError("set num_epochs > 0 or num_train_steps > 0")
    mixup = {name: read(f"mixup.{name}") for name in ("mixup_alpha", "cutmix_alpha")}
    mixup.update({name: read(f"mixup.{name}") for name in ("switch_prob", "prob")})
    try:
        mixup = MixupConfig(**mixup, label_smoothing=read("label_smoothing"))
    except ValueError as error:
        raise ConfigError(f"mixup: {error}") from None
    init_from = read.plan(InitPlan)
    if read("init_from_required") and init_from.path is None:
        raise ConfigError(
            "this config fine-tunes: give the starting weights with "
            "--config.init_from=PATH (a workdir, checkpoint, .msgpack or .pth file)"
        )
    plan = RunPlan(
        model=model,
        data=data,
        optim=optim,
        mixup=mixup,
        schedule=schedule,
        cadence=read.plan(CadencePlan),
        init_from=None if init_from.path is None else init_from,
        seed=read("seed"),
        config_json=config.to_json_best_effort(indent=2),
    )
    if read.unknown():
        raise ConfigError(
            f"unknown config field(s) {', '.join(read.unknown())}; "
            "configs/default.py lists every field"
        )
    _check_batches(data, optim.grad_accum_steps, devices, processes)
    return plan
