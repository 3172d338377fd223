"""Trained weights at another image size and another class count, as a user reaches them: from
``dynamixer_jax.load``, ``load_nnx``, the converter's command line and fine-tuning's
``init_from``, with a workdir of ours as the source (its architecture from its config.json)."""

import json

import jax
import numpy as np
import optax
import pytest
from conftest import MICRO_ARCH, REPO

import dynamixer_jax
from dynamixer_jax import resample_params, trees
from dynamixer_jax.convert.__main__ import main as convert_main
from dynamixer_jax.convert.flax_io import load_flax
from dynamixer_jax.errors import DynaMixerError
from dynamixer_jax.model.resolution import is_generate
from dynamixer_jax.model.variants import create_model, init_variables
from dynamixer_jax.train import load_config
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.loop import initial_params
from dynamixer_jax.train.parallel import make_mesh
from dynamixer_jax.train.plan import make_plan
from dynamixer_jax.train.state import create_train_state

# MICRO_ARCH: patch 4 and one stride-2 transition, so sides are multiples of 8.
TRAINED_AT, NEW_SIZE = (16, 24), (32, 48)


@pytest.fixture(scope="module")
def trained():
    model = create_model("dynamixer_s", num_classes=7, image_size=TRAINED_AT, **MICRO_ARCH)
    return model, jax.device_get(init_variables(model, jax.random.key(3)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trained):
    """A workdir as training leaves it: a checkpoint (raw and EMA parameters), config.json."""
    path = tmp_path_factory.mktemp("workdir")
    params = trained[1]["params"]
    state = create_train_state(params, optax.adamw(1e-3), seed=0, use_ema=True)
    state = state.replace(ema_params=jax.tree_util.tree_map(lambda x: x + 1, params))
    with Checkpoints(str(path / "checkpoints"), asynchronous=False) as checkpoints:
        checkpoints.save(5, state, {"seed": 0}, metrics={"eval_top1": 0.5})
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO_ARCH.items()}
    config = {"model": "dynamixer_s", "image_size": list(TRAINED_AT), "model_overrides": overrides}
    (path / "config.json").write_text(json.dumps(config))
    return path


def _images(size, batch=2):
    return np.random.default_rng(0).normal(size=(batch, *size, 3)).astype(np.float32)


def _assert_resampled(params, trained_params):
    """Every generate leaf is the trained one resampled; every other leaf is the trained one."""
    want = trees.flatten(resample_params(trained_params, NEW_SIZE))
    got = trees.flatten(params)
    assert sorted(got) == sorted(want)
    assert any(
        trees.shape_of(want[k]) != trees.shape_of(v)
        for k, v in trees.flatten(trained_params).items()
    )
    for name, value in got.items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)
        if not is_generate(name):
            np.testing.assert_array_equal(value, trees.flatten(trained_params)[name])


def test_resample_params_keeps_the_form_and_is_the_identity_at_the_trained_size(trained):
    variables = trained[1]
    moved = resample_params(variables, NEW_SIZE)
    assert set(moved) == {"params"}
    assert moved["params"]["stages_0"]["layers_0"]["attn"]["mix_h"]["generate"]["kernel"].shape[
        1
    ] == ((NEW_SIZE[0] // 4) ** 2)
    same = resample_params(variables["params"], TRAINED_AT)
    for name, value in trees.flatten(same).items():
        np.testing.assert_array_equal(value, trees.flatten(variables["params"])[name])


def test_load_at_another_size_and_class_count(workdir, trained):
    path = workdir
    model, variables = dynamixer_jax.load(path, image_size=NEW_SIZE)
    assert tuple(np.broadcast_to(model.image_size, 2)) == NEW_SIZE and model.num_classes == 7
    _assert_resampled(variables["params"], trained[1]["params"])
    assert jax.jit(model.apply)(variables, _images(NEW_SIZE)).shape == (2, 7)

    model, variables = dynamixer_jax.load(path, num_classes=3)
    head = variables["params"]["head"]
    assert head["kernel"].shape == (32, 3) and not head["bias"].any()
    assert 0.01 < head["kernel"].std() < 0.04  # the authors' Linear init: std 0.02
    trained_flat = trees.flatten(trained[1]["params"])
    for name, value in trees.flatten(variables["params"]).items():
        if not name.startswith("head/"):
            np.testing.assert_array_equal(value, trained_flat[name])
    assert jax.jit(model.apply)(variables, _images(TRAINED_AT)).shape == (2, 3)

    model, variables = dynamixer_jax.load(path, num_classes=0)  # a pooled-feature backbone
    assert "head" not in variables["params"]
    assert jax.jit(model.apply)(variables, _images(TRAINED_AT)).shape == (2, 32)


def test_load_at_a_size_that_cannot_build_names_one_that_does(workdir):
    with pytest.raises(DynaMixerError) as error:
        dynamixer_jax.load(workdir, image_size=20)
    message = str(error.value)
    assert "\n" not in message and "image_size=16" in message
    dynamixer_jax.load(workdir, image_size=16)  # the suggested size builds


def test_load_nnx_at_another_size(workdir, trained):
    from flax import nnx

    from dynamixer_jax.nnx_bridge import load_nnx

    model = load_nnx(workdir, image_size=NEW_SIZE, num_classes=4)
    assert nnx.jit(lambda model, images: model(images))(model, _images(NEW_SIZE)).shape == (2, 4)


def test_converter_reads_a_workdir_at_another_size(workdir, trained, tmp_path, capsys):
    out = tmp_path / "moved.msgpack"
    assert convert_main([str(workdir), str(out), "--image-size", "32,48"]) == 0
    _assert_resampled(load_flax(str(out))["params"], trained[1]["params"])
    assert convert_main(["--ema", str(workdir), str(tmp_path / "ema.msgpack")]) == 0
    np.testing.assert_array_equal(
        load_flax(str(tmp_path / "ema.msgpack"))["params"]["norm"]["scale"],
        trained[1]["params"]["norm"]["scale"] + 1,
    )
    with pytest.raises(SystemExit):  # argparse's usage line and exit code 2
        convert_main([str(workdir), str(tmp_path / "x.msgpack"), "--image-size", "3,4,5"])
    assert "give N or H,W" in capsys.readouterr().err


def test_finetuning_from_a_workdir_takes_its_architecture(workdir, trained):
    config = load_config(
        str(REPO / "configs" / "finetune.py"), init_from=str(workdir), image_size=32
    )  # no model_overrides retyped
    plan = make_plan(config, devices=1, processes=1)
    assert dict(plan.model.overrides) == MICRO_ARCH
    assert json.loads(plan.config_json)["model_overrides"]["layers"] == [1, 1]
    model = plan.model.build(10)
    params = jax.device_get(initial_params(model, 0, plan.init_from, make_mesh()))
    assert params["head"]["kernel"].shape == (32, 10)
    np.testing.assert_array_equal(
        params["patch_embed"]["kernel"], trained[1]["params"]["patch_embed"]["kernel"]
    )
    conflicting = load_config(
        str(REPO / "configs" / "finetune.py"),
        init_from=str(workdir),
        **{"model_overrides.layers": (2, 2)},
    )
    with pytest.raises(DynaMixerError, match="drop --config.model_overrides"):
        make_plan(conflicting, devices=1, processes=1)


def test_flexivit_patch_kernel_keeps_each_patchs_embedding():
    """<resize(x), w'> = <x, w> for every patch x when the patch grows (4 -> 6: exact); when it
    shrinks (4 -> 3) the same equations have no exact solution and w' is their least-squares
    one (the residual is orthogonal to every resized patch)."""
    from dynamixer_jax.model.resolution import patch_kernel_to

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 4, 3, 5)).astype(np.float32)

    def embed(patches, kernel):
        return np.einsum("nhwc,hwco->no", patches, kernel)

    def resize(patches, size):
        return np.asarray(jax.image.resize(patches, (len(patches), size, size, 3), "bilinear"))

    patches = rng.normal(size=(16, 4, 4, 3)).astype(np.float32)
    grown = patch_kernel_to(kernel, 6)
    assert grown.shape == (6, 6, 3, 5) and grown.dtype == np.float32
    np.testing.assert_allclose(
        embed(resize(patches, 6), grown), embed(patches, kernel), rtol=1e-4, atol=1e-4
    )
    shrunk = patch_kernel_to(kernel, 3).astype(np.float64)
    # One input channel's 4x4 basis patches, resized: the rows of R (16 x 9).
    basis = np.eye(16, dtype=np.float32).reshape(16, 4, 4, 1).repeat(3, axis=-1)
    resized = resize(basis, 3)[..., 0].reshape(16, 9).astype(np.float64)
    residual = resized @ shrunk[:, :, 0, :].reshape(9, 5) - kernel[:, :, 0, :].reshape(16, 5)
    np.testing.assert_allclose(resized.T @ residual, 0, atol=1e-4)
    assert np.abs(residual).max() > 1e-2  # not exact: there was something to approximate


def test_load_with_another_patch_size_keeps_the_token_grid(workdir, trained):
    # 16x24 with patches of 4 and 12x18 with patches of 3: the same 4x6 grid.
    model, variables = dynamixer_jax.load(workdir, image_size=(12, 18), patch_size=3)
    assert model.patch_size == 3 and model.grids == trained[0].grids
    got, want = trees.flatten(variables["params"]), trees.flatten(trained[1]["params"])
    assert got["patch_embed/kernel"].shape == (3, 3, 3, 16)
    for name, value in got.items():
        if name != "patch_embed/kernel":
            np.testing.assert_array_equal(value, want[name], err_msg=name)
    assert jax.jit(model.apply)(variables, _images((12, 18))).shape == (2, 7)
