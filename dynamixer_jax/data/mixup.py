"""Mixup / CutMix and label smoothing as in timm, in pure JAX.

These functions run on device inside the jitted train step: every random draw is a
``jax.random`` call, every decision that depends on a draw is a ``jnp.where``, and the CutMix
box is a mask built from index comparisons, so shapes are static, nothing returns to the host
and a batch sharded across devices stays sharded.

The behaviour follows timm's ``Mixup`` with ``mode='batch'`` and ``correct_lam=True``
(``timm/data/mixup.py``): one mixing factor ``lam`` per batch, each image mixed with the image
at the mirrored batch position (``images[::-1]``), targets
``lam * smooth(y) + (1 - lam) * smooth(y[::-1])``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["MixupConfig", "mix_batch", "smooth_labels"]


def _label_values(num_classes: int, smoothing: float) -> tuple[float, float]:
    """timm's (on, off) values of a smoothed one-hot row; they sum to 1 over a row."""
    off = smoothing / num_classes
    return 1.0 - smoothing + off, off


def smooth_labels(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """Integer labels (B,) -> float32 soft targets (B, num_classes), as timm's ``mixup_target``.

    Every entry is ``smoothing / num_classes`` except the label's, which is
    ``1 - smoothing + smoothing / num_classes``; ``smoothing=0`` gives one-hot rows.
    A label outside ``[0, num_classes)`` gives a row of off values only.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    on, off = _label_values(num_classes, smoothing)
    hit = jnp.asarray(labels)[:, None] == jnp.arange(num_classes)
    return jnp.where(hit, jnp.float32(on), jnp.float32(off))


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """Mixup/CutMix settings (timm's defaults for DeiT-style training).

    mixup_alpha / cutmix_alpha: Beta(alpha, alpha) parameter of each method; 0 turns it off.
    switch_prob: chance of CutMix rather than Mixup when both are on.
    prob: chance that a batch is mixed at all.
    label_smoothing: smoothing of the targets, mixed or not.

    Frozen, hence hashable: it can be a static argument of ``jax.jit``.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5
    prob: float = 1.0
    label_smoothing: float = 0.1

    def __post_init__(self):
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not value >= 0.0:  # also rejects NaN
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("switch_prob", "prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @property
    def active(self) -> bool:
        """Whether any batch can be mixed: some alpha > 0 and prob > 0."""
        return (self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0) and self.prob > 0.0


def _cutmix_mask(rng: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
    """timm's ``rand_bbox`` as a boolean (H, W) mask: True inside the box.

    The box has half-sides ``int(side * sqrt(1 - lam)) // 2`` around a centre drawn uniformly
    from the pixel grid, clipped to the image (so it may be smaller than asked for).
    """
    ky, kx = jax.random.split(rng)
    ratio = jnp.sqrt(1.0 - lam)
    half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    # Clipping to [0, side] as timm does is implied by comparing with in-range indices.
    return (
        (rows >= cy - half_h) & (rows < cy + half_h) & (cols >= cx - half_w) & (cols < cx + half_w)
    )


def mix_batch(
    rng: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, config: MixupConfig
) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix a batch as timm's ``Mixup(mode='batch', correct_lam=True)``.

    Args:
        rng: a JAX PRNG key (raw ``PRNGKey`` or typed ``jax.random.key``).
        images: (B, H, W, C), any float dtype (float32, bfloat16, ...); kept in the output.
        labels: (B,) integer class indices.
        num_classes: width of the targets (static).
        config: a ``MixupConfig`` (static: hashable, decides the traced program).

    Returns:
        ``(mixed_images, soft_targets)``: images of the input shape and dtype, float32 targets
        (B, num_classes) whose rows sum to 1.

    With probability ``config.prob`` the batch is mixed, otherwise it is returned as is
    (``lam = 1``). If both alphas are > 0, CutMix is chosen with probability ``switch_prob``,
    otherwise Mixup; ``lam ~ Beta(alpha, alpha)`` of the chosen method. Mixup gives
    ``images * lam + images[::-1] * (1 - lam)``; CutMix pastes ``images[::-1]`` inside a random box
    and sets ``lam = 1 - box_area / (H * W)``. Targets are
    ``lam * smooth(labels) + (1 - lam) * smooth(labels[::-1])``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(
            f"labels must be ({images.shape[0]},) to match the images, got {labels.shape}"
        )
    targets = smooth_labels(labels, num_classes, config.label_smoothing)
    if not config.active:
        return images, targets

    k_apply, k_switch, k_lam, k_box = jax.random.split(rng, 4)
    _, height, width, _ = images.shape

    # Which method: decided statically when only one alpha is on.
    if config.mixup_alpha > 0.0 and config.cutmix_alpha > 0.0:
        use_cutmix = jax.random.uniform(k_switch) < config.switch_prob
    else:
        use_cutmix = jnp.asarray(config.cutmix_alpha > 0.0)
    alpha = jnp.where(use_cutmix, jnp.float32(config.cutmix_alpha), jnp.float32(config.mixup_alpha))
    lam = jax.random.beta(k_lam, alpha, alpha, dtype=jnp.float32)
    # Not mixed at all with probability 1 - prob: lam = 1 leaves images and targets untouched
    # (Mixup weights 1 and 0; the CutMix box of lam = 1 is empty).
    if config.prob < 1.0:
        lam = jnp.where(jax.random.uniform(k_apply) < config.prob, lam, jnp.float32(1.0))

    box = _cutmix_mask(k_box, lam, height, width)
    box_lam = 1.0 - jnp.sum(box, dtype=jnp.float32) / (height * width)
    lam = jnp.where(use_cutmix, box_lam, lam)

    # Per-pixel weights of the image and of its mirror: (lam, 1 - lam) everywhere for Mixup,
    # (0, 1) inside the box and (1, 0) outside for CutMix, which keeps CutMix pixels exact.
    own = jnp.where(use_cutmix, (~box).astype(jnp.float32), lam)[None, :, :, None]
    other = jnp.where(use_cutmix, box.astype(jnp.float32), 1.0 - lam)[None, :, :, None]
    mixed = images.astype(jnp.float32) * own + images[::-1].astype(jnp.float32) * other
    targets = lam * targets + (1.0 - lam) * targets[::-1]
    return mixed.astype(images.dtype), targets
