"""A training step's HBM, FLOPs and bytes accessed are, to a good approximation, affine in the
per-device batch (a fixed part: parameters, optimizer state, gradients; a part per image:
activations), so two compiles give them at any batch and the largest batch that fits a chip.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Affine:
    """``fixed + per_image * batch``, fitted through two (batch, value) points."""

    fixed: float
    per_image: float

    @classmethod
    def through(cls, point_a: tuple[int, float], point_b: tuple[int, float]) -> Affine:
        (batch_a, value_a), (batch_b, value_b) = point_a, point_b
        if batch_a == batch_b:
            raise ValueError("an affine fit needs two different batches")
        per_image = (value_b - value_a) / (batch_b - batch_a)
        return cls(value_a - per_image * batch_a, per_image)

    def at(self, batch: int) -> float:
        return self.fixed + self.per_image * batch

    def largest_batch(self, capacity: float) -> int:
        """The largest batch whose value stays within ``capacity`` (0 if none)."""
        if self.per_image <= 0:
            raise ValueError("the value does not grow with the batch")
        return max(0, math.floor((capacity - self.fixed) / self.per_image))
