"""The per-image training augmentation recipe: every field, its default, meaning and check.

``configs/default.py`` builds ``config.augment`` from :func:`config_fields`, the training
builders turn it back into a :class:`TrainAugment` with :meth:`TrainAugment.from_fields`, and
the input pipeline (``augment.py``, in tf.data) and the train step (``device_augment.py``, on
device) both read their settings from that one object. Plain Python: no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dynamixer_jax.data.device_augment import IMAGENET_MEAN, IMAGENET_STD, DeviceAugment
from dynamixer_jax.data.rand_augment_config import parse_rand_augment
from dynamixer_jax.errors import ConfigError

INTERPOLATIONS = ("random", "bilinear", "bicubic")
"""Resize kernels of the random resized crop; 'random' picks bilinear or bicubic per image."""
_SHARED_FIELDS = ("mean", "std")  # top-level config fields: evaluation normalises with them too


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """How one training image is augmented (timm ``transforms_imagenet_train``, the DeiT recipe).

    In order: random resized crop -> horizontal flip -> RandAugment, or colour jitter when
    RandAugment is off (all in tf.data, on uint8) -> normalisation -> random erasing (both in
    the train step, on device: :meth:`on_device`). A 0, ``""`` or ``None`` turns a step off.
    The defaults are the authors' ImageNet recipe. Frozen and checked when built: a bad value
    raises :class:`ConfigError` naming its field.
    """

    scale: tuple[float, float] | None = (0.08, 1.0)
    """Random resized crop: the range of the crop's area fraction; None resizes the whole
    image instead."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Random resized crop: the range of its aspect ratio (width / height), log-uniform."""
    interpolation: str = "random"
    """Resize kernel, one of :data:`INTERPOLATIONS`."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    """A timm-style RandAugment string (``rand_augment_config.py``); "" off."""
    color_jitter: float | None = 0.4
    """Brightness/contrast/saturation jitter strength, used only when RandAugment is off (as
    in timm)."""
    random_erase_prob: float = 0.25
    """Probability that an image gets random erasing."""
    random_erase_mode: str = "pixel"
    """What fills an erased rectangle: 'pixel' (per-pixel normal noise), 'rand' (one normal
    colour) or 'const' (zeros, i.e. the mean colour)."""
    random_erase_count: int = 1
    """Rectangles per erased image: uniform in [1, random_erase_count]."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Normalisation mean per channel, 0-1 scale (``config.mean``; also RandAugment's fill)."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Normalisation standard deviation per channel, 0-1 scale (``config.std``)."""

    def __post_init__(self):
        scale, ratio = self.scale, self.ratio
        if scale is not None and not (_pair(scale) and 0 < scale[0] <= scale[1] <= 1):
            _reject("scale", "None or (low, high) with 0 < low <= high <= 1", scale)
        if not (_pair(ratio) and 0 < ratio[0] <= ratio[1]):
            _reject("ratio", "(low, high) with 0 < low <= high", ratio)
        if self.interpolation not in INTERPOLATIONS:
            _reject("interpolation", " | ".join(INTERPOLATIONS), self.interpolation)
        if not (_number(self.hflip) and 0 <= self.hflip <= 1):
            _reject("hflip", "a probability in [0, 1]", self.hflip)
        if self.rand_augment:
            try:
                parse_rand_augment(str(self.rand_augment))
            except ValueError as error:
                raise ConfigError(f'augment.rand_augment: {error}; "" turns it off') from None
        if self.color_jitter is not None and not (
            _number(self.color_jitter) and self.color_jitter >= 0
        ):
            _reject("color_jitter", "a strength >= 0 (0 off)", self.color_jitter)
        self.on_device()  # DeviceAugment checks the random erasing fields and std

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], *, mean, std) -> TrainAugment:
        """The recipe from ``config.augment`` (a ConfigDict or any mapping) and the config's
        ``mean``/``std``; unknown fields are a ConfigError, lists become tuples."""
        settings = dict(fields.items())
        known = set(config_fields())
        unknown = set(settings) - known
        if unknown:
            raise ConfigError(
                f"augment has unknown field(s) {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        settings = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in settings.items()
        }
        return cls(**settings, mean=tuple(mean), std=tuple(std))

    def on_device(self) -> DeviceAugment:
        """The train step's share of the recipe: normalise, then random erasing."""
        return DeviceAugment(
            mean=tuple(self.mean),
            std=tuple(self.std),
            erase_prob=self.random_erase_prob,
            erase_mode=self.random_erase_mode,
            erase_count=self.random_erase_count,
        )


def config_fields() -> dict[str, Any]:
    """The recipe's fields with their defaults, as ``config.augment`` holds them (``mean`` and
    ``std`` are top-level config fields, shared with evaluation)."""
    return {
        field.name: field.default
        for field in dataclasses.fields(TrainAugment)
        if field.name not in _SHARED_FIELDS
    }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(map(_number, value))


def _reject(field: str, allowed: str, value: Any) -> None:
    raise ConfigError(f"augment.{field} must be {allowed}, not {value!r}")
