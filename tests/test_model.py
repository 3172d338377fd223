"""The Flax model on its own: shapes, parameter counts, grids, dtypes, stochastic depth, input checks."""

import ast
import re

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_ARCH, tiny_model

from dynamixer_jax import (
    PUBLISHED,
    DynaMixer,
    DynaMixerError,
    DynaMixerOp,
    create_model,
    init_variables,
    list_models,
    stage_grids,
)
from dynamixer_jax.model.variants import abstract_variables


def jitted(model):
    """model.apply compiled once per static configuration (eager Flax dispatch is slow on this CPU)."""
    return jax.jit(model.apply, static_argnames=("train", "method", "mutable"))


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", ["dynamixer_s", "dynamixer_m", "dynamixer_l"])
def test_parameter_counts_equal_the_authors(name):
    assert count(abstract_variables(create_model(name))) == PUBLISHED[name]["num_params"]


def test_abstract_variables_traces_a_model_once_and_hands_out_trees_of_their_own(monkeypatch):
    traced = []
    init = DynaMixer.init
    monkeypatch.setattr(DynaMixer, "init", lambda *a, **k: traced.append(1) or init(*a, **k))
    first = abstract_variables(tiny_model(num_classes=11))  # a model no other test asks for
    first["params"].pop("head")  # a caller changing its tree changes no one else's
    second = abstract_variables(tiny_model(num_classes=11))  # an equal model
    assert len(traced) == 1
    assert second["params"]["head"]["kernel"].shape == (48, 11)
    assert abstract_variables(tiny_model(num_classes=12))["params"]["head"]["kernel"].shape == (
        48,
        12,
    )
    assert len(traced) == 2
    # A model Flax cannot hash (a list for a tuple) is traced every time, to the same tree.
    unhashable = tiny_model(num_classes=11).clone(layers=[1, 1, 2, 1])
    assert abstract_variables(unhashable) == second and len(traced) == 3


@pytest.mark.parametrize(
    "image_size, grids",
    [
        (224, ((32, 32), (16, 16), (16, 16), (16, 16))),
        (112, ((16, 16), (8, 8), (8, 8), (8, 8))),
        ((224, 112), ((32, 16), (16, 8), (16, 8), (16, 8))),
    ],
)
def test_token_grid_follows_image_size(image_size, grids):
    assert stage_grids(image_size, 7, (True, False, False, False)) == grids
    model = create_model("dynamixer_s", image_size=image_size)
    assert model.grids == grids
    generate = abstract_variables(model)["params"]["stages_0"]["layers_0"]["attn"]
    assert generate["mix_h"]["generate"]["kernel"].shape == (grids[0][0] * 2, grids[0][0] ** 2)
    assert generate["mix_w"]["generate"]["kernel"].shape == (grids[0][1] * 2, grids[0][1] ** 2)


def test_logits_features_and_token_grid_shapes():
    model = tiny_model()
    variables = init_variables(model, 0)
    images = jnp.ones((3, 56, 56, 3))
    apply = jitted(model)
    chex.assert_shape(apply(variables, images), (3, 10))
    chex.assert_shape(apply(variables, images, method="forward_features"), (3, 4, 4, 48))
    backbone = tiny_model(num_classes=0)
    backbone_vars = {"params": {k: v for k, v in variables["params"].items() if k != "head"}}
    pooled = jitted(backbone)(backbone_vars, images)
    chex.assert_shape(pooled, (3, 48))
    tokens = apply(variables, images, method="forward_features")
    np.testing.assert_allclose(pooled, tokens.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    assert "head" not in abstract_variables(backbone)["params"]


def test_wrong_images_are_one_line_errors_that_say_what_to_do():
    model = tiny_model()
    variables = init_variables(model, 0)
    cases = [
        # 63 cannot build (the tiny model needs multiples of 14): the hint names 56 instead
        (jnp.ones((1, 63, 63, 3)), r"built for 56x56 images but got 63x63; .*image_size=56\)"),
        (jnp.ones((1, 112, 112, 3)), r"or create the model with image_size=112\."),
        (jnp.ones((1, 56, 56, 1)), r"expected 3 channels"),
        (jnp.ones((1, 3, 56, 56)), r"look channels-first .* expects NHWC"),
        (jnp.ones((56, 56, 3)), r"add a batch axis"),
        (jnp.ones((1, 56, 56, 3), jnp.uint8), r"uint8: normalise them"),
    ]
    for images, message in cases:
        with pytest.raises(DynaMixerError, match=message) as error:
            jitted(model)(variables, images)
        assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["dynamixer_s", "dynamixer_m", "dynamixer_l"])
def test_every_size_hint_names_a_size_that_builds(name):
    # S, M and L halve their grid once after patches of 7: sides are multiples of 14.
    for size in (64, 100, 7 * 15, 20, (64, 100)):
        with pytest.raises(ValueError, match=r"multiple of 14 \(patch size 7 x 2 for 1") as error:
            create_model(name, image_size=size)
        hint = re.search(r"image_size=(\d+|\(\d+, \d+\))\.$", str(error.value)).group(1)
        create_model(name, image_size=ast.literal_eval(hint))  # builds
    assert "image_size=70" in str(
        pytest.raises(ValueError, create_model, name, image_size=64).value
    )


def test_bad_configurations_fail_at_construction():
    with pytest.raises(ValueError, match=r"16 channels are not divisible by 3 segments"):
        tiny_model(num_segments=(3, 4, 4, 4))
    with pytest.raises(ValueError, match=r"unknown model 'dynamixer_xl'"):
        create_model("dynamixer_xl")
    assert list_models() == ["dynamixer_l", "dynamixer_m", "dynamixer_s"]


def test_op_rejects_wrong_sequence_length():
    op = DynaMixerOp(seq_len=8, num_segments=2)
    with pytest.raises(ValueError, match=r"built for sequences of 8 tokens but got 6"):
        op.init(jax.random.key(0), jnp.ones((2, 6, 4)))


def test_mixing_matrices_are_column_stochastic():
    """Every output token is a convex combination of the input tokens (softmax over L_in)."""
    model = tiny_model()
    variables = init_variables(model, 0)
    images = jax.random.normal(jax.random.key(1), (2, 56, 56, 3))
    _, state = jitted(model)(variables, images, mutable=("intermediates",))
    inter = state["intermediates"]["stages_0"]["layers_0"]["attn"]
    mixing = inter["mix_h"]["mixing"][0]
    chex.assert_shape(mixing, (2, 8, 2, 8, 8))  # (B, W, S, L_in, L_out)
    np.testing.assert_allclose(mixing.sum(axis=-2), 1.0, rtol=1e-5)
    assert float(mixing.min()) >= 0.0
    branches = inter["branch_weights"][0]
    chex.assert_shape(branches, (2, 16, 3))
    np.testing.assert_allclose(branches.sum(axis=-1), 1.0, rtol=1e-5)


def test_bfloat16_computation_keeps_float32_params_and_statistics():
    model = tiny_model(dtype=jnp.bfloat16)
    variables = init_variables(model, 0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    images = jax.random.normal(jax.random.key(0), (2, 56, 56, 3))
    logits, state = jitted(model)(variables, images, mutable=("intermediates",))
    assert logits.dtype == jnp.bfloat16
    mixing = state["intermediates"]["stages_0"]["layers_0"]["attn"]["mix_h"]["mixing"][0]
    assert mixing.dtype == jnp.bfloat16
    # Softmax in float32, then rounded: columns still sum to 1 within bfloat16 resolution.
    np.testing.assert_allclose(np.asarray(mixing, np.float32).sum(axis=-2), 1.0, atol=3e-2)
    reference = jitted(tiny_model())(variables, images)
    np.testing.assert_allclose(np.asarray(logits, np.float32), reference, atol=0.1, rtol=0.1)
    assert (
        np.corrcoef(np.asarray(logits, np.float32).ravel(), np.asarray(reference).ravel())[0, 1]
        > 0.99
    )


def test_bfloat16_parameters():
    model = tiny_model(param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    variables = init_variables(model, 0)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(variables))
    assert jitted(model)(variables, jnp.ones((1, 56, 56, 3))).dtype == jnp.bfloat16


def test_stochastic_depth_is_per_sample_and_only_in_training():
    model = tiny_model(drop_path_rate=0.9)
    variables = init_variables(model, 0)
    images = jax.random.normal(jax.random.key(0), (8, 56, 56, 3))
    apply = jitted(model)
    eval_logits = apply(variables, images)
    np.testing.assert_array_equal(eval_logits, apply(variables, images, train=False))
    train_a = apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
    train_b = apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(train_a, eval_logits)
    with pytest.raises(flax.errors.InvalidRngError):
        apply(variables, images, train=True)
    # With rate 0 training equals evaluation: no other randomness in the model.
    plain = tiny_model()
    plain_apply = jitted(plain)
    np.testing.assert_allclose(
        plain_apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)}),
        plain_apply(variables, images),
        rtol=1e-6,
        atol=1e-6,
    )


def test_drop_path_rates_grow_linearly():
    from dynamixer_jax.model.stage import drop_path_rates

    rates = drop_path_rates(TINY_ARCH["layers"], 0.4)  # (1, 1, 2, 1): 5 layers, steps of 0.1
    assert [len(stage) for stage in rates] == list(TINY_ARCH["layers"])
    flat = [rate for stage in rates for rate in stage]
    assert flat[0] == 0.0 and flat[-1] == 0.4  # the ends exactly, as torch/np.linspace give them
    # 0.4 * i / 4 rounds twice in float64 (0.4 * 3 / 4 is 0.30000000000000004): within a few
    # ulps of i / 10, i.e. 1e-15; any other schedule is off by at least 0.02 somewhere.
    assert flat == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], rel=0, abs=1e-15)


def test_jit_and_grad_are_finite():
    model = tiny_model(drop_path_rate=0.1)
    variables = init_variables(model, 0)
    images = jax.random.normal(jax.random.key(0), (4, 56, 56, 3))
    labels = jnp.arange(4)

    @jax.jit
    def loss_fn(params):
        logits = model.apply(
            {"params": params}, images, train=True, rngs={"dropout": jax.random.key(0)}
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

    grads = jax.grad(loss_fn)(variables["params"])
    chex.assert_trees_all_equal_shapes(grads, variables["params"])
    chex.assert_tree_all_finite(grads)
