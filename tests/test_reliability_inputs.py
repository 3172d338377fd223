"""What users hand us, in one process: workdir paths of any spelling, datasets and configs that
would train quietly wrong, a resume with another config, damaged files we read, and errors
(out of memory, broken config files) as one line."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import optax
import pytest
from conftest import MICRO_ARCH

import dynamixer_jax
from dynamixer_jax import checkpoint_reading as checkpoints_module
from dynamixer_jax.checkpoint_reading import array_damage
from dynamixer_jax.model.variants import create_model, init_variables
from dynamixer_jax.train.checkpoints import Checkpoints
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


@pytest.mark.parametrize("name", ["run#1", "what?", "-100%25 dönë 漢字"])
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


# ---- runs that would train quietly wrong: one line before anything compiles


def _folder_dataset(root, train_classes, val_classes, images=3):
    from PIL import Image

    pixels = np.zeros((8, 8, 3), np.uint8)
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for index in range(images):
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return str(root)


def _quickstart(**overrides):
    from conftest import REPO

    from dynamixer_jax.train import load_config

    return load_config(str(REPO / "configs" / "quickstart.py"), **overrides)


def _compiles(monkeypatch):
    """Record every train step made: a run that fails before compiling makes none."""
    from dynamixer_jax.train import loop

    made = []
    real = loop.make_train_step
    monkeypatch.setattr(loop, "make_train_step", lambda *a, **k: made.append(1) or real(*a, **k))
    return made


def _one_line_error(config, workdir, error_type, monkeypatch):
    from dynamixer_jax.train import train_and_evaluate

    made = _compiles(monkeypatch)
    with pytest.raises(error_type) as error:
        train_and_evaluate(config, str(workdir))
    assert "\n" not in str(error.value) and not made
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
    return str(error.value)


def test_a_head_smaller_than_the_datasets_labels_is_one_line(
    tmp_path, digits_data_dir, monkeypatch
):
    from dynamixer_jax.errors import ConfigError

    config = _quickstart(data_dir=digits_data_dir, num_classes=5)
    message = _one_line_error(config, tmp_path / "w", ConfigError, monkeypatch)
    assert "num_classes 5 is smaller than the 10 classes" in message
    assert "--config.num_classes=10" in message


def test_labels_outside_the_head_stop_at_the_first_batch():
    from dynamixer_jax.errors import DataError
    from dynamixer_jax.train.loop import check_labels

    batch = {"label": np.array([0, 3, 9, 0]), "mask": np.array([True, True, True, False])}
    check_labels(batch, 10, 0)
    with pytest.raises(DataError, match="label 9 in the batch of step 1 is outside the model's 5"):
        check_labels(batch, 5, 0)
    check_labels({"label": np.array([0, 9]), "mask": np.array([True, False])}, 5, 0)  # padding
    check_labels(batch, 10, 0, agree=True)  # the extremes of every process's labels
    with pytest.raises(DataError, match="label -1 in the batch of step 8"):
        check_labels({"label": np.array([-1, 2])}, 5, 7, agree=True)


def test_a_folder_dataset_of_one_class_is_one_line(tmp_path, monkeypatch):
    from dynamixer_jax.errors import DataError

    root = _folder_dataset(tmp_path / "data", ["cat"], ["cat"])
    config = _quickstart(dataset=root, eval_split="val", batch_size=2)
    message = _one_line_error(config, tmp_path / "w", DataError, monkeypatch)
    assert "has 1 class" in message


def test_validation_classes_the_training_split_lacks_are_one_line(tmp_path):
    from dynamixer_jax.data.sources import FolderSource
    from dynamixer_jax.errors import DataError

    root = _folder_dataset(tmp_path / "data", ["A", "B", "c"], ["A", "b", "c", "d"])
    source = FolderSource(root)
    assert source.num_examples("train") == 9
    with pytest.raises(DataError) as error:
        source.num_examples("val")
    message = str(error.value)
    assert "'b' (train/ has 'B'), 'd'" in message and "6 images would be left out" in message
    (tmp_path / "data" / "val" / "b").rename(tmp_path / "data" / "val" / "B")
    (tmp_path / "data" / "val" / "d").rename(
        tmp_path / "data" / "val" / ".d"
    )  # hidden: not a class
    assert FolderSource(root).num_examples("val") == 9


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_an_infinite_learning_rate_is_one_line(value):
    from dynamixer_jax.errors import ConfigError
    from dynamixer_jax.train.plan import make_plan

    with pytest.raises(ConfigError, match="learning_rate must be positive and finite"):
        make_plan(_quickstart(learning_rate=value))
    with pytest.raises(ConfigError, match="weight_decay must be a finite number"):
        make_plan(_quickstart(weight_decay=value))


# ---- a resume with another config keeps the record


def test_every_start_keeps_its_config_and_a_changed_resume_warns(tmp_path, caplog):
    from dynamixer_jax.train import run_record

    def config(learning_rate, layers=(1, 1)):
        return json.dumps({"learning_rate": learning_rate, "model_overrides": {"layers": layers}})

    (tmp_path / "config.json").write_text(config(0.1))  # a workdir from before the history
    with caplog.at_level(logging.WARNING, logger=run_record.__name__):
        run_record.write_config(config(0.1), str(tmp_path), 0)
        run_record.write_config(config(0.1), str(tmp_path), 40)  # a plain resume: nothing new
        assert not caplog.records
        run_record.write_config(config(0.2, [1, 2]), str(tmp_path), 80)
    (record,) = caplog.records
    assert "resuming at step 80 with config fields changed" in record.getMessage()
    assert "learning_rate 0.1 -> 0.2" in record.getMessage()
    assert "model_overrides.layers [1, 1] -> [1, 2]" in record.getMessage()
    history = tmp_path / "config_history"
    assert sorted(os.listdir(history)) == ["0000-earlier.json", "0001-step80.json"]
    assert json.loads((history / "0000-earlier.json").read_text())["learning_rate"] == 0.1
    assert json.loads((history / "0001-step80.json").read_text())["learning_rate"] == 0.2
    assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 0.2


def test_load_reads_the_architecture_from_the_latest_config(tmp_path):
    from dynamixer_jax.train import run_record

    model, state = _micro_state()
    with Checkpoints(str(tmp_path / "checkpoints"), asynchronous=False) as checkpoints:
        checkpoints.save(4, state, {"seed": 0})
    _config_json(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    run_record.write_config(json.dumps({**saved, "learning_rate": 5.0}), str(tmp_path), 4)
    loaded, _ = dynamixer_jax.load(tmp_path)
    assert loaded.embed_dims == model.embed_dims and loaded.patch_size == 4


# ---- damaged files we read


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory):
    """A workdir with one checkpoint (no config.json)."""
    workdir = tmp_path_factory.mktemp("saved")
    _, state = _micro_state()
    with Checkpoints(str(workdir / "checkpoints"), asynchronous=False) as checkpoints:
        checkpoints.save(4, state, {"seed": 0})
    return workdir


def test_damaged_metrics_lines_neither_crash_a_resume_nor_get_lost(tmp_path, caplog):
    from dynamixer_jax.train.reporting import METRICS_FILE, MetricsLog, read_metrics

    path = tmp_path / METRICS_FILE
    path.write_bytes(
        b'{"step": 1, "train_loss": 2.0}\n'
        b"\xff\xfe\x00garbage\n"
        b"[1, 2]\n"
        b'{"step": "two"}\n'
        b'{"step": 2, "train_loss": 1.5}\n'
        b'{"step": 3, "train_loss": 1.0}\n'
        b'{"step": 4, "train_'
    )
    assert [record["step"] for record in read_metrics(str(tmp_path))] == [1, 2, 3]
    with caplog.at_level(logging.WARNING):
        metrics_log = MetricsLog(str(tmp_path), start_step=2)  # what a resume at step 2 does
    metrics_log.close()
    assert [record["step"] for record in read_metrics(str(tmp_path))] == [1, 2]
    aside = (tmp_path / (METRICS_FILE + ".unreadable")).read_bytes()
    assert b"\xff\xfe\x00garbage" in aside and b'{"step": "two"}' in aside
    assert "4 line(s)" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[]", "is not a run's config (a JSON object, not list)"),
        (b"null", "is not a run's config (a JSON object, not NoneType)"),
        (b'{"model": "dynamixer_s"}', "lacks the field(s) image_size, model_overrides"),
        (b'{"image_size": 16}', "lacks the field model"),
        (b'{"model": "dynamixer_s", "image_size": 16, "model_overrides": [1]}', "not a JSON"),
        (b"\xff\xfe{", "cannot be read"),
        (b'{"model": "dynamixer_s", "image_size": "big", "model_overrides": {}}', "cannot build"),
    ],
)
def test_a_damaged_config_json_is_one_line_from_load(saved_workdir, tmp_path, content, message):
    from dynamixer_jax.errors import DynaMixerError

    shutil.copytree(saved_workdir, tmp_path, dirs_exist_ok=True)
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(DynaMixerError) as error:
        dynamixer_jax.load(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "config_history" in str(error.value) or "cannot build" in str(error.value)


# ---- messages that help


def test_out_of_memory_is_one_line_with_the_compilers_figure_and_what_fits(
    tmp_path, digits_data_dir, monkeypatch
):
    """XLA's RESOURCE_EXHAUSTED, as a step that does not fit raises it, on the first step."""
    from dynamixer_jax.errors import OutOfMemory
    from dynamixer_jax.train import loop, memory, train_and_evaluate

    class DoesNotFit:
        def __init__(self, step):
            self.step = step

        def __call__(self, state, batch):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 98765432100 bytes."
            )

        def lower(self, *args):
            return self.step.lower(*args)

    real = loop.make_train_step
    monkeypatch.setattr(loop, "make_train_step", lambda *a, **k: DoesNotFit(real(*a, **k)))
    needed = []
    real_needed = memory.needed_bytes
    monkeypatch.setattr(
        memory, "needed_bytes", lambda *a: needed.append(real_needed(*a)) or needed[0]
    )
    small = {  # a step quick to compile: small, no random erasing, mixup or stochastic depth
        "model_overrides.layers": (1, 1),
        "model_overrides.embed_dims": (16, 32),
        "augment.random_erase_prob": 0.0,
        "mixup.mixup_alpha": 0.0,
        "drop_path_rate": 0.0,
    }
    config = _quickstart(
        data_dir=digits_data_dir, num_train_steps=2, batch_size=32, remat="none", **small
    )
    with pytest.raises(OutOfMemory) as error:
        train_and_evaluate(config, str(tmp_path))
    message = str(error.value)
    devices = jax.device_count()
    per_device = 32 // devices
    assert "\n" not in message and message.startswith("out of memory on ")
    assert (
        f"{per_device} images per device (batch_size 32 over {devices} device(s), image_size 32)"
        in message
    )
    assert needed[0] > 2**20 and "by the compiler's memory analysis" in message
    assert "--config.batch_size (e.g. 16)" in message
    assert (
        f"--config.grad_accum_steps=2 (the same batch in 2 passes of {per_device // 2}" in message
    )
    assert "--config.remat=full" in message
    assert not os.listdir(tmp_path / "checkpoints")


def test_an_error_that_is_not_out_of_memory_is_not_disguised():
    from dynamixer_jax.train import memory

    assert memory.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
    assert not memory.is_out_of_memory(ValueError("INVALID_ARGUMENT: shapes differ"))


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "def get_config():\n    config = {\n    return config\n",
            "bad.py:2: '{' was never closed",
        ),
        (
            "def get_config():\n    return {'model': 'x'}\n",
            "bad.py:1: get_config() returned a dict",
        ),
        ("import no_such_module_here\n", "bad.py:1: ModuleNotFoundError: No module named"),
        (
            "def get_config():\n    x = 1\n    return x / 0\n",
            "bad.py:3: ZeroDivisionError: division by zero (in get_config())",
        ),
    ],
)
def test_a_broken_config_file_is_one_line_naming_the_file_and_line(tmp_path, source, message):
    from dynamixer_jax.errors import ConfigError
    from dynamixer_jax.train import load_config

    (tmp_path / "bad.py").write_text(source)
    with pytest.raises(ConfigError) as error:
        load_config(str(tmp_path / "bad.py"))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_evaluation_out_of_memory_is_one_line_too():
    from dynamixer_jax.errors import OutOfMemory
    from dynamixer_jax.train import parallel
    from dynamixer_jax.train.evaluation import evaluate_params
    from dynamixer_jax.train.steps import make_eval_step

    model, state = _micro_state()
    mesh = parallel.make_mesh()
    real = make_eval_step(model, mesh)

    class DoesNotFit:
        def __call__(self, params_by_name, batch):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory")

        def lower(self, *args):
            return real.lower(*args)

    class EvalData:
        def batches(self):
            size = 2 * jax.device_count()
            yield {
                "image": np.zeros((size, 16, 16, 3), np.uint8),
                "label": np.zeros(size, np.int32),
                "mask": np.ones(size, bool),
            }

    with pytest.raises(OutOfMemory) as error:
        evaluate_params(DoesNotFit(), {"raw": state.params}, EvalData(), mesh)
    message = str(error.value)
    assert "\n" not in message and "the evaluation step at 2 images per device" in message
    assert "by the compiler's memory analysis" in message
    assert "--config.eval_batch_size" in message
