"""collect_mixing reads every layer's generated matrices and branch weights; the plots draw them."""

import jax
import matplotlib
import numpy as np
import pytest
from conftest import MICRO_ARCH

from dynamixer_jax import create_model, init_variables
from dynamixer_jax.analysis.mixing_maps import collect_mixing
from dynamixer_jax.analysis.plots import (
    plot_branch_weights,
    plot_mixing_matrices,
    plot_training_curves,
)

matplotlib.use("Agg")

# The micro architecture with two layers in the first stage; the exact matrix shapes below need
# a non-square grid (24x16 pixels, patch 4).
ARCH = {**MICRO_ARCH, "layers": (2, 1)}


@pytest.fixture(scope="module")
def setup():
    # a non-square grid (24x16 image -> 6x4 tokens, then 3x2) tells rows from columns
    model = create_model("dynamixer_s", num_classes=5, image_size=(24, 16), **ARCH)
    variables = init_variables(model, jax.random.key(0))
    image = np.random.default_rng(0).normal(size=(24, 16, 3)).astype(np.float32)
    return model, variables, image


def test_every_layer_in_order_with_exact_shapes(setup):
    model, variables, image = setup
    layers = collect_mixing(model, variables, image)
    assert [layer.name for layer in layers] == [
        "stages_0/layers_0",
        "stages_0/layers_1",
        "stages_1/layers_0",
    ]
    # columns: one matrix per column (W) and segment over the H tokens of the column
    assert layers[0].columns.shape == (4, 2, 6, 6) and layers[0].rows.shape == (6, 2, 4, 4)
    assert layers[2].columns.shape == (2, 4, 3, 3) and layers[2].rows.shape == (3, 4, 2, 2)
    assert layers[0].branch_weights.shape == (16, 3) and layers[2].branch_weights.shape == (32, 3)
    for layer in layers:
        for matrices in (layer.columns, layer.rows):
            np.testing.assert_allclose(matrices.sum(-1), 1.0, atol=1e-5)  # rows: outputs
            assert (matrices >= 0).all()
        np.testing.assert_allclose(layer.branch_weights.sum(-1), 1.0, atol=1e-5)


def test_matrices_are_the_ones_the_model_sows(setup):
    model, variables, image = setup
    _, state = model.apply(variables, image[None], mutable=["intermediates"])
    sown = state["intermediates"]["stages_0"]["layers_1"]["attn"]
    layer = collect_mixing(model, variables, image)[1]
    np.testing.assert_allclose(
        layer.columns, np.swapaxes(sown["mix_h"]["mixing"][0][0], -1, -2), atol=1e-6
    )
    np.testing.assert_allclose(
        layer.rows, np.swapaxes(sown["mix_w"]["mixing"][0][0], -1, -2), atol=1e-6
    )
    # and they depend on the image: that is the point of dynamic mixing
    other = collect_mixing(model, variables, image[::-1])[1]
    assert np.abs(other.columns - layer.columns).max() > 1e-4


def test_one_image_only(setup):
    model, variables, image = setup
    with pytest.raises(ValueError, match="one image"):
        collect_mixing(model, variables, image[None])


def test_figures_have_a_panel_per_matrix(setup):
    model, variables, image = setup
    layers = collect_mixing(model, variables, image)
    figure = plot_mixing_matrices([layers[0], layers[-1]], segments=range(3), image=image * 0 + 0.5)
    heatmaps = [ax for ax in figure.axes if ax.images and ax.get_title().startswith("segment")]
    # 2 layers x (column, row) x segments that exist (2 in the first stage, 3 of 4 in the last)
    assert len(heatmaps) == 2 * 2 + 2 * 3
    assert plot_branch_weights(layers).axes[0].get_ylim() == (0, 1)
    curves = plot_training_curves(
        [
            {"step": 1, "train_loss": 2.0},
            {"step": 2, "train_loss": 1.5},
            {"step": 2, "eval_top1": 0.5, "ema_eval_top1": 0.4},
        ]
    )
    loss_ax, top1_ax = curves.axes
    assert list(loss_ax.lines[0].get_ydata()) == [2.0, 1.5]
    assert [line.get_label() for line in top1_ax.lines] == ["raw", "EMA"]
