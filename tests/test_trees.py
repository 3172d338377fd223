"""The one tree-matching helper: paths, the comparison and its one-line summary, the strict
check, and the fine-tuning merge that re-initialises only what it is told to."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MICRO_ARCH

from dynamixer_jax import trees
from dynamixer_jax.errors import CheckpointError, ConversionError
from dynamixer_jax.model.variants import abstract_variables, create_model, init_variables
from dynamixer_jax.train.weights import GRID_DEPENDENT, grid_patterns, merge_params


@flax.struct.dataclass
class _State:
    params: dict
    step: np.ndarray


def _tiny(image_size=16, num_classes=10):
    return create_model("dynamixer_s", num_classes=num_classes, image_size=image_size, **MICRO_ARCH)


def _expected():
    return {
        "encoder": {
            "layers_2": {
                "kernel": jax.ShapeDtypeStruct((4, 8), jnp.float32),
                "bias": jax.ShapeDtypeStruct((8,), jnp.float32),
            },
            "layers_10": {"kernel": jax.ShapeDtypeStruct((8, 8), jnp.float32)},
        },
        "head": {"kernel": jax.ShapeDtypeStruct((8, 3), jnp.float32)},
    }


def test_paths_are_slash_joined_for_dicts_attributes_and_indices():
    state = {"params": {"a": {"b": np.zeros(2)}}, "moments": (np.zeros(1), {"mu": np.zeros(3)})}
    assert set(trees.flatten(state)) == {"params/a/b", "moments/0", "moments/1/mu"}
    flat = trees.flatten({"x": {"y": 1, "z": {"w": 2}}})
    assert trees.unflatten(flat) == {"x": {"y": 1, "z": {"w": 2}}}
    # a flax struct dataclass (as TrainState) gives its field names
    state = _State(params={"w": np.zeros(1)}, step=np.zeros(()))
    assert set(trees.flatten(state)) == {"params/w", "step"}
    params = init_variables(_tiny(), jax.random.key(0))["params"]
    assert "stages_0/layers_0/attn/mix_h/generate/kernel" in trees.flatten(params)


def test_compare_names_missing_unexpected_misshaped_and_mistyped_paths():
    given = {
        "encoder": {
            "layers_2": {"kernel": np.zeros((4, 9), np.float32)},  # bias missing
            "layers_10": {"kernel": np.zeros((8, 8), np.float16)},
            "extra": {"kernel": np.zeros(1)},
        },
        "head": {"kernel": np.zeros((8, 3), np.float32)},
    }
    diff = trees.compare(_expected(), given)
    assert diff.missing == ("encoder/layers_2/bias",)
    assert diff.unexpected == ("encoder/extra/kernel",)
    assert diff.misshaped == (("encoder/layers_2/kernel", (4, 9), (4, 8)),)
    assert diff.mistyped == ()  # dtypes only when asked
    typed = trees.compare(_expected(), given, dtypes=True)
    assert typed.mistyped == (("encoder/layers_10/kernel", "float16", "float32"),)
    assert not trees.compare(_expected(), _expected(), dtypes=True)
    assert bool(diff)


def test_summary_is_one_line_with_the_first_few_then_a_count():
    expected = {f"layers_{i}": jax.ShapeDtypeStruct((2,), jnp.float32) for i in range(12)}
    diff = trees.compare(expected, {"layers_0": np.zeros(2), "other": np.zeros(2)})
    text = diff.summary(limit=3)
    assert "\n" not in text
    # numbers inside names sort by value: layers_2 before layers_10
    assert text.startswith("missing paths: layers_1, layers_2, layers_3 and 8 more; ")
    assert text.endswith("unexpected paths: other")
    every = ", ".join(f"layers_{i}" for i in range(1, 12))
    assert diff.summary(limit=None) == f"missing paths: {every}; unexpected paths: other"
    shaped = trees.compare(
        {"w": jax.ShapeDtypeStruct((7, 32), jnp.float32)}, {"w": np.zeros((9, 32))}
    )
    assert (
        shaped.summary(noun="keys", given="checkpoint", expected="model")
        == "mis-shaped keys: w (checkpoint (9, 32), model (7, 32))"
    )


def test_check_raises_the_given_error_with_the_advice():
    trees.check(
        _expected(),
        jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), _expected()),
        error=CheckpointError,
        what="unused",
        advice="unused",
    )
    with pytest.raises(CheckpointError) as error:
        trees.check(
            _expected(),
            {"head": {"kernel": np.zeros((8, 3))}},
            error=CheckpointError,
            what="the weights do not fit",
            advice="use the right ones",
        )
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("the weights do not fit (missing paths: encoder/layers_2/bias, ")
    assert message.endswith("; use the right ones")


def test_merge_takes_matching_leaves_and_reinitialises_only_the_patterns():
    fresh = {
        "body": {"kernel": np.zeros((2, 2), np.float32)},
        "head": {"kernel": np.zeros((2, 5), np.float32)},
    }
    loaded = {
        "body": {"kernel": np.ones((2, 2), np.float64)},
        "head": {"kernel": np.ones((2, 9), np.float32)},
    }
    merged, report = trees.merge(fresh, loaded, reinit=(r"head/.*",))
    np.testing.assert_array_equal(merged["body"]["kernel"], np.ones((2, 2)))
    assert merged["body"]["kernel"].dtype == np.float32  # the fresh leaf's dtype
    np.testing.assert_array_equal(merged["head"]["kernel"], np.zeros((2, 5)))
    assert report == {"taken": ["body/kernel"], "reinitialised": ["head/kernel"], "unused": []}
    # a pattern is matched against the whole path
    with pytest.raises(ConversionError):
        trees.merge(fresh, loaded, reinit=(r"head",), error=ConversionError)
    # a pattern that matches a leaf of the same shape still re-initialises it
    _, report = trees.merge(fresh, loaded, reinit=(r"head/.*", r"body/.*"))
    assert report["taken"] == [] and report["reinitialised"] == ["body/kernel", "head/kernel"]
    # a loaded leaf the new model lacks is dropped when a pattern names it
    _, report = trees.merge({"body": fresh["body"]}, loaded, reinit=(r"head/.*",))
    assert report["unused"] == ["head/kernel"]


def test_merge_raises_one_line_for_any_other_mismatch():
    fresh = {"body": {"kernel": np.zeros((2, 2))}, "head": {"kernel": np.zeros((2, 5))}}
    for loaded, named in [
        ({"body": {"kernel": np.ones((3, 2))}}, "mis-shaped paths: body/kernel"),
        ({}, "missing paths: body/kernel"),
        (
            {"body": {"kernel": np.ones((2, 2))}, "neck": {"w": np.ones(1)}},
            "unexpected paths: neck/w",
        ),
    ]:
        with pytest.raises(ConversionError) as error:
            trees.merge(
                fresh, loaded, reinit=(r"head/.*",), error=ConversionError, advice="say what to do"
            )
        assert named in str(error.value) and "\n" not in str(error.value)
        assert str(error.value).endswith("; say what to do")


def test_fine_tuning_at_a_new_image_size_names_the_grid_dependent_layers():
    source = init_variables(_tiny(16), jax.random.key(0))["params"]
    bigger = _tiny(32, num_classes=5)
    fresh = jax.device_get(init_variables(bigger, jax.random.key(1))["params"])
    generate = [p for p in trees.flatten(fresh) if trees.matches(p, GRID_DEPENDENT)]
    assert generate and all("/generate/" in p for p in generate)
    assert grid_patterns(source, bigger) == GRID_DEPENDENT
    assert grid_patterns(source, _tiny(16, num_classes=5)) == ()
    # without naming them, the changed grid is an error, not a silent re-initialisation
    with pytest.raises(ConversionError) as error:
        merge_params(fresh, source, reset_head=True)
    assert "mis-shaped paths: stages_0/layers_0/attn/mix_h/generate/bias" in str(error.value)
    merged, report = merge_params(fresh, source, reset_head=True, reinit=GRID_DEPENDENT)
    assert sorted(report["reinitialised"]) == sorted(generate + ["head/bias", "head/kernel"])
    flat_merged, flat_source = trees.flatten(merged), trees.flatten(source)
    for path in report["taken"]:
        np.testing.assert_array_equal(flat_merged[path], flat_source[path])
    # the same image size: everything but the head is loaded
    same = jax.device_get(init_variables(_tiny(16, num_classes=5), jax.random.key(1))["params"])
    _, report = merge_params(same, source)
    assert report["reinitialised"] == ["head/bias", "head/kernel"]
    # a different architecture is an error, whatever the patterns
    other = abstract_variables(_tiny(16, num_classes=10).clone(embed_dims=(16, 48)))["params"]
    with pytest.raises(ConversionError, match="mis-shaped paths"):
        merge_params(
            jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), other),
            source,
            reinit=GRID_DEPENDENT,
        )
