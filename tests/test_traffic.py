"""The analytic minimum HBM traffic of a training step (dynamixer_jax.model.traffic), against
counts made by hand for a one-layer model and against the parameters Flax actually creates.

The hand-counted model: one stage of one layer on a 2 x 2 grid (8 x 8 images, patches of 4),
C = 8 channels, S = 2 segments, r = 1, MLP ratio 2 (D = 16), 3 classes, bfloat16 compute.
"""

import jax
import jax.numpy as jnp
import pytest

from dynamixer_jax import create_model
from dynamixer_jax.model import traffic
from dynamixer_jax.model.variants import PUBLISHED, abstract_variables


def _one_layer(dtype=jnp.bfloat16):
    return create_model(
        "dynamixer_s",
        num_classes=3,
        image_size=8,
        patch_size=4,
        layers=(1,),
        embed_dims=(8,),
        transitions=(False,),
        num_segments=(2,),
        reduced_dims=(1,),
        mlp_ratios=(2,),
        dtype=dtype,
    )


def test_one_layer_by_hand():
    # tokens T = 4, C = 8, S*r = 2, D = 16.
    assert traffic.layer_activations(2, 2, 8, 2, 1, 2) == {
        "compress": 4 * (2 * 2 + 8),  # 48
        "generate": 2 * 2 * 2 * 2 + 2 * 2 * 2 * 2,  # 32: columns and rows, 2 x 2 logits each
        "mix": 2 * 4 * 8,  # 64
        "out": 2 * 4 * 8,  # 64
        "reweight": 2 + 3 * 8,  # 26
        "proj": 4 * 8,  # 32
        "mlp": 4 * 16 + 4 * 8,  # 96
    }
    # compress 2*(8*2+2) + generate 2*(2*2*2+4) + out 2*(64+8) + mlp_c 64
    # + reweight (8*2+2 + 2*24+24) + proj 72 + mlp (8*16+16 + 16*8+8) + two LayerNorms 32
    assert traffic.layer_parameters(2, 2, 8, 2, 1, 2) == 36 + 24 + 144 + 64 + 90 + 72 + 280 + 32


def test_one_layer_model_step_by_hand():
    model = _one_layer()
    parts = traffic.activations_by_part(model)
    assert parts["input"] == 8 * 8 * 3
    assert parts["patch_embed"] == 2 * 2 * 8
    assert parts["head"] == 3
    assert parts["downsample"] == 0
    assert sum(parts.values()) - parts["input"] == 32 + 362 + 3
    # patch embedding 4*4*3*8 + 8, the layer 742, final LayerNorm 16, head 8*3 + 3
    assert traffic.num_parameters(model) == 392 + 742 + 16 + 27
    per_image = 192 * (1 + 3 * 2) + 5 * 2 * 397  # uint8 read, mixed image 3 x 2 B; 5 accesses
    assert traffic.training_bytes(model, 4) == {
        "activations": 4 * per_image,
        "parameters": 12 * 4 * 1177,
        "total": 4 * per_image + 48 * 1177,
    }
    assert traffic.training_bytes_per_image(model, 4) == (4 * per_image + 48 * 1177) / 4


def test_float32_activations_take_four_bytes():
    model = _one_layer(dtype=None)
    assert traffic.compute_bytes(model) == 4
    assert traffic.training_bytes(model, 1)["activations"] == 192 * (1 + 3 * 4) + 5 * 4 * 397


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_match_the_published_models(name):
    assert traffic.num_parameters(create_model(name)) == PUBLISHED[name]["num_params"]


def test_parameters_match_flax_with_a_downsample_and_a_rectangle():
    model = create_model(
        "dynamixer_s",
        num_classes=5,
        image_size=(56, 28),
        layers=(1, 1, 1),
        embed_dims=(16, 32, 48),
        transitions=(True, False, False),
        num_segments=(2, 4, 4),
        reduced_dims=(2, 2, 2),
        mlp_ratios=(3, 3, 3),
    )
    counted = sum(leaf.size for leaf in jax.tree_util.tree_leaves(abstract_variables(model)))
    assert traffic.num_parameters(model) == counted
    # grids 8x4 then 4x2: a transition (2x2 convolution) to 32 channels and a 1x1 convolution
    # where the width changes to 48, both writing 4x2 grids
    assert traffic.activations_by_part(model)["downsample"] == 4 * 2 * 32 + 4 * 2 * 48
