"""DynaMixer (Wang et al., ICML 2022) in JAX/Flax.

    model = create_model("dynamixer_s", num_classes=10, image_size=112)   # a fresh model
    model, variables = load("path/to/workdir_or_checkpoint")               # a trained one

Importing this package needs only jax, flax and numpy. It asks XLA:CPU for its
memory-minimising scheduler (``dynamixer_jax/xla_cpu.py``; ``DYNAMIXER_KEEP_XLA_FLAGS=1`` opts
out), which takes effect if no JAX computation has run yet in this process.
"""

from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

prefer_memory_saving_scheduler()

from dynamixer_jax.errors import DynaMixerError  # noqa: E402
from dynamixer_jax.loading import load  # noqa: E402
from dynamixer_jax.model import (  # noqa: E402
    PUBLISHED,
    VARIANTS,
    DynaMixer,
    DynaMixerBackbone,
    DynaMixerBlock,
    DynaMixerOp,
    FeatureInfo,
    MixerLayer,
    create_model,
    init_variables,
    list_models,
    stage_grids,
)
from dynamixer_jax.model.resolution import resample_params  # noqa: E402

__all__ = [
    "DynaMixer",
    "DynaMixerBackbone",
    "DynaMixerBlock",
    "DynaMixerError",
    "DynaMixerOp",
    "FeatureInfo",
    "MixerLayer",
    "PUBLISHED",
    "VARIANTS",
    "create_model",
    "init_variables",
    "list_models",
    "load",
    "resample_params",
    "stage_grids",
]
__version__ = "0.1.0"
