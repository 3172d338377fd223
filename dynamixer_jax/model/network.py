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

For dense tasks (timm's interface)::

    final, grids = model.apply(variables, images, method="forward_intermediates")
    backbone = model.backbone(out_indices=(0, 3))       # DynaMixerBackbone: no head
    grids = backbone.apply({"params": params_without_head}, images)
    backbone.feature_info.channels(), backbone.feature_info.reduction()

``forward_intermediates`` gives the token grid after every stage (before its downsampling), or
after every layer with ``every_layer=True``, NHWC by default. A backbone's parameter tree is the
classifier's without ``head``, so a classifier checkpoint loads into it once ``head`` is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamixer_jax import sharding
from dynamixer_jax.errors import InputError
from dynamixer_jax.model.features import (
    FeatureInfo,
    FeatureSpec,
    check_format,
    take_indices,
    to_format,
)
from dynamixer_jax.model.initializers import torch_conv_bias_init, torch_conv_kernel_init
from dynamixer_jax.model.layers import MIXINGS, Dtype, dense, layer_norm
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


def size_multiple(patch_size: int, transitions: Sequence[bool]) -> tuple[int, str]:
    """What every image side must be a multiple of (the patch size, times 2 for every stride-2
    transition before the last stage), and why, in words."""
    halvings = sum(bool(transition) for transition in tuple(transitions)[:-1])
    why = f"patch size {patch_size}" + (
        f" x {2**halvings} for {halvings} stride-2 transition{'s' * (halvings > 1)}"
        if halvings
        else ""
    )
    return patch_size * 2**halvings, why


def nearest_size(image_size: ImageSize, multiple: int) -> ImageSize:
    """The image size nearest ``image_size`` whose every side is a positive multiple of
    ``multiple`` (an int for a square size)."""
    sides = tuple(multiple * max(1, round(side / multiple)) for side in as_hw(image_size))
    return sides[0] if sides[0] == sides[1] else sides


def stage_grids(
    image_size: ImageSize, patch_size: int, transitions: Sequence[bool]
) -> tuple[tuple[int, int], ...]:
    """Token grid (H, W) of every stage: image_size / patch_size, halved after each transition.

    Raises ValueError for an image size the network cannot take, naming the nearest that it can.
    """
    height, width = as_hw(image_size)
    multiple, why = size_multiple(patch_size, transitions)
    if min(height, width) <= 0 or height % multiple or width % multiple:
        positive = "a positive" if min(height, width) > 0 else "positive: a"
        raise ValueError(
            f"image_size {image_size} must be {positive} multiple of {multiple} ({why}); "
            f"use e.g. image_size={nearest_size(image_size, multiple)}."
        )
    grid = (height // patch_size, width // patch_size)
    grids = [grid]
    for transition in transitions[:-1]:
        if transition:
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
    ``mixing`` chooses how the tokens are mixed (``dynamixer_jax.model.layers.resolve_mixing``:
    ``"auto"``, ``"vector"``, ``"dot"`` or ``"pallas"``); memory traffic only, never the result.
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
    mixing: str = "auto"

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
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, not {self.mixing!r}.")
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
                mixing=self.mixing,
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
        """InputError (one line, saying what to do) for images this model cannot take: another
        rank, layout (channels first), size or channel count, or integer pixels."""
        expected = as_hw(self.image_size)
        shape = tuple(images.shape)
        if images.ndim != 4:
            raise InputError(
                f"expected images of shape (batch, height, width, {self.in_chans}) (NHWC), "
                f"got {shape}; add a batch axis with images[None] for one image."
            )
        if shape[1] == self.in_chans and shape[3] != self.in_chans:
            raise InputError(
                f"images of shape {shape} look channels-first (B, {self.in_chans}, H, W); "
                "this model expects NHWC: pass jnp.transpose(images, (0, 2, 3, 1))."
            )
        if shape[3] != self.in_chans:
            raise InputError(
                f"expected {self.in_chans} channels (channels-last NHWC images), got shape {shape}."
            )
        if jnp.issubdtype(images.dtype, jnp.integer) or images.dtype == jnp.bool_:
            raise InputError(
                f"images are {images.dtype}: normalise them to floats as in training first, e.g. "
                "(images / 255 - mean) / std with the ImageNet mean and std for the authors' "
                "weights."
            )
        if shape[1:3] != expected:
            got = shape[1:3]
            multiple, _ = size_multiple(self.patch_size, self.transitions)
            size = got[0] if got[0] == got[1] else got
            resize = f"resize the images to {expected[0]}x{expected[1]}"
            if got[0] % multiple or got[1] % multiple:
                advice = f"{resize} (a model near their size takes image_size={nearest_size(got, multiple)})"
            else:
                advice = f"{resize}, or create the model with image_size={size}"
            raise InputError(
                f"this DynaMixer was built for {expected[0]}x{expected[1]} images but got "
                f"{got[0]}x{got[1]}; {advice}."
            )

    def forward_features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """The final-normalised token grid before pooling: (B, H_last, W_last, C_last)."""
        self._check_input(images)
        x = self.patch_embed(images.astype(self.dtype or images.dtype))
        for i, stage in enumerate(self.stages):
            x = stage(x, train=train)
            x = self._downsample(i, x)
        return self.norm(x)

    def _downsample(self, stage: int, x: jax.Array) -> jax.Array:
        """The transition (or width change) after ``stage``, where there is one."""
        if stage < len(self.downsamples) and self.downsamples[stage] is not None:
            return self.downsamples[stage](x)
        return x

    def intermediates_info(self, every_layer: bool = False) -> FeatureInfo:
        """Channels, reduction and source of each grid ``forward_intermediates`` can return: one
        per stage, or one per layer with ``every_layer``."""
        specs, reduction = [], self.patch_size
        for i, (count, dim) in enumerate(zip(self.layers, self.embed_dims)):
            if every_layer:
                specs += [
                    FeatureSpec(dim, reduction, f"stages_{i}/layers_{j}") for j in range(count)
                ]
            else:
                specs.append(FeatureSpec(dim, reduction, f"stages_{i}"))
            if self.transitions[i] and i < len(self.embed_dims) - 1:
                reduction *= 2
        return FeatureInfo(tuple(specs))

    @property
    def feature_info(self) -> FeatureInfo:
        """One entry per stage output (timm's ``feature_info``): channels, reduction, module."""
        return self.intermediates_info()

    def forward_intermediates(
        self,
        images: jax.Array,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        every_layer: bool = False,
        train: bool = False,
    ):
        """The token grids after the chosen stages (or layers), as timm's method of that name.

        ``indices``: None for every stage, an int n for the last n, or positions (negative ones
        count from the end); with ``every_layer`` they index all layers in order instead (see
        ``intermediates_info``). A stage's grid is taken before the downsampling that follows it.
        ``norm`` applies the final LayerNorm to the last stage's (or layer's) grid when it is
        taken, the only one whose width it was trained for. ``output_fmt``: 'NHWC' (default) or
        'NCHW'. Returns ``(final, grids)``, ``final`` being ``forward_features``'s normalised
        grid (NHWC), or only ``grids`` with ``intermediates_only``; ``stop_early`` (with
        ``intermediates_only``) skips the stages after the last grid asked for.
        """
        check_format(output_fmt)
        info = self.intermediates_info(every_layer)
        take = take_indices(len(info), indices)
        if stop_early and not intermediates_only:
            raise ValueError(
                "stop_early=True leaves out the final features; pass intermediates_only=True too."
            )
        self._check_input(images)
        # The stage of each output position, and the last stage that must run.
        owners = [
            i for i, count in enumerate(self.layers) for _ in range(count if every_layer else 1)
        ]
        last_stage = owners[take[-1]] if stop_early else len(self.stages) - 1
        x = self.patch_embed(images.astype(self.dtype or images.dtype))
        outputs = []
        for i in range(last_stage + 1):
            if every_layer:
                x, per_layer = self.stages[i](x, train=train, every_layer=True)
                outputs.extend(per_layer)
            else:
                x = self.stages[i](x, train=train)
                outputs.append(x)
            if i < len(self.stages) - 1:
                x = self._downsample(i, x)
        final_position = len(info) - 1
        grids = [
            to_format(
                self.norm(outputs[p]) if norm and p == final_position else outputs[p], output_fmt
            )
            for p in take
        ]
        if intermediates_only:
            return grids
        return self.norm(x), grids

    @nn.nowrap  # run in the caller's module context (its submodule), not in this model's
    def backbone(
        self,
        out_indices: Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NHWC",
        name: str | None = None,
    ) -> DynaMixerBackbone:
        """This architecture as a :class:`DynaMixerBackbone` (timm's ``features_only=True``)
        returning the grids after the stages ``out_indices`` (default: all). Called inside a
        Flax module's ``setup`` or ``nn.compact`` method it becomes that module's submodule
        (named ``name``), so a dense-task model can hold it."""
        fields = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(DynaMixer)
            if field.init and field.name not in ("parent", "name")
        }
        return DynaMixerBackbone(
            **{**fields, "num_classes": 0},
            out_indices=None if out_indices is None else tuple(int(i) for i in out_indices),
            feature_norm=norm,
            output_fmt=output_fmt,
            name=name,
        )

    def forward_head(self, features: jax.Array) -> jax.Array:
        """Mean over tokens then the classifier: logits (B, num_classes), or pooled (B, C) if no head."""
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2)).astype(features.dtype)
        return pooled if self.head is None else self.head(pooled)

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(images, train=train))

    @nn.nowrap
    def apply(self, variables, *args, **kwargs):
        """Flax's ``apply``. With weights or images on a mesh with explicit axes
        (``jax.make_mesh``'s default) the network runs as on automatic axes and its outputs come
        back split over the mesh as the images' batch dimension is
        (``dynamixer_jax.sharding.automatic_axes``)."""
        images = args[0] if args else kwargs.get("images")
        out = sharding.batch_spec(images)
        return sharding.automatic_axes(super().apply, out)(variables, *args, **kwargs)


class DynaMixerBackbone(DynaMixer):
    """DynaMixer without its head, returning a list of token grids (timm's ``features_only``).

    ``out_indices`` picks the stages (default all; negative ones count from the end),
    ``feature_norm`` applies the final LayerNorm to the last stage's grid, ``output_fmt`` is
    'NHWC' or 'NCHW'. The parameter tree is the classifier's without ``head`` (every stage and
    ``norm`` are initialised even when not all are returned), so a classifier checkpoint loads
    once ``head`` is dropped; stages after the last one asked for are not run.
    ``feature_info`` describes the returned grids. Build one with ``DynaMixer.backbone``.
    """

    num_classes: int = 0
    out_indices: tuple[int, ...] | None = None
    feature_norm: bool = False
    output_fmt: str = "NHWC"

    def _validate(self):
        super()._validate()
        if self.num_classes:
            raise ValueError(
                f"a DynaMixerBackbone has no head, so num_classes must be 0, not {self.num_classes}."
            )
        check_format(self.output_fmt)
        take_indices(len(self.layers), self.out_indices)

    @property
    def feature_info(self) -> FeatureInfo:
        """The returned grids' channels, reductions and modules, in order."""
        return self.intermediates_info().select(take_indices(len(self.layers), self.out_indices))

    def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
        if self.is_initializing():  # every parameter of the classifier but the head
            self.forward_features(images, train=train)
        return self.forward_intermediates(
            images,
            indices=self.out_indices,
            norm=self.feature_norm,
            stop_early=True,
            output_fmt=self.output_fmt,
            intermediates_only=True,
            train=train,
        )
