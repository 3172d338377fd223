"""``.safetensors`` with the authors' key names: the converter writes and reads it bit for bit,
``dynamixer_jax.load`` takes it, PyTorch loads it strictly, and a damaged file is one line.

Only the test that loads into the PyTorch twin needs torch (CI's second leg runs without it).
"""

from __future__ import annotations

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MICRO_ARCH

import dynamixer_jax
from dynamixer_jax.convert import flax_to_torch
from dynamixer_jax.convert.__main__ import main as convert
from dynamixer_jax.convert.flax_io import load_flax, save_flax
from dynamixer_jax.convert.safetensors_io import load_safetensors, save_safetensors
from dynamixer_jax.errors import ConversionError, DynaMixerError
from dynamixer_jax.model.variants import create_model, init_variables


def random_variables(model, seed: int = 3):
    """Every parameter drawn at random (biases and LayerNorm too), on the host."""
    variables = jax.device_get(init_variables(model, 0))
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    rng = np.random.default_rng(seed)
    leaves = [rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, leaves)


@pytest.fixture(scope="module")
def model():
    """A tiny non-square model: the image size is read back from the `generate` shapes."""
    return create_model("dynamixer_s", num_classes=7, image_size=(16, 24), **MICRO_ARCH)


@pytest.fixture(scope="module")
def variables(model):
    return random_variables(model)


def assert_bitwise_equal(a, b):
    flat_a, flat_b = (jax.tree_util.tree_leaves_with_path(t) for t in (a, b))
    assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def run_cli(capsys, *args) -> tuple[int, str]:
    code = convert([str(arg) for arg in args])
    return code, capsys.readouterr().err


def test_flax_safetensors_flax_is_exact(tmp_path, capsys, variables):
    source = tmp_path / "weights.msgpack"
    save_flax(variables, str(source))
    for src, dst in [
        (source, tmp_path / "a.safetensors"),
        (tmp_path / "a.safetensors", tmp_path / "orbax"),
        (tmp_path / "orbax", tmp_path / "b.safetensors"),
        (tmp_path / "b.safetensors", tmp_path / "back.msgpack"),
    ]:
        code, err = run_cli(capsys, src, dst)
        assert code == 0, err
    # The authors' keys and layouts, exactly what the .pth writer saves.
    state_dict = load_safetensors(tmp_path / "a.safetensors")
    expected = flax_to_torch(variables)
    assert set(state_dict) == set(expected)
    for key, value in expected.items():
        assert state_dict[key].dtype == value.dtype and state_dict[key].shape == value.shape, key
        np.testing.assert_array_equal(state_dict[key], value, err_msg=key)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert_bitwise_equal(load_flax(str(tmp_path / "back.msgpack")), variables)
    assert_bitwise_equal(load_flax(str(tmp_path / "orbax")), variables)


def test_files_get_the_permissions_of_our_other_files(tmp_path, variables):
    """0666 less the umask, as the .msgpack (Python's open) gets, not safetensors' 0600."""
    previous = os.umask(0o022)
    try:
        save_safetensors(flax_to_torch(variables), tmp_path / "w.safetensors")
        save_flax(variables, str(tmp_path / "w.msgpack"))
    finally:
        os.umask(previous)
    modes = {
        stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("w.safetensors", "w.msgpack")
    }
    assert modes == {0o644}


def test_bfloat16_stays_bfloat16(tmp_path):
    model = create_model(
        "dynamixer_s", num_classes=7, image_size=16, param_dtype=jnp.bfloat16, **MICRO_ARCH
    )
    variables = random_variables(model)
    save_safetensors(flax_to_torch(variables), tmp_path / "bf16.safetensors")
    loaded_model, loaded = dynamixer_jax.load(
        tmp_path / "bf16.safetensors", param_dtype=jnp.bfloat16
    )
    assert_bitwise_equal(loaded, variables)
    assert loaded_model.param_dtype == jnp.bfloat16


def test_load_gives_model_and_variables(tmp_path, model, variables):
    path = tmp_path / "weights.safetensors"
    save_safetensors(flax_to_torch(variables), path)
    loaded_model, loaded = dynamixer_jax.load(path)
    assert_bitwise_equal(loaded, variables)
    assert (loaded_model.layers, loaded_model.embed_dims, loaded_model.patch_size) == (
        model.layers,
        model.embed_dims,
        model.patch_size,
    )
    assert tuple(np.broadcast_to(loaded_model.image_size, 2)) == (16, 24)
    images = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
    # The same parameters and architecture through the same compiled function: equal to the bit.
    apply = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    np.testing.assert_array_equal(
        apply(loaded_model, loaded, images), apply(model, variables, images)
    )
    assert_bitwise_equal(
        dynamixer_jax.loading.read_params(path), variables["params"]
    )  # fine-tuning's init_from reads it too
    with pytest.raises(DynaMixerError, match="no EMA copy"):
        dynamixer_jax.load(path, ema=True)


def test_damaged_files_are_one_line(tmp_path, capsys, variables):
    good = tmp_path / "good.safetensors"
    save_safetensors(flax_to_torch(variables), good)
    data = good.read_bytes()
    damaged = {
        "truncated.safetensors": data[: len(data) // 2],
        "header.safetensors": b"\xff" * 8 + data[8:],
        "text.safetensors": b"not a safetensors file",
        "empty.safetensors": b"",
    }
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        code, err = run_cli(capsys, tmp_path / name, tmp_path / f"{name}.msgpack")
        assert code == 2
        assert err.count("\n") == 1 and err.startswith(
            f"error: {tmp_path / name} is not a readable .safetensors file ("
        ), err
        assert not (tmp_path / f"{name}.msgpack").exists()
        with pytest.raises(ConversionError) as raised:
            dynamixer_jax.load(tmp_path / name)
        assert "\n" not in str(raised.value)
    code, err = run_cli(capsys, tmp_path / "missing.safetensors", tmp_path / "x.msgpack")
    assert (code, err) == (
        2,
        f"error: no .safetensors file at {tmp_path / 'missing.safetensors'}\n",
    )
    code, err = run_cli(capsys, "--ema", good, tmp_path / "x.msgpack")
    assert code == 2 and "no EMA copy" in err and err.count("\n") == 1
    # The right format, the wrong network: the key check of every other format.
    code, err = run_cli(capsys, "--model", "dynamixer_s", good, tmp_path / "x.msgpack")
    assert code == 2 and err.startswith("error: checkpoint does not fit this DynaMixer:"), err
    partial = tmp_path / "partial.safetensors"
    state_dict = flax_to_torch(variables)
    save_safetensors({k: v for k, v in state_dict.items() if k != "head.weight"}, partial)
    code, err = run_cli(capsys, partial, tmp_path / "y.msgpack")
    assert code == 2 and err.count("\n") == 1, err


@pytest.mark.torch
def test_pytorch_loads_it_strictly(tmp_path, capsys):
    torch = pytest.importorskip("torch")  # optional dependency, as for the .pth tests
    from safetensors.torch import load_file

    from dynamixer_jax.convert.torch_io import save_torch
    from dynamixer_torch import TorchDynaMixer, randomize_

    twin = randomize_(TorchDynaMixer(**MICRO_ARCH, num_classes=7, image_size=16), seed=0).eval()
    pth = tmp_path / "authors.pth"
    save_torch({k: v.numpy() for k, v in twin.state_dict().items()}, str(pth))
    # .pth -> .safetensors -> Orbax -> .safetensors
    for src, dst in [
        (pth, tmp_path / "a.safetensors"),
        (tmp_path / "a.safetensors", tmp_path / "orbax"),
        (tmp_path / "orbax", tmp_path / "b.safetensors"),
    ]:
        code, err = run_cli(capsys, src, dst)
        assert code == 0, err
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    fresh = TorchDynaMixer(**MICRO_ARCH, num_classes=7, image_size=16).eval()
    fresh.load_state_dict(load_file(tmp_path / "b.safetensors"), strict=True)
    loaded = fresh.state_dict()
    for key, value in twin.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # And our side reads the same network: logits as the twin's, to float32 rounding (the
    # parity tests' bound for this size).
    model, variables = dynamixer_jax.load(tmp_path / "b.safetensors")
    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(jax.jit(model.apply)(variables, images), expected, atol=1e-5)
