"""Features for dense tasks: ``forward_intermediates``, the ``DynaMixerBackbone`` and its
``feature_info``, as timm offers them; and a segmentation head trained on them."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import MICRO_ARCH, TINY_ARCH, TINY_IMAGE_SIZE, tiny_model

from dynamixer_jax import create_model, init_variables
from dynamixer_jax.model.network import DynaMixerBackbone
from dynamixer_jax.model.variants import abstract_variables


@pytest.fixture(scope="module")
def classifier():
    model = tiny_model()
    variables = init_variables(model, 0)
    images = jax.random.normal(jax.random.key(1), model.input_shape(2))
    return model, variables, images


def without_head(variables):
    return {"params": {k: v for k, v in variables["params"].items() if k != "head"}}


def test_shapes_and_feature_info(classifier):
    model, variables, images = classifier
    info = model.feature_info
    # TINY_ARCH: patch 7, a transition after stage 0 only.
    assert info.channels() == TINY_ARCH["embed_dims"] == (16, 32, 32, 48)
    assert info.reduction() == (7, 14, 14, 14)
    assert info.module_name() == ("stages_0", "stages_1", "stages_2", "stages_3")
    final, grids = model.apply(variables, images, method="forward_intermediates")
    assert final.shape == (2, 4, 4, 48)
    for grid, spec in zip(grids, info, strict=True):
        side = TINY_IMAGE_SIZE // spec.reduction
        assert grid.shape == (2, side, side, spec.num_chs)
    nchw = model.apply(
        variables,
        images,
        method="forward_intermediates",
        output_fmt="NCHW",
        intermediates_only=True,
    )
    for a, b in zip(nchw, grids, strict=True):
        np.testing.assert_array_equal(a, jnp.transpose(b, (0, 3, 1, 2)))
    layers = model.intermediates_info(every_layer=True)
    assert len(layers) == sum(TINY_ARCH["layers"]) == 5
    assert layers.module_name()[2:4] == ("stages_2/layers_0", "stages_2/layers_1")
    per_layer = model.apply(
        variables, images, method="forward_intermediates", every_layer=True, intermediates_only=True
    )
    assert [g.shape[-1] for g in per_layer] == list(layers.channels())


def test_indices_follow_timm(classifier):
    model, variables, images = classifier
    run = functools.partial(
        model.apply, variables, images, method="forward_intermediates", intermediates_only=True
    )
    every = run()
    for indices, expected in [(2, (2, 3)), ((-1, 0), (0, 3)), ([1], (1,))]:
        chosen = run(indices=indices)
        assert len(chosen) == len(expected)
        for grid, position in zip(chosen, expected):
            np.testing.assert_array_equal(grid, every[position])
    for bad in (5, (0, 4), (-5,), 0, ()):
        with pytest.raises(ValueError, match="out of range|last|empty"):
            run(indices=bad)
    with pytest.raises(ValueError, match="intermediates_only"):
        model.apply(variables, images, method="forward_intermediates", stop_early=True)
    with pytest.raises(ValueError, match="output_fmt"):
        run(output_fmt="NCWH")


def test_equals_a_hand_run_of_the_stages(classifier):
    model, variables, images = classifier
    bound = model.bind(variables)
    x = bound.patch_embed(images)
    by_hand = []
    for i, stage in enumerate(bound.stages):
        x = stage(x)
        by_hand.append(x)
        if i < len(bound.downsamples) and bound.downsamples[i] is not None:
            x = bound.downsamples[i](x)
    final, grids = model.apply(variables, images, method="forward_intermediates")
    # The same operations in the same order, eagerly: equal to the bit.
    for grid, expected in zip(grids, by_hand, strict=True):
        np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(final, bound.norm(by_hand[-1]))
    np.testing.assert_array_equal(final, model.apply(variables, images, method="forward_features"))
    normed = model.apply(
        variables, images, method="forward_intermediates", norm=True, intermediates_only=True
    )
    np.testing.assert_array_equal(normed[-1], final)  # norm reaches the last stage only
    np.testing.assert_array_equal(normed[0], grids[0])
    # Every layer: a stage's last layer gives the stage's output.
    per_layer = model.apply(
        variables, images, method="forward_intermediates", every_layer=True, intermediates_only=True
    )
    for position, stage in ((0, 0), (1, 1), (3, 2), (4, 3)):
        np.testing.assert_array_equal(per_layer[position], by_hand[stage])


def test_jit_scan_and_remat(classifier):
    model, variables, images = classifier
    eager = model.apply(
        variables, images, method="forward_intermediates", every_layer=True, intermediates_only=True
    )
    # remat changes only what a gradient keeps; test_segmentation_head_trains takes one with it.
    for settings in ({}, {"scan_layers": True}):
        variant = tiny_model(**settings)
        run = jax.jit(
            functools.partial(
                variant.apply,
                method="forward_intermediates",
                every_layer=True,
                intermediates_only=True,
            )
        )
        # Compiled (fused, scanned) against eager float32: rounding only. The grids are
        # LayerNorm-scaled, O(1); 1e-5 is ~100 float32 ulps.
        for a, b in zip(run(variables, images), eager, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings", [{}, {"scan_layers": True, "remat": "full"}])
def test_backbone_loads_a_classifier_checkpoint(classifier, settings):
    model, variables, images = classifier
    backbone = tiny_model(**settings).backbone(out_indices=(0, -2), norm=True, output_fmt="NCHW")
    assert isinstance(backbone, DynaMixerBackbone) and backbone.num_classes == 0
    assert backbone.feature_info.channels() == (16, 32)
    assert backbone.feature_info.reduction() == (7, 14)
    # The classifier's tree without the head: names, shapes and dtypes.
    expected = without_head(abstract_variables(model))
    assert jax.tree_util.tree_structure(abstract_variables(backbone)) == (
        jax.tree_util.tree_structure(expected)
    )
    same = jax.tree_util.tree_map(
        lambda a, b: a.shape == b.shape and a.dtype == b.dtype,
        abstract_variables(backbone),
        expected,
    )
    assert all(jax.tree_util.tree_leaves(same))
    # timm's spelling builds the same backbone.
    built = create_model(
        "dynamixer_s",
        **{**TINY_ARCH, **settings},
        image_size=TINY_IMAGE_SIZE,
        features_only=True,
        out_indices=(0, -2),
    )
    assert isinstance(built, DynaMixerBackbone)
    assert built.feature_info.channels() == (16, 32)
    features = jax.jit(backbone.apply)(without_head(variables), images)
    _, grids = model.apply(variables, images, method="forward_intermediates", output_fmt="NCHW")
    assert len(features) == 2
    # Compiled against eager float32: rounding only (see test_jit_scan_and_remat).
    np.testing.assert_allclose(features[0], grids[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(features[1], grids[2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="num_classes must be 0"):
        DynaMixerBackbone(**{**TINY_ARCH, "image_size": TINY_IMAGE_SIZE}, num_classes=3)
    with pytest.raises(ValueError, match="out of range"):
        model.backbone(out_indices=(4,))


SEG_SIZE = 32


def square_masks(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with one brighter rectangle each, and its mask (1 inside, 0 outside)."""
    rng = np.random.RandomState(seed)
    images = rng.normal(0, 0.5, (count, SEG_SIZE, SEG_SIZE, 3)).astype(np.float32)
    masks = np.zeros((count, SEG_SIZE, SEG_SIZE), np.int32)
    for i in range(count):
        h, w = rng.randint(8, 20, 2)
        y, x = rng.randint(0, SEG_SIZE - h), rng.randint(0, SEG_SIZE - w)
        masks[i, y : y + h, x : x + w] = 1
        images[i, y : y + h, x : x + w] += 1.5
    return images, masks


class SegmentationHead(nn.Module):
    """A 1x1 convolution per level, upsampled to the image (bilinear) and summed: logits."""

    classes: int = 2

    @nn.compact
    def __call__(self, grids):
        return sum(
            jax.image.resize(
                nn.Dense(self.classes)(g),
                (g.shape[0], SEG_SIZE, SEG_SIZE, self.classes),
                "bilinear",
            )
            for g in grids
        )


def prior_entropy(masks: np.ndarray) -> float:
    """The cross-entropy of the best prediction that ignores the image: the mask's class
    frequencies everywhere."""
    p = float(masks.mean())
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def test_segmentation_head_trains():
    # MICRO_ARCH at 32x32: 8x8 and 4x4 grids; scanned stages and full remat under the gradient.
    backbone = create_model(
        "dynamixer_s",
        num_classes=0,
        image_size=SEG_SIZE,
        scan_layers=True,
        remat="full",
        **MICRO_ARCH,
    ).backbone()
    head = SegmentationHead()
    images, masks = square_masks(0, 16)
    trunk = init_variables(backbone, 0)
    params = {
        "backbone": trunk["params"],
        "head": head.init(jax.random.key(1), backbone.apply(trunk, images[:1]))["params"],
    }

    def loss_fn(params, images, masks):
        grids = backbone.apply({"params": params["backbone"]}, images)
        logits = head.apply({"params": params["head"]}, grids)
        return optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean()

    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, masks)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(20):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    # A model that ignores the image can do no better than the prior entropy of the mask (about
    # 0.45 nats here); half of it needs the rectangle located from the features. Measured: 0.68
    # at the start, 0.05 after 20 steps; 0.04 on unseen images.
    assert losses[-1] < 0.5 * prior_entropy(masks), losses
    held_images, held_masks = square_masks(1, 16)
    held_out = float(jax.jit(loss_fn)(params, held_images, held_masks))
    assert held_out < 0.5 * prior_entropy(held_masks), (held_out, losses)


class Segmenter(nn.Module):
    """A dense-task model as a user writes one: the backbone built inside ``nn.compact``."""

    @nn.compact
    def __call__(self, images, train: bool = False):
        backbone = create_model(
            "dynamixer_s",
            num_classes=0,
            image_size=SEG_SIZE,
            features_only=True,
            name="backbone",
            **MICRO_ARCH,
        )
        return SegmentationHead(name="head")(backbone(images, train=train))


def test_backbone_composes_inside_a_users_compact_module():
    segmenter = Segmenter()
    images, _ = square_masks(0, 2)
    variables = jax.jit(segmenter.init)(jax.random.key(0), images)
    standalone = create_model(
        "dynamixer_s", num_classes=0, image_size=SEG_SIZE, features_only=True, **MICRO_ARCH
    )
    trunk = init_variables(standalone, 0)  # the classifier's tree minus head, as standalone
    assert jax.tree_util.tree_structure(variables["params"]["backbone"]) == (
        jax.tree_util.tree_structure(trunk["params"])
    )
    params = {**variables["params"], "backbone": trunk["params"]}
    logits = jax.jit(segmenter.apply)({"params": params}, images)
    grids = jax.jit(standalone.apply)(trunk, images)
    want = SegmentationHead().apply({"params": params["head"]}, grids)
    assert logits.shape == (2, SEG_SIZE, SEG_SIZE, 2)
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=0)  # compiled apart: rounding only
