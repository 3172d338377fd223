"""DynaMixer (Wang et al., ICML 2022) in JAX/Flax.

    model = create_model("dynamixer_s", num_classes=10, image_size=112)   # a fresh model
    model, variables = load("path/to/workdir_or_checkpoint")               # a trained one

Importing this package needs only jax, flax and numpy, and changes nothing in the process's
environment. Training on a CPU wants XLA:CPU's memory-minimising scheduler, which only an
environment variable set before the first JAX computation can ask for:
``dynamixer_jax.xla_cpu.prefer_memory_saving_scheduler()`` (``main.py``, the benchmarks and the
notebooks call it).
"""

from dynamixer_jax.errors import DynaMixerError
from dynamixer_jax.loading import load
from dynamixer_jax.model import (
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
from dynamixer_jax.model.resolution import resample_params

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
