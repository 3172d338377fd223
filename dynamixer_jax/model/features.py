"""What a dense-task head needs to know about DynaMixer's feature maps, as timm describes them.

``FeatureInfo`` lists, per output of ``forward_intermediates`` or of a backbone, its channel
count, its reduction (input pixels per token along each side) and the module it comes from;
``take_indices`` turns timm's ``indices`` argument (None, a count, or positions) into sorted
positions; ``to_format`` lays a grid out as NHWC or NCHW. The network itself is in
``network.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

OUTPUT_FORMATS = ("NHWC", "NCHW")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One feature map: ``num_chs`` channels, one token per ``reduction`` x ``reduction``
    input pixels, taken after ``module`` (a path in the parameter tree, e.g. ``stages_1``)."""

    num_chs: int
    reduction: int
    module: str


@dataclasses.dataclass(frozen=True)
class FeatureInfo(Sequence):
    """The feature maps a model returns, in order (a sequence of :class:`FeatureSpec`).

    ``channels()`` and ``reduction()`` are what a neck (FPN, UPerNet...) is built from, as with
    timm's ``model.feature_info``.
    """

    specs: tuple[FeatureSpec, ...]

    def __getitem__(self, index):
        return self.specs[index]

    def __len__(self) -> int:
        return len(self.specs)

    def channels(self) -> tuple[int, ...]:
        """Channels of each feature map."""
        return tuple(spec.num_chs for spec in self.specs)

    def reduction(self) -> tuple[int, ...]:
        """Input pixels per token along each side, for each feature map."""
        return tuple(spec.reduction for spec in self.specs)

    def module_name(self) -> tuple[str, ...]:
        """Where in the parameter tree each feature map is taken."""
        return tuple(spec.module for spec in self.specs)

    def select(self, indices: Sequence[int]) -> FeatureInfo:
        """The entries at ``indices`` (positions into this list)."""
        return FeatureInfo(tuple(self.specs[i] for i in indices))


def take_indices(count: int, indices: int | Sequence[int] | None) -> tuple[int, ...]:
    """Sorted positions among ``count`` outputs: all for None, the last n for an int n, else the
    given positions (negative ones count from the end). ValueError for one out of range."""
    if indices is None:
        return tuple(range(count))
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(
                f"indices={indices} asks for the last {indices} of {count} outputs; use 1 to {count}."
            )
        return tuple(range(count - indices, count))
    positions = []
    for index in indices:
        position = index + count if index < 0 else index
        if not 0 <= position < count:
            raise ValueError(
                f"index {index} is out of range for {count} outputs; use 0 to {count - 1} "
                f"(or -{count} to -1)."
            )
        positions.append(position)
    if not positions:
        raise ValueError("indices is empty; give at least one output position.")
    return tuple(sorted(set(positions)))


def check_format(output_fmt: str) -> None:
    """ValueError unless ``output_fmt`` is one this package writes."""
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(
            f"output_fmt must be one of {', '.join(OUTPUT_FORMATS)}, not {output_fmt!r}."
        )


def to_format(grid: jax.Array, output_fmt: str) -> jax.Array:
    """A (B, H, W, C) token grid laid out as ``output_fmt`` ('NHWC' as is, or 'NCHW')."""
    return grid if output_fmt == "NHWC" else jnp.transpose(grid, (0, 3, 1, 2))
