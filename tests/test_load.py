"""``dynamixer_jax.load``: a trained model from a workdir, a converted Flax checkpoint or an
authors' .pth gives the logits of the model it was saved from; user errors are one line."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import MICRO_ARCH, REPO

import dynamixer_jax
from dynamixer_jax.convert import flax_to_torch
from dynamixer_jax.convert.flax_io import save_flax
from dynamixer_jax.errors import DynaMixerError
from dynamixer_jax.model.variants import create_model, init_variables
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.state import create_train_state

IMAGES = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def trained():
    """A tiny non-square model and its variables (as if trained: random weights)."""
    model = create_model("dynamixer_s", num_classes=7, image_size=(16, 24), **MICRO_ARCH)
    return model, jax.device_get(init_variables(model, jax.random.key(3)))


def _logits(model, variables):
    return np.asarray(model.apply(variables, IMAGES, train=False))


def _assert_same_model(loaded, trained):
    (model, variables), (want_model, want_variables) = loaded, trained
    assert (model.layers, model.embed_dims, model.num_classes, model.patch_size) == (
        want_model.layers,
        want_model.embed_dims,
        want_model.num_classes,
        want_model.patch_size,
    )
    assert tuple(np.broadcast_to(model.image_size, 2)) == (16, 24)
    np.testing.assert_allclose(
        _logits(model, variables), _logits(want_model, want_variables), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", ["weights.msgpack", "orbax_weights"])
def test_converted_flax_checkpoints_round_trip(tmp_path, trained, name):
    save_flax(trained[1], str(tmp_path / name))
    _assert_same_model(dynamixer_jax.load(tmp_path / name), trained)


@pytest.mark.torch
def test_authors_pth_round_trip(tmp_path, trained):
    torch = pytest.importorskip("torch")  # optional dependency, as for the converter
    state_dict = {k: torch.from_numpy(v) for k, v in flax_to_torch(trained[1]).items()}
    torch.save(
        {"state_dict": state_dict, "state_dict_ema": {k: v + 1 for k, v in state_dict.items()}},
        tmp_path / "model.pth.tar",
    )
    _assert_same_model(dynamixer_jax.load(tmp_path / "model.pth.tar"), trained)
    _, ema = dynamixer_jax.load(tmp_path / "model.pth.tar", ema=True)
    np.testing.assert_array_equal(
        ema["params"]["head"]["bias"], trained[1]["params"]["head"]["bias"] + 1
    )


def _workdir(tmp_path, trained, *, config=True):
    """A workdir as training leaves it: checkpoints with raw and EMA parameters, config.json."""
    params = trained[1]["params"]
    tx = optax.adamw(1e-3)
    state = create_train_state(params, tx, seed=0, use_ema=True)
    state = state.replace(ema_params=jax.tree_util.tree_map(lambda x: x + 1, params))
    with Checkpoints(str(tmp_path / "checkpoints"), asynchronous=False) as checkpoints:
        checkpoints.save(5, state, {"seed": 0}, metrics={"eval_top1": 0.5})
    if config:
        overrides = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in MICRO_ARCH.items()
        }
        (tmp_path / "config.json").write_text(
            json.dumps(
                {
                    "model": "dynamixer_s",
                    "image_size": [16, 24],
                    "num_classes": -1,
                    "half_precision": False,
                    "model_overrides": overrides,
                }
            )
        )
    return tmp_path


@pytest.mark.parametrize("config", [True, False], ids=["config_json", "shapes_only"])
def test_training_workdir_round_trip(tmp_path, trained, config):
    workdir = _workdir(tmp_path, trained, config=config)
    for path in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "5"):
        _assert_same_model(dynamixer_jax.load(path), trained)
    _, ema = dynamixer_jax.load(workdir, ema=True)
    np.testing.assert_allclose(
        ema["params"]["norm"]["scale"], trained[1]["params"]["norm"]["scale"] + 1
    )
    if config:  # the architecture is the one config.json records
        saved = json.loads((workdir / "config.json").read_text())
        (workdir / "config.json").write_text(json.dumps({**saved, "image_size": 16}))
        with pytest.raises(DynaMixerError, match="do not fit the model built for them"):
            dynamixer_jax.load(workdir)


def test_dtype_options(tmp_path, trained):
    save_flax(trained[1], str(tmp_path / "w.msgpack"))
    model, variables = dynamixer_jax.load(tmp_path / "w.msgpack", dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    assert variables["params"]["head"]["kernel"].dtype == np.float32
    assert _logits(model, variables).dtype == jnp.bfloat16
    _, variables = dynamixer_jax.load(tmp_path / "w.msgpack", param_dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {np.dtype(jnp.bfloat16)}


def test_user_errors_are_one_line(tmp_path, trained):
    save_flax(trained[1], str(tmp_path / "w.msgpack"))
    (tmp_path / "garbage.msgpack").write_bytes(b"\x00\x01 not msgpack")
    save_flax({"params": {"dense": {"kernel": np.zeros((2, 2))}}}, str(tmp_path / "mlp.msgpack"))
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(path=tmp_path / "nowhere"), "no weights at"),
        (dict(path=tmp_path / "garbage.msgpack"), "not a readable .msgpack checkpoint"),
        (dict(path=tmp_path / "empty"), "not a readable Orbax checkpoint"),
        (dict(path=tmp_path / "mlp.msgpack"), "cannot read a DynaMixer architecture"),
        (dict(path=tmp_path / "w.msgpack", ema=True), "no EMA copy"),
        (
            dict(path=tmp_path / "w.msgpack", embed_dims=(16, 48), num_segments=(2, 4)),
            "do not fit the model built for them",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(DynaMixerError) as error:
            dynamixer_jax.load(**kwargs)
        assert message in str(error.value), (kwargs, str(error.value))
        assert "\n" not in str(error.value)


def test_loading_a_msgpack_needs_no_tensorflow_nor_ml_collections(tmp_path, trained):
    save_flax(trained[1], str(tmp_path / "w.msgpack"))
    code = (
        "import sys, dynamixer_jax\n"
        f"model, variables = dynamixer_jax.load({str(tmp_path / 'w.msgpack')!r})\n"
        "print(model.num_classes, sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'tensorflow_datasets', 'ml_collections', 'torch'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "[]"]
