"""What users hand us, in one process: workdir paths of any spelling, datasets and configs that
would train quietly wrong, a resume with another config, damaged files we read, and errors
(out of memory, broken config files) as one line."""

import json
import logging
import os

import jax
import numpy as np
import optax
import pytest
from conftest import MICRO_ARCH

import dynamixer_jax
from dynamixer_jax.model.init import init_variables
from dynamixer_jax.model.variants import create_model
from dynamixer_jax.train import checkpoints as checkpoints_module
from dynamixer_jax.train.checkpoints import Checkpoints, array_damage
from dynamixer_jax.train.state import create_train_state

# ---- workdir paths: any name a filesystem accepts


def _micro_state():
    model = create_model("dynamixer_s", num_classes=3, image_size=16, **MICRO_ARCH)
    params = jax.device_get(init_variables(model, jax.random.key(0))["params"])
    return model, create_train_state(params, optax.adamw(1e-3), seed=0, use_ema=False)


def _abstract(state):
    return jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), state)


def _config_json(workdir):
    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in MICRO_ARCH.items()}
    config = {"model": "dynamixer_s", "image_size": 16, "model_overrides": overrides}
    (workdir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["run#1", "what?", "with space", "100%25done", "ünï漢字", "-dash"])
def test_any_workdir_path_keeps_its_checkpoints(tmp_path, name):
    model, state = _micro_state()
    workdir = tmp_path / name
    directory = str(workdir / "checkpoints")
    with Checkpoints(directory, asynchronous=False) as checkpoints:
        checkpoints.save(4, state, {"seed": 0})
    assert array_damage(os.path.join(directory, "4")) is None
    with Checkpoints(directory) as checkpoints:  # what a resume does
        found = checkpoints.restore_newest(lambda step: checkpoints.restore(step, _abstract(state)))
        assert found is not None and found[0] == 4 and not checkpoints.skipped
        checkpoints.save(8, state, {"seed": 0})  # and the next save renames nothing
    assert sorted(os.listdir(directory)) == ["4", "8"]
    _config_json(workdir)
    loaded, variables = dynamixer_jax.load(workdir)
    assert loaded.num_classes == 3
    np.testing.assert_array_equal(variables["params"]["head"]["bias"], state.params["head"]["bias"])


def test_a_check_whose_own_machinery_fails_costs_no_checkpoint(tmp_path, monkeypatch, caplog):
    _, state = _micro_state()
    with Checkpoints(str(tmp_path), asynchronous=False) as checkpoints:
        checkpoints.save(2, state, {"seed": 0})
    import tensorstore

    class Broken:
        @staticmethod
        def open(*args, **kwargs):
            raise ValueError("a TensorStore that cannot open anything")

    monkeypatch.setattr(tensorstore, "KvStore", Broken)
    with caplog.at_level(logging.WARNING, logger=checkpoints_module.__name__):
        assert array_damage(str(tmp_path / "2")) is None  # "cannot check", not "damaged"
    assert "cannot check the arrays" in caplog.text
    monkeypatch.undo()
    with Checkpoints(str(tmp_path)) as checkpoints:
        found = checkpoints.restore_newest(lambda step: checkpoints.restore(step, _abstract(state)))
    assert found is not None and found[0] == 2
    assert sorted(os.listdir(tmp_path)) == ["2"]
