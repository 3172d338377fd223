"""Weights from elsewhere: for fine-tuning (``config.init_from``) and for ``evaluate``.

:func:`load_params` reads parameters from any form ``dynamixer_jax.load`` accepts (a workdir of
ours, a converted Flax checkpoint, an authors' .pth), restored onto a device mesh;
:func:`load_param_sets` reads the raw and EMA parameters together (one checkpoint restore).

:func:`merge_params` fits them into a freshly initialised model for fine-tuning, as big_vision's
``dont_load``: every leaf is loaded except the paths matching explicit patterns (:data:`HEAD`
with ``reset_head``; :data:`GRID_DEPENDENT` when the image size changes and ``resample_generate``
is off, see :func:`grid_patterns`); any other difference is an error, never a silent
re-initialisation. :func:`resample_to` moves weights to another image size instead (the default
for fine-tuning and evaluation at a new size).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from dynamixer_jax import trees
from dynamixer_jax.convert.architecture import architecture_from_params
from dynamixer_jax.errors import ConversionError
from dynamixer_jax.loading import read_param_sets, read_params
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.resolution import transfer_params
from dynamixer_jax.model.variants import abstract_variables
from dynamixer_jax.train.parallel import replicated

log = logging.getLogger(__name__)

# The classifier: a new dataset needs a new one.
HEAD = (r"head/.*",)
# DynaMixer's ``generate`` layers map a row or column of the token grid to its mixing matrix, so
# their shapes follow the grid (image_size / patch_size): a new image size needs new ones.
GRID_DEPENDENT = (r".*/generate/.*",)


def load_params(path: str, mesh, *, ema: bool = False) -> Any:
    """Parameters (numpy leaves) from ``path``; ``ema`` picks the EMA copy where there is one.
    A workdir's checkpoint is restored replicated over ``mesh`` (every process reads it)."""
    return read_params(path, ema=ema, sharding=replicated(mesh))


def load_param_sets(path: str, mesh) -> dict[str, Any]:
    """``{"raw": params, "ema": EMA params}`` from ``path`` ("ema" where there is a copy), read
    once; a workdir's checkpoint is restored replicated over ``mesh``, its params only."""
    return read_param_sets(path, sharding=replicated(mesh))


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def grid_patterns(loaded: Any, model: DynaMixer) -> tuple[str, ...]:
    """:data:`GRID_DEPENDENT` if ``loaded`` was trained at another image size than ``model``
    takes, else nothing (the sizes are read off the parameter shapes)."""
    return GRID_DEPENDENT if trained_image_size(loaded) != _pair(model.image_size) else ()


def merge_params(
    fresh: Any, loaded: Any, *, reset_head: bool = True, reinit: Iterable[str] = ()
) -> tuple[Any, dict]:
    """``fresh`` with every leaf of ``loaded`` except the paths matching a ``reinit`` regex or,
    with ``reset_head``, the head; those keep their fresh values.

    Returns ``(params, report)``: ``report`` lists ``taken`` and ``reinitialised`` paths and the
    ``unused`` loaded ones. Any other missing, unexpected or mis-shaped leaf raises a one-line
    ConversionError.
    """
    patterns = tuple(reinit) + (HEAD if reset_head else ())
    merged, report = trees.merge(
        fresh,
        loaded,
        reinit=patterns,
        error=ConversionError,
        advice="fine-tune the architecture the weights were trained as (--config.model, "
        "--config.model_overrides); only the head (reset_head) and, at a new image size, the "
        "grid-dependent generate layers start fresh",
    )
    if not report["taken"]:
        raise ConversionError(
            "none of the loaded weights fit this model (every parameter is "
            "re-initialised); check the model name and its overrides"
        )
    return merged, report


def trained_image_size(loaded: Any) -> tuple[int, int]:
    """The image size ``loaded`` parameters were trained at (read off their shapes)."""
    return _pair(architecture_from_params(loaded)["image_size"])


def resample_to(loaded: Any, model: DynaMixer, source: str, *, announce: bool = True) -> Any:
    """``loaded`` with its ``generate`` layers resampled to ``model``'s image size
    (``model/resolution.py``), and (``announce``) one log line saying so; unchanged at the same
    size."""
    trained_at, wanted = trained_image_size(loaded), _pair(model.image_size)
    if trained_at == wanted:
        return loaded
    moved, resampled = transfer_params(loaded, abstract_variables(model)["params"])
    if not announce:
        return moved
    log.info(
        "weights at %s were trained at %dx%d: %d generate tensors resampled to %dx%d",
        source,
        *trained_at,
        len(resampled),
        *wanted,
    )
    return moved
