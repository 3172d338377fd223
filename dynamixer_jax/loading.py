"""A trained DynaMixer for inference, from wherever its weights are: ``dynamixer_jax.load``.

    model, variables = dynamixer_jax.load("/tmp/quickstart")      # a training workdir of ours
    logits = model.apply(variables, images, train=False)          # images normalised, NHWC

Accepted: a workdir of ours (its latest checkpoint), its ``checkpoints/`` directory or one step
in it; a ``.msgpack`` file or Orbax directory written by ``python -m dynamixer_jax.convert``; an
authors' PyTorch checkpoint (``.pth``, ``.pth.tar``...; converted on the fly, needs torch) or the
same state_dict as a ``.safetensors`` file (needs the safetensors package, not torch). The
architecture comes from the workdir's ``config.json`` where there is one, else from the
parameter shapes. Needs no device mesh, no TensorFlow and no ml_collections.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynamixer_jax import trees
from dynamixer_jax.convert import architecture_from_params, model_from_state_dict, torch_to_flax
from dynamixer_jax.convert.flax_io import load_flax
from dynamixer_jax.convert.safetensors_io import is_safetensors_file, load_safetensors
from dynamixer_jax.convert.torch_io import is_torch_file, unwrap_state_dict
from dynamixer_jax.errors import CheckpointError, ConversionError
from dynamixer_jax.model.initializers import timm_trunc_normal
from dynamixer_jax.model.network import DynaMixer, as_hw
from dynamixer_jax.model.resolution import resample_params
from dynamixer_jax.model.variants import abstract_variables, create_model, list_models

WHERE = (
    "give a training workdir, its checkpoints/ directory or one step in it, a .msgpack "
    "file or Orbax directory from python -m dynamixer_jax.convert, or an authors' .pth file "
    "(or its .safetensors)"
)


def is_our_checkpoint(path: str) -> bool:
    """Whether ``path`` is a workdir of ours, its ``checkpoints/`` directory or a step in it."""
    for candidate in (os.path.join(path, "checkpoints"), path, os.path.dirname(path.rstrip("/"))):
        if os.path.isdir(candidate) and any(name.isdigit() for name in os.listdir(candidate)):
            return True
    return False


def _checked_path(path: str | os.PathLike) -> str:
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.exists(path):
        raise CheckpointError(f"no weights at {path}: {WHERE}")
    return path


def read_params(path: str | os.PathLike, *, ema: bool = False, sharding: Any = None) -> Any:
    """The parameters (numpy leaves) stored at ``path`` (any form the module docstring lists);
    ``ema`` takes the EMA copy where there is one. ``sharding`` places a workdir checkpoint's
    arrays while it is restored (default: the first device)."""
    path = _checked_path(path)
    if is_torch_file(path):
        return torch_to_flax(path, ema=ema)["params"]
    if is_safetensors_file(path):
        return torch_to_flax(_safetensors_state_dict(path, ema))["params"]
    if os.path.isdir(path) and is_our_checkpoint(path):
        name = "ema" if ema else "raw"
        return _params_from_workdir(path, (name,), sharding=sharding)[name]
    if ema:
        raise CheckpointError(f"{path} holds one set of weights, no EMA copy; drop the EMA option")
    return load_flax(path)["params"]


def _safetensors_state_dict(path: str, ema: bool) -> dict[str, np.ndarray]:
    """The authors' state_dict in a .safetensors file (one set of weights: no EMA copy)."""
    if ema:
        raise CheckpointError(f"{path} holds one set of weights, no EMA copy; drop the EMA option")
    return load_safetensors(path)


def read_param_sets(path: str | os.PathLike, *, sharding: Any = None) -> dict[str, Any]:
    """``{"raw": params, "ema": EMA params}`` stored at ``path`` ("ema" only where there is an
    EMA copy); a workdir's checkpoint is read once, its optimizer state not at all."""
    path = _checked_path(path)
    if not is_torch_file(path) and os.path.isdir(path) and is_our_checkpoint(path):
        return _params_from_workdir(path, ("raw", "ema"), sharding=sharding, need_all=False)
    sets = {"raw": read_params(path, sharding=sharding)}
    try:
        sets["ema"] = read_params(path, ema=True, sharding=sharding)
    except (CheckpointError, ValueError):
        pass  # no EMA copy at this source
    return sets


# Which part of a checkpoint's TrainState each parameter set is.
_STATE_PARTS = {"raw": "params", "ema": "ema_params"}


def _params_from_workdir(
    path: str, names: tuple[str, ...], *, sharding: Any, need_all: bool = True
) -> dict[str, Any]:
    """The parameter sets ``names`` of the checkpoint at ``path``: a step's, or a workdir's
    newest readable one (each unreadable one skipped with a warning)."""
    from dynamixer_jax.checkpoint_reading import find_checkpoint  # noqa: PLC0415 (Orbax: slow, workdirs only)

    checkpoints, step = find_checkpoint(path)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    parts = tuple(_STATE_PARTS[name] for name in names)
    try:
        if step is None:
            found = checkpoints.restore_newest(
                lambda at: checkpoints.restore_parts(at, parts, sharding)
            )
            if found is None:
                damaged = ", ".join(str(at) for at in sorted(checkpoints.skipped))
                raise CheckpointError(
                    f"no checkpoint in {checkpoints.directory} can be read (steps {damaged} "
                    "are damaged); train again or give other weights"
                )
            step, state = found
        else:
            state = checkpoints.restore_parts(step, parts, sharding)
    finally:
        checkpoints.close()
    sets = {}
    for name in names:
        params = state.get(_STATE_PARTS[name])
        if not jax.tree_util.tree_leaves(params):
            if need_all:
                raise CheckpointError(
                    f"checkpoint {checkpoints.directory}/{step} was trained without "
                    "EMA; use its raw parameters"
                )
            continue
        sets[name] = jax.device_get(params)
    return sets


_CONFIG_ADVICE = (
    "restore it (the workdir's config_history/ keeps every start's config) or remove it "
    "to read the architecture from the parameter shapes"
)


def _saved_config(path: str) -> dict[str, Any]:
    """The ``config.json`` a training run wrote beside its checkpoints, or {} if there is none
    (CheckpointError if it is there but is no JSON object)."""
    for directory in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        candidate = os.path.join(directory, "config.json")
        if os.path.isdir(os.path.join(directory, "checkpoints")) and os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as file:
                    saved = json.load(file)
            except (OSError, ValueError) as error:
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise CheckpointError(
                    f"{candidate} cannot be read ({reason}); {_CONFIG_ADVICE}"
                ) from None
            if not isinstance(saved, dict):
                raise CheckpointError(
                    f"{candidate} is not a run's config (a JSON object, not "
                    f"{type(saved).__name__}); {_CONFIG_ADVICE}"
                )
            return {"_path": candidate, **saved}
    return {}


def _architecture_fields(saved: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The image size and architecture overrides of a run's config (ConversionError if they
    are missing or not what a run writes)."""
    missing = [name for name in ("image_size", "model_overrides") if name not in saved]
    if missing:
        raise CheckpointError(
            f"{saved['_path']} lacks the field(s) {', '.join(missing)} of a run's config; "
            f"{_CONFIG_ADVICE}"
        )
    overrides = saved["model_overrides"] or {}
    if not isinstance(overrides, dict):
        raise CheckpointError(
            f"{saved['_path']}: model_overrides is not a JSON object; {_CONFIG_ADVICE}"
        )
    return _tuples(saved["image_size"]), {
        key: _tuples(value) for key, value in overrides.items() if value is not None
    }


def saved_run_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config a training run of ours recorded (``config.json`` beside the ``checkpoints/``
    of the workdir ``path`` is, or is in), or {} for anything else."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    return _saved_config(path) if os.path.isdir(path) else {}


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _model_for(path: str, params: Any, model_kwargs: dict[str, Any]) -> DynaMixer:
    """The model the run at ``path`` configured, else the one the parameter shapes describe."""
    saved = _saved_config(path) if os.path.isdir(path) else {}
    head = params.get("head", {}).get("kernel") if hasattr(params, "get") else None
    try:
        if saved and "model" not in saved:
            raise CheckpointError(
                f"{saved['_path']} lacks the field model of a run's config; {_CONFIG_ADVICE}"
            )
        if saved.get("model") in list_models():  # a run's config.json holds every field
            image_size, overrides = _architecture_fields(saved)
            settings = {
                "num_classes": int(np.shape(head)[-1]) if head is not None else 0,
                "image_size": image_size,
                **overrides,
            }
            return create_model(saved["model"], **{**settings, **model_kwargs})
        return DynaMixer(**{**architecture_from_params(params), **model_kwargs})
    except (TypeError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConversionError(
            f"cannot build the model of the weights at {path}: {reason}"
        ) from None


def load(
    path: str | os.PathLike,
    *,
    ema: bool = False,
    dtype: Any = None,
    image_size: int | tuple[int, int] | None = None,
    patch_size: int | None = None,
    num_classes: int | None = None,
    head_rng: Any = 0,
    **model_kwargs: Any,
) -> tuple[DynaMixer, dict[str, Any]]:
    """``(model, variables)`` for the trained weights at ``path``, ready for
    ``model.apply(variables, images, train=False)``.

    ``ema=True`` takes the EMA copy (a workdir trained with EMA, an authors' checkpoint with
    ``state_dict_ema``). ``dtype`` is the computation dtype (e.g. ``jnp.bfloat16``); other
    keyword arguments go to the model (``param_dtype``, ``remat``...), and the parameters take
    its ``param_dtype``. ``image_size`` (an int or ``(H, W)``) other than the trained one
    resamples the ``generate`` layers to its token grid (``resample_params``), or, with a
    ``patch_size`` other than the trained one, resizes the patch embedding (FlexiViT);
    ``num_classes`` other than the trained one gives a freshly initialised head drawn from
    ``head_rng`` (a key or a seed; 0 drops the head: pooled features). Images are expected
    normalised as in training (ImageNet mean and std for the authors' weights). Every user
    error is one-line :class:`DynaMixerError`.
    """
    path = _checked_path(path)
    model, variables = _load_as_trained(path, ema, {**model_kwargs, "dtype": dtype})
    model, params = _resized(model, variables["params"], image_size, patch_size, path)
    model, params = _with_classes(model, params, num_classes, head_rng)
    return model, {"params": params}


def _resized(
    model: DynaMixer, params: Any, image_size: Any, patch_size: int | None, path: str
) -> tuple[DynaMixer, Any]:
    """The model and weights at ``image_size`` with ``patch_size`` (``resample_params``); as
    they are for None or the trained sizes."""
    size = model.image_size if image_size is None else image_size
    size = size if isinstance(size, int) else tuple(int(s) for s in size)
    patch = model.patch_size if patch_size is None else int(patch_size)
    if as_hw(size) == as_hw(model.image_size) and patch == model.patch_size:
        return model, params
    try:
        target = model.clone(image_size=size, patch_size=patch)
    except ValueError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConversionError(
            f"cannot run the weights at {path} at image_size {size} with patch_size {patch}: "
            f"{reason}"
        ) from None
    moved = resample_params(params, size, patch_size=patch)
    dtypes = abstract_variables(target)["params"]
    moved = jax.tree_util.tree_map(lambda leaf, want: np.asarray(leaf, want.dtype), moved, dtypes)
    return target, moved


def fresh_head(in_features: int, num_classes: int, rng: Any, param_dtype: Any) -> dict[str, Any]:
    """A new classifier head ``{'kernel', 'bias'}`` initialised as the authors' ``nn.Linear``
    (truncated normal, std 0.02; zero bias), numpy leaves."""
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    kernel = timm_trunc_normal()(key, (in_features, num_classes), jnp.float32)
    return {
        "kernel": np.asarray(kernel).astype(param_dtype),
        "bias": np.zeros((num_classes,), param_dtype),
    }


def _with_classes(
    model: DynaMixer, params: Any, num_classes: int | None, rng: Any
) -> tuple[DynaMixer, Any]:
    """The model and weights with a fresh ``num_classes`` head (none for 0); as they are for
    None or the trained class count."""
    if num_classes is None or num_classes == model.num_classes:
        return model, params
    try:
        model = model.clone(num_classes=int(num_classes))
    except ValueError as error:
        raise ConversionError(f"num_classes {num_classes}: {error}") from None
    params = {key: value for key, value in params.items() if key != "head"}
    if num_classes:
        params["head"] = fresh_head(
            model.embed_dims[-1], int(num_classes), rng, jnp.dtype(model.param_dtype)
        )
    return model, params


def _load_as_trained(
    path: str, ema: bool, model_kwargs: dict[str, Any]
) -> tuple[DynaMixer, dict[str, Any]]:
    """The model the weights at ``path`` were trained as, and ``{'params': ...}`` for it."""
    if is_torch_file(path) or is_safetensors_file(path):  # the authors' key names
        state_dict = (
            _safetensors_state_dict(path, ema)
            if is_safetensors_file(path)
            else unwrap_state_dict(path, ema=ema)  # torch is imported to read it
        )
        model = model_from_state_dict(state_dict, **model_kwargs)
        return model, torch_to_flax(state_dict, model)
    params = read_params(path, ema=ema)
    model = _model_for(path, params, model_kwargs)
    abstract = abstract_variables(model)["params"]
    trees.check(
        abstract,
        params,
        error=CheckpointError,
        what=f"the weights at {path} do not fit the model built for them",
        advice="pass the architecture fields they were trained with as keyword arguments",
    )
    flat = trees.flatten(params)
    params = jax.tree_util.tree_map_with_path(
        lambda where, want: np.asarray(flat[trees.path_name(where)], dtype=want.dtype), abstract
    )
    return model, {"params": params}
