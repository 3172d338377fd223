"""RandAugment settings and timm's config-string grammar, in plain Python (no TensorFlow).

Strings follow timm's ``rand-m{M}-n{N}-mstd{S}-mmax{X}-inc{0|1}-p{P}`` (every part but ``rand``
optional), e.g. ``'rand-m9-mstd0.5-inc1'`` as in the DeiT recipe. The recipe checks its string
here when it is built, long before ``rand_augment.py`` applies it in tf.data.
"""

from __future__ import annotations

import dataclasses
import math
import re

MAX_LEVEL = 10.0
"""Magnitudes are on a 0..MAX_LEVEL scale (timm's ``_LEVEL_DENOM``)."""

# Op names of timm's ``_RAND_TRANSFORMS`` (inc0) and ``_RAND_INCREASING_TRANSFORMS`` (inc1).
STANDARD_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """Parsed RandAugment settings (defaults as in timm)."""

    num_layers: int = 2
    magnitude: float = MAX_LEVEL
    magnitude_std: float = 0.0  # math.inf: magnitude uniform in [0, magnitude]
    magnitude_max: float = MAX_LEVEL
    increasing: bool = False
    prob: float = 0.5

    @property
    def op_names(self) -> tuple[str, ...]:
        """The op set that this config samples from."""
        return INCREASING_OPS if self.increasing else STANDARD_OPS


def parse_rand_augment(config: str) -> RandAugmentConfig:
    """Parse a timm RandAugment string such as ``'rand-m9-mstd0.5-inc1'``.

    Supported parts: ``m`` magnitude, ``n`` number of ops, ``mstd`` magnitude noise std (above
    100 means uniform sampling), ``mmax`` magnitude upper bound, ``inc`` increasing op set,
    ``p`` per-op application probability. timm's op weighting (``w``) and op lists (``t``) are
    not supported and raise ``ValueError``.
    """
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment config must start with 'rand': {config!r}")
    values: dict = {}
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if match is None:
            raise ValueError(f"cannot parse {part!r} in RandAugment config {config!r}")
        key, value = match.groups()
        if key == "m":
            values["magnitude"] = float(value)
        elif key == "n":
            values["num_layers"] = int(value)
        elif key == "mstd":
            std = float(value)
            values["magnitude_std"] = math.inf if std > 100 else std
        elif key == "mmax":
            values["magnitude_max"] = float(value)
        elif key == "inc":
            values["increasing"] = bool(int(value))
        elif key == "p":
            values["prob"] = float(value)
        else:
            raise ValueError(f"unsupported key {key!r} in RandAugment config {config!r}")
    return RandAugmentConfig(**values)
