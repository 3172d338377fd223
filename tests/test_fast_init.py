"""init_variables draws parameters exactly as the modules' own initialisers (the authors' scheme)."""

import math

import flax
import jax
import numpy as np
import pytest
from conftest import tiny_model

from dynamixer_jax import init_variables

# The shared tiny architecture, twice as wide: the distribution checks below need at least 32
# values in every convolution bias (the patch embedding's has embed_dims[0]).
WIDTHS = (32, 64, 64, 96)


def flat(variables):
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))


@pytest.fixture(scope="module")
def model():
    return tiny_model(embed_dims=WIDTHS, num_classes=100)


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
