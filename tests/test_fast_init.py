"""init_variables draws parameters exactly as the modules' own initialisers (the authors' scheme)."""

import math

import flax
import jax
import numpy as np
import pytest

from dynamixer_jax import create_model, init_variables

TINY = dict(layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 96), transitions=(True, False, False, False),
            num_segments=(4, 8, 8, 8), reduced_dims=(2, 2, 2, 2), mlp_ratios=(3, 3, 3, 3))


def flat(variables):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))


@pytest.fixture(scope="module")
def model():
    return create_model("dynamixer_s", num_classes=100, image_size=56, **TINY)


@pytest.fixture(scope="module")
def flax_init(model):
    """The modules' own initialisers, through Flax's init (the slow path init_variables replaces)."""
    return flat(jax.jit(model.init)(jax.random.key(1), np.zeros((1, 56, 56, 3), np.float32)))


def test_same_tree_as_flax_init(model, flax_init):
    fast, slow = flat(init_variables(model, 0)), flax_init
    assert fast.keys() == slow.keys()
    for path in fast:
        assert fast[path].shape == slow[path].shape and fast[path].dtype == slow[path].dtype, path


def test_distributions_match_the_authors_scheme(model, flax_init):
    """Linear weights N(0, 0.02); biases and LayerNorm 0/1; convolutions U(+-1/sqrt(fan_in)) like PyTorch."""
    fast, slow = flat(init_variables(model, 0)), flax_init
    for path, value in fast.items():
        value, other = np.asarray(value), np.asarray(slow[path])
        name = "/".join(path)
        is_conv = path[0].startswith(("patch_embed", "downsamples"))
        if path[-1] == "scale":
            np.testing.assert_array_equal(value, 1.0, err_msg=name)
            np.testing.assert_array_equal(other, 1.0, err_msg=name)
        elif is_conv:
            kernel = fast[path[:-1] + ("kernel",)]
            bound = 1.0 / math.sqrt(np.prod(kernel.shape[:3]))
            for v in (value, other):
                assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound, name
                # Uniform(-b, b) has std b / sqrt(3): 20% slack covers the smallest leaves (>= 32 values).
                assert abs(v.std() / (bound / math.sqrt(3)) - 1) < 0.2, name
        elif path[-1] == "bias":
            np.testing.assert_array_equal(value, 0.0, err_msg=name)
            np.testing.assert_array_equal(other, 0.0, err_msg=name)
        else:
            assert value.ndim == 2, name
            for v in (value, other):
                assert abs(v.std() / 0.02 - 1) < 0.2 and abs(v.mean()) < 0.01, name


def test_seeds_and_sharding(model):
    a, b, c = (flat(init_variables(model, seed)) for seed in (0, 0, 1))
    path = ("head", "kernel")
    np.testing.assert_array_equal(a[path], b[path])
    assert not np.array_equal(a[path], c[path])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    placed = init_variables(model, jax.random.key(0), out_sharding=sharding)
    assert all(leaf.sharding == sharding for leaf in jax.tree_util.tree_leaves(placed))
