"""Checkpoint forms, files, the command line and mismatch messages of the converter."""

import argparse
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import torch

import dynamixer_jax
from dynamixer_jax import create_model
from dynamixer_jax.convert import architecture_from_state_dict, flax_to_torch, torch_to_flax
from dynamixer_jax.convert.__main__ import main as convert_main
from dynamixer_jax.convert.flax_io import load_flax
from dynamixer_jax.errors import ConversionError
from dynamixer_torch import TorchDynaMixer, randomize_

ARCH = dict(
    layers=(1, 2, 1, 1),
    embed_dims=(16, 32, 32, 32),
    transitions=(True, False, False, False),
    num_segments=(2, 4, 4, 4),
    reduced_dims=(2, 2, 2, 2),
    mlp_ratios=(3, 3, 3, 3),
)


@pytest.fixture(scope="module")
def torch_model():
    return randomize_(TorchDynaMixer(**ARCH, num_classes=7, image_size=28), seed=0).eval()


@pytest.fixture(scope="module")
def flax_model():
    return create_model("dynamixer_s", num_classes=7, image_size=28, **ARCH)


def assert_same_weights(variables, state_dict):
    back = flax_to_torch(variables)
    assert back.keys() == {k: None for k in state_dict}.keys()
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_architecture_is_read_off_the_shapes(torch_model, flax_model):
    arch = architecture_from_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
    assert arch == {
        **ARCH,
        "mlp_ratios": (3.0,) * 4,
        "patch_size": 7,
        "in_chans": 3,
        "image_size": 28,
        "num_classes": 7,
    }


def test_checkpoint_forms(torch_model):
    state_dict = torch_model.state_dict()
    ema = {k: v + 1 for k, v in state_dict.items()}
    assert_same_weights(torch_to_flax(state_dict), state_dict)
    assert_same_weights(torch_to_flax({k: v.numpy() for k, v in state_dict.items()}), state_dict)
    timm_style = {
        "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
        "state_dict_ema": {f"module.{k}": v for k, v in ema.items()},
        "epoch": 300,
    }
    assert_same_weights(torch_to_flax(timm_style), state_dict)
    assert_same_weights(torch_to_flax(timm_style, ema=True), ema)
    with pytest.raises(ConversionError, match="no 'state_dict_ema'"):
        torch_to_flax({"state_dict": state_dict}, ema=True)


def test_file_with_training_arguments(tmp_path, torch_model):
    """timm saves argparse arguments beside the weights: they load, silently, with no pickle
    allowed beyond them."""
    path = tmp_path / "checkpoint.pth.tar"
    arguments = argparse.Namespace(lr=2e-3, mean=None, crop_pct=(0.9,), model="dynamixer_s")
    checkpoint = {"state_dict": torch_model.state_dict(), "args": arguments, "epoch": 299}
    torch.save({**checkpoint, "metric": 82.7, "optimizer": {"state": {}, "param_groups": []}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        variables = torch_to_flax(str(path))
    assert_same_weights(variables, torch_model.state_dict())
    bare = tmp_path / "bare.pth"
    torch.save(torch_model.state_dict(), bare)
    assert_same_weights(torch_to_flax(bare), torch_model.state_dict())


class _RunsCode:
    """Unpickling this makes a directory: the trace of code run from a checkpoint file."""

    def __init__(self, trace):
        self.trace = str(trace)

    def __reduce__(self):
        return (os.mkdir, (self.trace,))


def test_a_file_that_pickles_code_is_refused_everywhere_and_runs_nothing(tmp_path, torch_model):
    trace, path = tmp_path / "code_ran", tmp_path / "hostile.pth.tar"
    torch.save({"state_dict": torch_model.state_dict(), "args": _RunsCode(trace)}, path)
    refusal = (
        rf"^{re.escape(str(path))} pickles Python objects besides weights \(posix.mkdir\); "
        "reading them could run code, so it was not read"
    )
    with pytest.raises(ConversionError, match=refusal):
        torch_to_flax(str(path))
    with pytest.raises(ConversionError, match=refusal):
        dynamixer_jax.load(str(path))
    assert convert_main([str(path), str(tmp_path / "out.safetensors")]) == 2
    assert not trace.exists() and not (tmp_path / "out.safetensors").exists()
    # The explicit opt-in for a trusted file: the file's code runs, the weights convert.
    assert convert_main(["--trust-pickle", str(path), str(tmp_path / "out.safetensors")]) == 0
    assert trace.is_dir()
    assert_same_weights(torch_to_flax(str(tmp_path / "out.safetensors")), torch_model.state_dict())


def test_every_mismatch_in_one_message(torch_model, flax_model):
    state_dict = dict(torch_model.state_dict())
    del state_dict["network.0.0.attn.mix_h.out.bias"]
    del state_dict["norm.weight"]
    state_dict["network.0.0.attn.extra.weight"] = torch.zeros(3)
    state_dict["head.weight"] = torch.zeros(9, 32)
    with pytest.raises(ConversionError) as info:
        torch_to_flax(state_dict, model=flax_model)
    message = str(info.value)
    assert "\n" not in message
    assert "missing keys: network.0.0.attn.mix_h.out.bias, norm.weight" in message
    assert "unexpected keys: network.0.0.attn.extra.weight" in message
    assert "mis-shaped keys: head.weight (checkpoint (9, 32), model (7, 32))" in message


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ConversionError, match="no checkpoint file at"):
        torch_to_flax(str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        torch_to_flax(str(corrupt))
    with pytest.raises(ConversionError, match="cannot read a DynaMixer architecture"):
        torch_to_flax({"head.weight": np.zeros((2, 2))})


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dynamixer_jax.convert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("flax_name", ["flax_checkpoint", "weights.msgpack"])
def test_command_line_round_trip(tmp_path, torch_model, flax_model, flax_name):
    source, flax_path, back = tmp_path / "in.pth.tar", tmp_path / flax_name, tmp_path / "back.pth"
    torch.save({"state_dict_ema": torch_model.state_dict(), "state_dict": {}}, source)
    result = run_cli("--ema", source, flax_path)
    assert result.returncode == 0, result.stderr
    variables = load_flax(str(flax_path))
    images = np.random.RandomState(0).randn(2, 28, 28, 3).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(jax.jit(flax_model.apply)(variables, images), expected, atol=1e-5)

    result = run_cli(flax_path, back)
    assert result.returncode == 0, result.stderr
    restored = torch.load(back, weights_only=True)
    fresh = TorchDynaMixer(**ARCH, num_classes=7, image_size=28)
    fresh.load_state_dict(restored, strict=True)
    for key, value in torch_model.state_dict().items():
        assert torch.equal(restored[key], value), key


def run_in_process(capfd, *args):
    """The command's ``main`` called here (``python -m dynamixer_jax.convert`` exits with what it
    returns): its exit code and what it printed, as ``run_cli`` gives them."""
    capfd.readouterr()
    code = convert_main(list(map(str, args)))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_command_line_errors_are_one_line(tmp_path, torch_model, capfd):
    # In-process: the round trip above runs the command as a process of its own.
    source = tmp_path / "in.pth"
    torch.save(torch_model.state_dict(), source)
    result = run_in_process(capfd, "--model", "dynamixer_s", source, tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: checkpoint does not fit this DynaMixer: missing keys:"
    )
    # Every key of S is missing from the tiny model's file: the line names five of each kind and
    # counts the rest (it used to list them all, 25 KB).
    assert len(lines[0]) < 1500 and re.search(r"and \d+ more", lines[0]), lines[0]
    result = run_in_process(capfd, source, tmp_path / "out.weird")
    assert result.returncode == 2 and result.stderr.startswith(
        f"error: cannot tell which format to write from the suffix of {tmp_path / 'out.weird'}"
    )
    assert not (tmp_path / "out.weird").exists()
    result = run_in_process(capfd, tmp_path / "nowhere", tmp_path / "x.pth")
    assert (
        result.returncode == 2
        and result.stderr.strip()
        == f"error: no Flax checkpoint at {tmp_path / 'nowhere'} "
        "(expected an Orbax directory or a .msgpack file)"
    )
