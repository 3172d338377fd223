"""The DynaMixer network as a Flax Linen module.

Parameter tree (names chosen so each maps one-to-one to the authors' keys)::

    patch_embed/{kernel,bias}                 patch_embed.proj
    stages_{i}/layers_{j}/...                 network.{k}.{j}....
    downsamples_{i}/{kernel,bias}             network.{k}.proj   (only where one exists)
    norm/{scale,bias}                         norm
    head/{kernel,bias}                        head               (only if num_classes > 0)

Use ``model.apply(variables, images)`` for logits (or pooled features when
``num_classes == 0``) and ``model.apply(variables, images,
method='forward_features')`` for the normalised token grid before pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamixer_jax.model.init import torch_conv_bias_init, torch_conv_kernel_init
from dynamixer_jax.model.layers import Dtype, dense, layer_norm
from dynamixer_jax.model.remat import REMAT_POLICIES
from dynamixer_jax.model.stage import Stage, drop_path_rates

ImageSize = int | tuple[int, int]

# The architecture fields that hold one entry per stage.
PER_STAGE_FIELDS = (
    "layers",
    "embed_dims",
    "transitions",
    "num_segments",
    "reduced_dims",
    "mlp_ratios",
)


def as_hw(size: ImageSize) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def stage_grids(
    image_size: ImageSize, patch_size: int, transitions: Sequence[bool]
) -> tuple[tuple[int, int], ...]:
    """Token grid (H, W) of every stage: image_size / patch_size, halved after each transition.

    Raises ValueError for an image size the network cannot take.
    """
    height, width = as_hw(image_size)
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}; "
            f"use e.g. {max(1, round(height / patch_size)) * patch_size}."
        )
    grid = (height // patch_size, width // patch_size)
    grids = [grid]
    for transition in transitions[:-1]:
        if transition:
            if grid[0] % 2 or grid[1] % 2:
                raise ValueError(
                    f"image size {height}x{width} gives a {grid[0]}x{grid[1]} token grid that a stride-2 "
                    "transition cannot halve; choose an image size whose token grid stays even."
                )
            grid = (grid[0] // 2, grid[1] // 2)
        grids.append(grid)
    return tuple(grids)


def _torch_default_conv(
    features: int, kernel: int, in_features: int, dtype, param_dtype
) -> nn.Conv:
    """A non-overlapping Conv2d (kernel == stride) initialised like PyTorch's default."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(kernel, kernel),
        padding="VALID",
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=torch_conv_kernel_init(),
        bias_init=torch_conv_bias_init(in_features * kernel * kernel),
    )


class DynaMixer(nn.Module):
    """DynaMixer vision MLP. Input images (B, H, W, in_chans), H x W == image_size.

    ``train=True`` turns on stochastic depth and dropout (rng collection
    ``dropout``). ``num_classes=0`` returns the pooled features instead of logits.
    ``remat`` chooses what each mixer layer keeps for the backward pass
    (``dynamixer_jax.model.remat``); it changes memory and speed, never the result.
    """

    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    transitions: tuple[bool, ...]
    num_segments: tuple[int, ...]
    reduced_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    num_classes: int = 1000
    image_size: ImageSize = 224
    patch_size: int = 7
    in_chans: int = 3
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    skip_lam: float = 1.0
    remat: str = "minimal"
    scan_layers: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        self._validate()
        super().__post_init__()

    def _validate(self):
        """Reject configurations the network cannot be built with, with one clear message each."""
        if len({len(getattr(self, name)) for name in PER_STAGE_FIELDS}) != 1:
            raise ValueError(f"{', '.join(PER_STAGE_FIELDS)} must all have one entry per stage.")
        for stage, (dim, segments) in enumerate(zip(self.embed_dims, self.num_segments)):
            if dim % segments:
                raise ValueError(
                    f"stage {stage}: {dim} channels are not divisible by {segments} segments; "
                    "choose a segment count that divides the channel count."
                )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(
                f"remat must be one of {', '.join(REMAT_POLICIES)}, not {self.remat!r}."
            )
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}.")
        stage_grids(self.image_size, self.patch_size, self.transitions)

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        """Token grid (H, W) of every stage."""
        return stage_grids(self.image_size, self.patch_size, self.transitions)

    def setup(self):
        dims = self.embed_dims
        self.patch_embed = _torch_default_conv(
            dims[0], self.patch_size, self.in_chans, self.dtype, self.param_dtype
        )
        rates = drop_path_rates(self.layers, self.drop_path_rate)
        self.stages = [
            Stage(
                height,
                width,
                self.num_segments[i],
                self.reduced_dims[i],
                self.mlp_ratios[i],
                rates[i],
                drop_rate=self.drop_rate,
                skip_lam=self.skip_lam,
                remat=self.remat,
                scan_layers=self.scan_layers,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )
            for i, (height, width) in enumerate(self.grids)
        ]
        downsamples = []
        for i in range(len(dims) - 1):
            if self.transitions[i]:
                downsamples.append(
                    _torch_default_conv(dims[i + 1], 2, dims[i], self.dtype, self.param_dtype)
                )
            elif dims[i] != dims[i + 1]:
                downsamples.append(
                    _torch_default_conv(dims[i + 1], 1, dims[i], self.dtype, self.param_dtype)
                )
            else:
                downsamples.append(None)
        self.downsamples = downsamples
        self.norm = layer_norm(self.dtype, self.param_dtype)
        self.head = (
            dense(self.num_classes, None, self.dtype, self.param_dtype)
            if self.num_classes
            else None
        )

    def input_shape(self, batch_size: int = 1) -> tuple[int, int, int, int]:
        """The (batch, height, width, channels) of the images this model takes."""
        return (batch_size, *as_hw(self.image_size), self.in_chans)

    def _check_input(self, images: jax.Array) -> None:
        expected = as_hw(self.image_size)
        if images.ndim != 4:
            raise ValueError(
                f"expected images of shape (batch, height, width, {self.in_chans}), got {images.shape}."
            )
        if tuple(images.shape[1:3]) != expected:
            raise ValueError(
                f"this DynaMixer was built for {expected[0]}x{expected[1]} images but got "
                f"{images.shape[1]}x{images.shape[2]}; resize the images or create the model with "
                f"image_size={images.shape[1] if images.shape[1] == images.shape[2] else tuple(images.shape[1:3])}."
            )
        if images.shape[3] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} channels (channels-last NHWC images), "
                f"got shape {images.shape}."
            )

    def forward_features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """The final-normalised token grid before pooling: (B, H_last, W_last, C_last)."""
        self._check_input(images)
        x = self.patch_embed(images.astype(self.dtype or images.dtype))
        for i, stage in enumerate(self.stages):
            x = stage(x, train=train)
            if i < len(self.downsamples) and self.downsamples[i] is not None:
                x = self.downsamples[i](x)
        return self.norm(x)

    def forward_head(self, features: jax.Array) -> jax.Array:
        """Mean over tokens then the classifier: logits (B, num_classes), or pooled (B, C) if no head."""
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2)).astype(features.dtype)
        return pooled if self.head is None else self.head(pooled)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(images, train=train))
