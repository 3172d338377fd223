"""From compiles at two small batches to any batch: affine fits, the largest batch that fits a
chip, and the roofline bound of a step on a chip. Pure arithmetic on the lab's records.

A training step's HBM, FLOPs and bytes accessed are, to a good approximation, affine in the
per-device batch: a fixed part (parameters, optimizer state, gradients, the update) plus a part
per image (activations). Two compiles give both parts; one compile at a large batch checks it.
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


def accumulation_to_fit(
    hbm: Affine, batch: int, capacity: float, num_params: int
) -> dict[str, float] | None:
    """The fewest ``grad_accum_steps`` (a power of two dividing ``batch``) whose step fits
    ``capacity``, estimated from the fit: the HBM of ``batch / steps`` images plus a float32
    gradient accumulator (not compiled; None if even one image per micro-batch does not fit)."""
    steps = 1
    while batch % steps == 0:
        need = hbm.at(batch // steps) + (4 * num_params if steps > 1 else 0)
        if need <= capacity:
            return {"steps": steps, "estimated_gib": need / 2**30}
        steps *= 2
    return None


def roofline_images_per_s(
    flops_per_image: float, bytes_per_image: float, peak_flops: float, bandwidth: float
) -> dict[str, float]:
    """The roofline bound: images/s limited by compute and by memory, and the lower of the two
    (``bound``), with the step's arithmetic intensity (FLOPs per byte) and which one binds."""
    compute = peak_flops / flops_per_image
    memory = bandwidth / bytes_per_image
    return {
        "compute_images_per_s": compute,
        "memory_images_per_s": memory,
        "bound_images_per_s": min(compute, memory),
        "intensity_flops_per_byte": flops_per_image / bytes_per_image,
        "bound_by": "memory" if memory < compute else "compute",
    }
