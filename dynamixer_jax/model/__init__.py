"""The DynaMixer network: layers, the network and its published variants, initialisation.

``layers.py`` (the DynaMixer operation, block and mixer layer) -> ``network.py`` (stages,
downsampling, head; intermediates and the backbone, described by ``features.py``) ->
``variants.py`` (S/M/L and ``create_model``). ``init.py`` holds the
authors' initialisation rules and the fast way to draw them; ``remat.py`` what a layer keeps for
the backward pass; ``flops.py`` the analytic FLOP count; ``nnx_bridge.py`` the model as a Flax
NNX module. Needs only jax, flax and numpy.
"""

from dynamixer_jax.model.features import FeatureInfo
from dynamixer_jax.model.init import abstract_variables, init_variables
from dynamixer_jax.model.layers import DynaMixerBlock, DynaMixerOp, MixerLayer
from dynamixer_jax.model.network import DynaMixer, DynaMixerBackbone, stage_grids
from dynamixer_jax.model.variants import PUBLISHED, VARIANTS, create_model, list_models

__all__ = [
    "PUBLISHED",
    "VARIANTS",
    "DynaMixer",
    "DynaMixerBackbone",
    "DynaMixerBlock",
    "DynaMixerOp",
    "FeatureInfo",
    "MixerLayer",
    "abstract_variables",
    "create_model",
    "init_variables",
    "list_models",
    "stage_grids",
]
