"""Analytic FLOP count of a DynaMixer, from its fields alone (no tracing, no compiling).

For throughput figures and model FLOP utilisation (MFU): what a step of a given model
costs, independent of how XLA or PyTorch happens to lower it.

Counted: the multiply-adds (MACs) of every matmul and convolution of the forward pass, per
image; nothing else (no bias adds, GELU, softmax, LayerNorm, residual adds or branch
reweighting, which XLA's own count includes). Per layer on an H x W grid of C channels with S
segments, reduced dimension r and MLP hidden width D::

    compress   2 * H*W * C * S*r          (mix_h and mix_w)
    generate   W*S * (H*r) * H*H  +  H*S * (W*r) * W*W
    mix        W * C * H*H  +  H * C * W*W   (each output token: C products per input token)
    out        2 * H*W * C * C
    mlp_c      H*W * C * C
    reweight   C * C//4  +  C//4 * 3C     (on the pooled vector, once per image)
    proj       H*W * C * C
    mlp        2 * H*W * C * D

plus the patch embedding, the downsampling convolutions between stages and the head. This
reproduces the paper's multiply-adds per image at 224x224: S 7.30 G, M 16.98 G, L 27.34 G.

Forward FLOPs are 2 * MACs. A training step is counted as 3 x forward (the usual convention:
the backward pass costs two matmuls, input and weight gradient, for each forward one). It
slightly overcounts ours: the input gradient of the patch embedding is never computed, and the
optimizer update and elementwise work are not counted at all.
"""

from __future__ import annotations

from dynamixer_jax.model.network import DynaMixer

# Backward = 2 x forward for every matmul, so a training step is 3 x forward.
TRAINING_STEP_MULTIPLIER = 3

PARTS = (
    "patch_embed",
    "compress",
    "generate",
    "mix",
    "out",
    "mlp_c",
    "reweight",
    "proj",
    "mlp",
    "downsample",
    "head",
)


def layer_macs(
    height: int, width: int, channels: int, segments: int, reduced: int, mlp_ratio: float
) -> dict[str, int]:
    """Forward multiply-adds of one mixer layer, per image, by part."""
    tokens, hidden = height * width, int(channels * mlp_ratio)
    return {
        "compress": 2 * tokens * channels * segments * reduced,
        "generate": (
            width * segments * height * reduced * height * height
            + height * segments * width * reduced * width * width
        ),
        "mix": width * channels * height * height + height * channels * width * width,
        "out": 2 * tokens * channels * channels,
        "mlp_c": tokens * channels * channels,
        "reweight": channels * (channels // 4) + (channels // 4) * 3 * channels,
        "proj": tokens * channels * channels,
        "mlp": 2 * tokens * channels * hidden,
    }


def _downsample_macs(model: DynaMixer, stage: int) -> int:
    """Multiply-adds of the convolution after ``stage`` (0 if there is none), per image."""
    dims, grids = model.embed_dims, model.grids
    if stage + 1 >= len(dims):
        return 0
    height, width = grids[stage + 1]
    if model.transitions[stage]:
        return height * width * dims[stage + 1] * dims[stage] * 4
    if dims[stage] != dims[stage + 1]:
        return height * width * dims[stage + 1] * dims[stage]
    return 0


def forward_macs_by_part(model: DynaMixer) -> dict[str, int]:
    """Forward multiply-adds per image of every part of ``model`` (keys: ``PARTS``)."""
    totals = dict.fromkeys(PARTS, 0)
    grid_h, grid_w = model.grids[0]
    totals["patch_embed"] = (
        grid_h * grid_w * model.embed_dims[0] * model.in_chans * model.patch_size**2
    )
    for stage, (grid_h, grid_w) in enumerate(model.grids):
        per_layer = layer_macs(
            grid_h,
            grid_w,
            model.embed_dims[stage],
            model.num_segments[stage],
            model.reduced_dims[stage],
            model.mlp_ratios[stage],
        )
        for part, value in per_layer.items():
            totals[part] += model.layers[stage] * value
        totals["downsample"] += _downsample_macs(model, stage)
    totals["head"] = model.embed_dims[-1] * model.num_classes
    return totals


def forward_macs(model: DynaMixer) -> int:
    """Forward multiply-adds per image (matmuls and convolutions), as the paper's table counts."""
    return sum(forward_macs_by_part(model).values())


def forward_flops(model: DynaMixer) -> int:
    """Forward FLOPs per image: 2 x multiply-adds."""
    return 2 * forward_macs(model)


def training_flops(model: DynaMixer) -> int:
    """FLOPs per image of one training step (forward + backward), by the 3 x forward convention."""
    return TRAINING_STEP_MULTIPLIER * forward_flops(model)


def summary(model: DynaMixer) -> dict[str, float]:
    """GMACs, forward GFLOPs and training-step GFLOPs per image, for reports."""
    return {
        "gmacs": forward_macs(model) / 1e9,
        "forward_gflops": forward_flops(model) / 1e9,
        "train_gflops": training_flops(model) / 1e9,
    }
