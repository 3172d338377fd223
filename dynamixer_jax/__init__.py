"""DynaMixer (Wang et al., ICML 2022) in JAX/Flax.

Importing this package needs only jax, flax and numpy.
"""

from dynamixer_jax.fast_init import init_variables
from dynamixer_jax.layers import DynaMixerBlock, DynaMixerOp, MixerLayer
from dynamixer_jax.model import DynaMixer, stage_grids
from dynamixer_jax.variants import PUBLISHED, VARIANTS, create_model, list_models

__all__ = [
    "DynaMixer", "DynaMixerBlock", "DynaMixerOp", "MixerLayer", "PUBLISHED", "VARIANTS",
    "create_model", "init_variables", "list_models", "stage_grids",
]
__version__ = "0.1.0"
