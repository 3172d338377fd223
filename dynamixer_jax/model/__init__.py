"""The DynaMixer network: layers, the network and its published variants, initialisation.

``layers.py`` (the DynaMixer operation, block and mixer layer) -> ``stage.py`` -> ``network.py``
(stages, downsampling, head; intermediates and the backbone, described by ``features.py``) ->
``variants.py`` (S/M/L, ``create_model``, ``init_variables`` and ``abstract_variables``).
``initializers.py`` holds the authors' initialisation rules; ``remat.py`` what a layer keeps for
the backward pass; ``flops.py`` and ``traffic.py`` the analytic FLOP and minimum-traffic counts.
Needs only jax, flax and numpy (the NNX bridge, which needs optax, is ``dynamixer_jax.nnx_bridge``).
"""

from dynamixer_jax.model.features import FeatureInfo
from dynamixer_jax.model.layers import DynaMixerBlock, DynaMixerOp, MixerLayer
from dynamixer_jax.model.network import DynaMixer, DynaMixerBackbone, stage_grids
from dynamixer_jax.model.variants import (
    PUBLISHED,
    VARIANTS,
    abstract_variables,
    create_model,
    init_variables,
    list_models,
)

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
