"""Analytic minimum HBM traffic of a training step, from a DynaMixer's fields alone (no tracing).

The memory-side companion of ``flops.py``: with both, a step's arithmetic intensity (FLOPs per
byte) and its roofline bound on a chip follow, and a compiler's own "bytes accessed" can be read
as a multiple of this minimum.

What is counted (a lower bound under ideal fusion, as the library's default ``remat="minimal"``
keeps the outputs of matrix products and recomputes nothing else that is large):

* **Activations**: the output of every matrix product and convolution, with all element-wise work
  (LayerNorm, softmax, GELU, reweighting, residual adds, stochastic depth) fused into the product
  that produces or consumes it. Each is accessed ``ACTIVATION_ACCESSES`` = 5 times: written once
  and read once in the forward pass; in the backward pass read once (for the weight gradient) and
  its gradient written once and read once. Per layer on an H x W grid of C channels, S segments,
  reduced dimension r and MLP hidden width D, in elements per image::

      compress   H*W * (2*S*r + C)          (mix_h and mix_w compressions and mlp_c, one product)
      generate   W*S * H*H  +  H*S * W*W    (the mixing logits of columns and rows)
      mix        2 * H*W * C                (the mixed tokens of both directions)
      out        2 * H*W * C
      reweight   C//4 + 3*C                 (on the pooled vector)
      proj       H*W * C                    (with the residual add: the layer's middle)
      mlp        H*W * D  +  H*W * C        (fc1 with GELU; fc2 with the residual add)

  plus the patch embedding's, the downsampling convolutions' and the head's outputs, in the
  compute dtype's bytes; and the input batch: its uint8 images read once, and the augmented,
  mixed images (the patch embedding's input, which has no gradient) in the compute dtype written
  once and read twice (forward, and backward for the patch embedding's weight gradient).
* **Parameters and optimizer state**, float32 (``param_dtype``), once each per step:
  ``PARAMETER_ACCESSES`` = 12 four-byte accesses per parameter: read by the forward and by the
  backward pass (2); the gradient written and read (2); the parameter, AdamW's two moments and the
  EMA each read and written by the update (8).

Not counted: the recomputation of element-wise work, the mixing matrices' softmax (fused), the
loss, anything smaller than a vector per image.
"""

from __future__ import annotations

from dynamixer_jax.model.network import DynaMixer

ACTIVATION_ACCESSES = 5  # forward: write, read; backward: read, gradient write, gradient read
PARAMETER_ACCESSES = 12  # forward read, backward read, gradient write + read, 4 arrays x (r + w)
PARAMETER_BYTES = 4  # float32 parameters, moments and EMA
INPUT_BYTES = 1  # uint8 images
INPUT_IMAGE_ACCESSES = 3  # the mixed image: written, read forward, read for the weight gradient

PARTS = (
    "input",
    "patch_embed",
    "compress",
    "generate",
    "mix",
    "out",
    "reweight",
    "proj",
    "mlp",
    "downsample",
    "head",
)


def layer_activations(
    height: int, width: int, channels: int, segments: int, reduced: int, mlp_ratio: float
) -> dict[str, int]:
    """Elements per image of the activations one mixer layer writes, by part."""
    tokens, hidden = height * width, int(channels * mlp_ratio)
    return {
        "compress": tokens * (2 * segments * reduced + channels),
        "generate": width * segments * height * height + height * segments * width * width,
        "mix": 2 * tokens * channels,
        "out": 2 * tokens * channels,
        "reweight": channels // 4 + 3 * channels,
        "proj": tokens * channels,
        "mlp": tokens * hidden + tokens * channels,
    }


def layer_parameters(
    height: int, width: int, channels: int, segments: int, reduced: int, mlp_ratio: float
) -> int:
    """Parameters of one mixer layer (weights and biases, both LayerNorms)."""
    hidden, quarter = int(channels * mlp_ratio), channels // 4
    compress = 2 * (channels * segments * reduced + segments * reduced)
    generate = sum(
        length * reduced * length * length + length * length for length in (height, width)
    )
    out = 2 * (channels * channels + channels)
    mlp_c = channels * channels
    reweight = channels * quarter + quarter + quarter * 3 * channels + 3 * channels
    proj = channels * channels + channels
    mlp = channels * hidden + hidden + hidden * channels + channels
    norms = 2 * 2 * channels
    return compress + generate + out + mlp_c + reweight + proj + mlp + norms


def _downsample(model: DynaMixer, stage: int) -> tuple[int, int]:
    """(kernel side, output elements per image) of the convolution after ``stage``; (0, 0) if none."""
    dims = model.embed_dims
    if stage + 1 >= len(dims):
        return 0, 0
    height, width = model.grids[stage + 1]
    if model.transitions[stage]:
        return 2, height * width * dims[stage + 1]
    if dims[stage] != dims[stage + 1]:
        return 1, height * width * dims[stage + 1]
    return 0, 0


def activations_by_part(model: DynaMixer) -> dict[str, int]:
    """Activation elements per image of every part of ``model`` (keys: ``PARTS``), except
    ``input``, which is the uint8 image's elements."""
    totals = dict.fromkeys(PARTS, 0)
    height, width = model.grids[0]
    image_h, image_w = height * model.patch_size, width * model.patch_size
    totals["input"] = image_h * image_w * model.in_chans
    totals["patch_embed"] = height * width * model.embed_dims[0]
    for stage, (height, width) in enumerate(model.grids):
        per_layer = layer_activations(
            height,
            width,
            model.embed_dims[stage],
            model.num_segments[stage],
            model.reduced_dims[stage],
            model.mlp_ratios[stage],
        )
        for part, value in per_layer.items():
            totals[part] += model.layers[stage] * value
        totals["downsample"] += _downsample(model, stage)[1]
    totals["head"] = model.num_classes
    return totals


def num_parameters(model: DynaMixer) -> int:
    """Parameters of ``model``, counted from its fields (equal to the initialised tree's count)."""
    dims = model.embed_dims
    patch = model.patch_size**2 * model.in_chans * dims[0] + dims[0]
    total = patch + 2 * dims[-1]  # the final LayerNorm
    for stage, (height, width) in enumerate(model.grids):
        total += model.layers[stage] * layer_parameters(
            height,
            width,
            dims[stage],
            model.num_segments[stage],
            model.reduced_dims[stage],
            model.mlp_ratios[stage],
        )
        side, _ = _downsample(model, stage)
        if side:
            total += side * side * dims[stage] * dims[stage + 1] + dims[stage + 1]
    if model.num_classes:
        total += dims[-1] * model.num_classes + model.num_classes
    return total


def compute_bytes(model: DynaMixer) -> int:
    """Bytes of one activation element: 2 in bfloat16 or float16, else 4."""
    dtype = model.dtype
    name = getattr(dtype, "__name__", None) or str(dtype)
    return 2 if dtype is not None and ("bfloat16" in name or "float16" in name) else 4


def training_bytes(model: DynaMixer, batch: int) -> dict[str, int]:
    """Minimum HBM bytes of one training step on ``batch`` images: ``activations``,
    ``parameters`` (parameters, gradient, AdamW moments and EMA) and their ``total``."""
    parts = activations_by_part(model)
    element = compute_bytes(model)
    # uint8 read; the mixed image written, read by the forward and by the weight gradient.
    inputs = parts.pop("input") * (INPUT_BYTES + INPUT_IMAGE_ACCESSES * element)
    activations = batch * (inputs + ACTIVATION_ACCESSES * element * sum(parts.values()))
    parameters = PARAMETER_ACCESSES * PARAMETER_BYTES * num_parameters(model)
    return {
        "activations": activations,
        "parameters": parameters,
        "total": activations + parameters,
    }


def training_bytes_per_image(model: DynaMixer, batch: int) -> float:
    """Minimum HBM bytes of a training step per image, at ``batch`` images per device."""
    return training_bytes(model, batch)["total"] / batch
