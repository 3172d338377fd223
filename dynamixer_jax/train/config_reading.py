"""Reading a config: the only code that reads a ``ConfigDict`` field.

:func:`make_plan` turns a config (``configs/default.py`` lists every field) into a frozen
``plan.RunPlan`` and checks everything a user can get wrong before any data is opened or
anything compiled: each problem raises :class:`ConfigError` with one line naming the field and
what to do. Fields are read strictly (:class:`ConfigReader`): a field that is unset is ``None``
(``config_dict.placeholder``), every default is in ``configs/default.py`` and nowhere else, and
a field nothing reads is reported as unknown.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax

from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.data.recipe import TrainAugment
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.loading import saved_run_config
from dynamixer_jax.model.network import DynaMixer, nearest_size, size_multiple
from dynamixer_jax.model.variants import ARCHITECTURE_FIELDS, VARIANTS, list_models
from dynamixer_jax.train.parallel import STATE_SHARDINGS
from dynamixer_jax.train.plan import (
    CadencePlan,
    DataPlan,
    InitPlan,
    ModelPlan,
    OptimPlan,
    RunPlan,
    SchedulePlan,
)

log = logging.getLogger(__name__)

# Counts that are either unset (None, their default) or positive.
_POSITIVE_WHEN_SET = ("num_classes", "eval_batch_size", "num_train_steps", "eval_every_steps")


class ConfigReader:
    """Reads a config strictly (every default is in configs/default.py, none here) and
    remembers which fields it read, so that the rest can be reported as unknown."""

    def __init__(self, config: Any):
        self.config, self.read = config, set()

    def __call__(self, name: str) -> Any:
        node = self.config
        for part in name.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError):
                raise ConfigError(
                    f"the config has no field {name}; start it from "
                    "configs/default.py, which lists every field"
                ) from None
        self.read.add(name)
        if name in _POSITIVE_WHEN_SET and node is not None and node <= 0:
            raise ConfigError(
                f"{name} {node}: must be positive; leave "
                f"--config.{name} out (unset, None, is the default)"
            )
        return tuple(node) if isinstance(node, list) else node

    def unknown(self) -> list[str]:
        """Fields of the config that nothing read (misspelt or from another version)."""
        names = []
        for name, value in self.config.items():
            if name in self.read:
                continue
            if hasattr(value, "items"):
                names += [f"{name}.{key}" for key in value if f"{name}.{key}" not in self.read]
            else:
                names.append(name)
        return sorted(names)


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


def _check_image_size(name: str, image_size: Any, overrides: dict[str, Any]) -> None:
    """ConfigError unless every side of ``image_size`` is a positive multiple of what the model
    needs (``network.size_multiple``), said as the config's fix."""
    patch = overrides.get("patch_size") or DynaMixer.__dataclass_fields__["patch_size"].default
    transitions = overrides.get("transitions") or VARIANTS[name]["transitions"]
    multiple, why = size_multiple(patch, transitions)
    sides = image_size if isinstance(image_size, (tuple, list)) else (image_size,)
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or side <= 0 or side % multiple:
            good = nearest_size(side, multiple) if isinstance(side, int) else multiple
            positive = "a positive" if isinstance(side, int) and side > 0 else "positive: a"
            raise ConfigError(
                f"image_size {image_size} must be {positive} multiple of {multiple} for {name} "
                f"({why}); use e.g. --config.image_size={good}"
            )


def _model(read: ConfigReader) -> ModelPlan:
    name = read("model")
    if name not in list_models():
        raise ConfigError(
            f"unknown model {name!r}: set --config.model to one of {', '.join(list_models())}"
        )
    overrides = _model_overrides(read("model_overrides"))
    _check_image_size(name, read("image_size"), dict(overrides))
    model = ModelPlan(
        name=name,
        overrides=overrides,
        image_size=read("image_size"),
        num_classes=read("num_classes"),
        drop_path_rate=read("drop_path_rate"),
        drop_rate=read("drop_rate"),
        half_precision=bool(read("half_precision")),
        remat=read("remat"),
        scan_layers=bool(read("scan_layers")),
        mixing=read("mixing"),
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


def _check_data(data: DataPlan) -> None:
    if not 0 < data.crop_fraction <= 1:
        raise ConfigError(f"crop_fraction must be in (0, 1], not {data.crop_fraction}")
    for name, value, least in [
        ("shuffle_buffer_size", data.shuffle_buffer_size, 1),
        ("prefetch_batches", data.prefetch_batches, 0),
        ("data_threads", 1 if data.threads is None else data.threads, 1),
    ]:
        if value < least:
            unset = " (None: all cores)" if name == "data_threads" else ""
            raise ConfigError(f"{name} must be >= {least}{unset}, not {value}")


def _check_batches(data: DataPlan, grad_accum_steps: int, devices: int, processes: int) -> None:
    for name in ("batch_size", "eval_batch_size"):
        size = getattr(data, name)
        if size <= 0:
            raise ConfigError(
                f"{name} {size}: must be positive (the global batch, a multiple of the "
                f"{devices} device(s)), e.g. --config.{name}={devices * 8}"
            )
        if size % devices:
            where = f"{devices} devices" + (f" in {processes} processes" if processes > 1 else "")
            multiple = devices * max(1, round(size / devices))
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
    if not 0 < optim.learning_rate < math.inf:
        raise ConfigError(f"learning_rate must be positive and finite, not {optim.learning_rate}")
    if schedule.num_train_steps is None and not schedule.num_epochs > 0:
        raise ConfigError("set num_epochs > 0 or num_train_steps > 0")
    for name, value in [
        ("warmup_epochs", schedule.warmup_epochs),
        ("cooldown_epochs", schedule.cooldown_epochs),
        ("num_epochs", schedule.num_epochs),
        ("weight_decay", optim.weight_decay),
        ("grad_clip_norm", optim.grad_clip_norm),
        ("warmup_learning_rate", optim.warmup_learning_rate),
        ("min_learning_rate", optim.min_learning_rate),
        ("adam_eps", optim.eps),
    ]:
        if not 0 <= value < math.inf:  # NaN too
            raise ConfigError(f"{name} must be a finite number >= 0, not {value}")
    for name, value in [
        ("drop_path_rate", model.drop_path_rate),
        ("drop_rate", model.drop_rate),
        ("adam_b1", optim.b1),
        ("adam_b2", optim.b2),
    ]:
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be in [0, 1), not {value}")
    for name in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if getattr(cadence, name) <= 0:
            raise ConfigError(f"{name} must be a positive number, not {getattr(cadence, name)}")


def _state_sharding(value: Any) -> str:
    if value not in STATE_SHARDINGS:
        raise ConfigError(
            f"state_sharding {value!r}: use one of {', '.join(STATE_SHARDINGS)}, e.g. "
            "--config.state_sharding=fsdp"
        )
    return value


def _init_from(read: ConfigReader) -> InitPlan | None:
    path = read("init_from")
    ema, reset_head = bool(read("init_from_ema")), bool(read("reset_head"))
    required = bool(read("init_from_required"))
    if path is None and required:
        raise ConfigError(
            "this config fine-tunes: give the starting weights with "
            "--config.init_from=PATH (a workdir, checkpoint, .msgpack or .pth file)"
        )
    resample = bool(read("resample_generate"))
    return None if path is None else InitPlan(str(path), ema, reset_head, resample)


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
    asked = dict(_model_overrides(read("model_overrides")))
    differ = {key: value for key, value in asked.items() if trained.get(key) != value}
    if differ:
        raise ConfigError(
            f"init_from {path} was trained as {saved['model']} with model_overrides "
            f"{trained or 'none'}, not {differ}; drop --config.model_overrides (the workdir's "
            "architecture is used)"
        )
    if config.model != saved["model"] or trained != asked:
        log.info(
            "fine-tuning the architecture of %s: %s with model_overrides %s",
            path,
            saved["model"],
            trained or "none",
        )
    config = config.copy_and_resolve_references()
    config.model = saved["model"]
    for key in config.model_overrides:
        config.model_overrides[key] = trained.get(key)
    return config


def make_plan(config: Any, *, devices: int | None = None, processes: int | None = None) -> RunPlan:
    """The checked, typed plan of ``config`` for ``devices`` devices in ``processes`` processes
    (default: JAX's); raises ConfigError with one line. Fine-tuning from one of our workdirs
    takes its architecture (:func:`with_init_from_architecture`)."""
    devices = jax.device_count() if devices is None else devices
    processes = jax.process_count() if processes is None else processes
    config = with_init_from_architecture(config)
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
        state_sharding=_state_sharding(read("state_sharding")),
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
        profile_first_step=read("profile_first_step"),
        profile_num_steps=read("profile_num_steps"),
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
    _check_data(data)
    _check_batches(data, optim.grad_accum_steps, devices, processes)
    return plan
