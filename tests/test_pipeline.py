"""Tests of the tf.data input pipeline (dynamixer_jax.data.pipeline and sources).

On the built-in digits (real data, prepared by the ``digits_data_dir`` fixture), on folder
datasets the tests write, and on ``tfds.testing.mock_data('imagenet2012')``. Under mock data
``info.splits`` is empty, so nothing here takes a step count from it.
"""

import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import REPO
from PIL import Image

from dynamixer_jax.data import recipe
from dynamixer_jax.data.damaged import fill_gaps
from dynamixer_jax.data.device_augment import IMAGENET_MEAN, IMAGENET_STD, normalize
from dynamixer_jax.data.pipeline import EvalData, TrainAugment, TrainData
from dynamixer_jax.data.sources import open_source
from dynamixer_jax.errors import ConfigError, DataError
from dynamixer_jax.train import load_config

NO_AUGMENT = TrainAugment(scale=None, hflip=0, rand_augment="", color_jitter=0, random_erase_prob=0)
FULL_RECIPE = TrainAugment()


def _train(data_dir, **kwargs):
    args = dict(
        global_batch_size=32,
        image_size=16,
        seed=3,
        augment=FULL_RECIPE,
        data_dir=data_dir,
        process_index=0,
        process_count=1,
        shuffle_buffer_size=2000,
    )
    dataset = kwargs.pop("dataset", "sklearn_digits")
    args.update(kwargs)
    return TrainData(dataset, **args)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------- the built-in dataset


def test_digits_is_prepared_with_its_splits(digits_data_dir):
    source = open_source("sklearn_digits", digits_data_dir)
    assert source.num_classes == 10
    assert source.num_examples("train") == 1437 and source.num_examples("test") == 360
    image = next(iter(source.builder.as_dataset(split="test")))["image"]
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8


def test_train_batches_shapes_dtypes_and_ranges(digits_data_dir):
    data = _train(digits_data_dir, augment=TrainAugment(random_erase_prob=0))
    assert data.steps_per_epoch == 1437 // 32 and data.num_classes == 10
    batch = next(data.batches())
    assert set(batch) == {"image", "label", "mask", "id"}
    assert batch["image"].shape == (32, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert batch["mask"].dtype == np.bool_ and batch["mask"].all()
    assert set(batch["label"]) <= set(range(10)) and len(set(batch["label"])) > 3
    # The images use most of 0..255; the train step normalises them on device.
    image = np.asarray(normalize(batch["image"]))
    # Normalised with the ImageNet mean/std: 0..255 maps into [-2.118, 2.640] (no erasing).
    assert -2.12 < image.min() < -1.5 and 1.5 < image.max() < 2.641
    assert np.isfinite(image).all()


RESTART_STEPS = (5, 44, 46)  # mid-epoch, the last step, next epoch


@pytest.fixture(scope="module")
def uninterrupted_batches(digits_data_dir):
    """The first batches of one uninterrupted full-recipe stream (seed 3), read once for the
    tests below (each restart then reads only its own two batches)."""
    data = _train(digits_data_dir)
    assert data.steps_per_epoch == 44
    return _take(data.batches(), max(RESTART_STEPS) + 2)


def test_same_seed_same_batches_other_seed_other_batches(digits_data_dir, uninterrupted_batches):
    first = uninterrupted_batches[:3]
    _assert_same_batches(first, _take(_train(digits_data_dir).batches(), 3))
    other = next(_train(digits_data_dir, seed=4).batches())
    assert not np.array_equal(other["id"], first[0]["id"])


@pytest.mark.parametrize("start_step", RESTART_STEPS)
def test_restart_at_step_k_sees_the_same_batches(
    digits_data_dir, uninterrupted_batches, start_step
):
    uninterrupted = uninterrupted_batches[start_step : start_step + 2]
    _assert_same_batches(uninterrupted, _take(_train(digits_data_dir).batches(start_step), 2))


def test_an_epoch_visits_distinct_examples_and_epochs_differ(digits_data_dir):
    data = _train(digits_data_dir, augment=NO_AUGMENT, global_batch_size=64)
    steps = data.steps_per_epoch
    batches = _take(data.batches(), steps + 1)
    ids = np.concatenate([batch["id"] for batch in batches[:steps]])
    assert len(set(ids)) == len(ids) == steps * 64
    assert not np.array_equal(batches[0]["id"], batches[steps]["id"])


def test_two_processes_read_disjoint_parts_of_the_train_split(digits_data_dir):
    shares = [
        _train(
            digits_data_dir,
            augment=NO_AUGMENT,
            global_batch_size=64,
            process_index=index,
            process_count=2,
        )
        for index in range(2)
    ]
    assert shares[0].steps_per_epoch == shares[1].steps_per_epoch == 718 // 32
    ids = [
        np.concatenate([b["id"] for b in _take(share.batches(), share.steps_per_epoch)])
        for share in shares
    ]
    assert len(set(ids[0])) == len(ids[0]) and not set(ids[0]) & set(ids[1])
    assert len(ids[0]) == len(ids[1]) == 22 * 32


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_the_split_exactly_once(digits_data_dir, process_count):
    shares = [
        EvalData(
            "sklearn_digits",
            data_dir=digits_data_dir,
            split="test",
            global_batch_size=4 * 28,
            image_size=16,
            crop_fraction=1.0,
            process_index=index,
            process_count=process_count,
        )
        for index in range(process_count)
    ]
    seen = []
    for share in shares:
        batches = list(share.batches())
        assert len(batches) == share.num_batches == shares[0].num_batches
        for batch in batches:
            assert batch["image"].shape == (4 * 28 // process_count, 16, 16, 3)
            assert not batch["image"][~batch["mask"]].any()  # padding is blank
            seen.extend(batch["id"][batch["mask"]])
            assert (batch["id"][~batch["mask"]] == b"").all()
    assert len(seen) == len(set(seen)) == 360


@pytest.mark.parametrize("threads", [None, 3])
def test_pipelines_run_fixed_parallelism_without_the_autotuner(digits_data_dir, threads):
    # Destroying an iterator can wait up to a minute for tf.data's autotuner thread (see
    # pipeline._options): each epoch and each evaluation would stall the training loop.
    evaluation = EvalData(
        "sklearn_digits",
        data_dir=digits_data_dir,
        split="test",
        global_batch_size=32,
        image_size=16,
        threads=threads,
    )
    train = _train(digits_data_dir, threads=threads)
    for dataset, _, _ in (train.epoch_dataset(1, start_step=2), evaluation.dataset()):
        options = dataset.options()
        assert options.autotune.enabled is False and options.deterministic
        assert options.autotune.initial_parallelism == (threads or os.cpu_count())
        assert options.threading.private_threadpool_size == threads


def test_eval_preprocessing_is_a_centre_crop_of_the_stored_image(digits_data_dir):
    data = EvalData(
        "sklearn_digits",
        data_dir=digits_data_dir,
        split="test",
        global_batch_size=8,
        image_size=32,
        crop_fraction=1.0,
        process_index=0,
        process_count=1,
    )
    batch = next(data.batches())
    stored = {
        example["tfds_id"]: example["image"]
        for example in tfds.as_numpy(
            data.source.builder.as_dataset(
                split="test", read_config=tfds.ReadConfig(add_tfds_id=True)
            )
        )
    }
    assert batch["image"].dtype == np.uint8  # the eval step normalises on device
    for image, name in zip(batch["image"], batch["id"]):
        np.testing.assert_array_equal(image, stored[name])


def _numbered(numbers, size=2):
    """A batch of survivors as ``decode_in_order`` gives it: example n's image is all n."""
    numbers = np.array(numbers, np.int64)
    return {
        "number": numbers,
        "image": np.ones((len(numbers), size, size, 3), np.uint8)
        * numbers[:, None, None, None].astype(np.uint8),
        "mask": np.ones(len(numbers), bool),
        "label": numbers.astype(np.int32),
        "id": np.array([b"%d" % n for n in numbers], object),
        "real": np.ones(len(numbers), bool),
    }


@pytest.mark.parametrize(
    "survivors",
    [
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]],  # nothing failed
        [[0, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]],  # 1 failed
        [[0, 1, 2, 3], [8, 9, 10, 11]],  # a whole batch failed
        [[1, 2, 3, 5], [6, 7]],  # the first, 4 and the end failed
        [],  # everything failed
    ],
)
def test_fill_gaps_puts_blanks_at_the_failed_places(survivors):
    ids = np.array([b"%d" % n for n in range(12)], object)
    batches = list(fill_gaps([_numbered(n) for n in survivors], 12, 4, 2, ids))
    survived = set(np.concatenate([np.array(n, int) for n in survivors] + [np.zeros(0, int)]))
    assert len(batches) == 3
    for step, batch in enumerate(batches):
        assert set(batch) == {"image", "mask", "label", "id", "real"}
        numbers = np.arange(4 * step, 4 * step + 4)
        assert batch["image"].shape == (4, 2, 2, 3) and batch["image"].dtype == np.uint8
        assert list(batch["id"]) == list(ids[numbers]) and batch["real"].all()
        for row, number in enumerate(numbers):
            ok = number in survived
            assert batch["mask"][row] == ok
            assert (batch["image"][row] == (number if ok else 0)).all()
            assert batch["label"][row] == (number if ok else 0)


# ---------------------------------------------------------------- folder datasets


def _jpeg(array, mode=None, quality=90):
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_folder(root, classes=("cat", "ant", "bee"), per_class=6, awkward=False):
    """A small ImageNet-style folder; with ``awkward``, also the files real datasets hold."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for index, name in enumerate(classes):
            directory = os.path.join(root, split, name)
            os.makedirs(directory)
            for number in range(count):
                shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3)
                array = np.full(shape, 60 * index, np.uint8) + rng.integers(
                    0, 40, shape, dtype=np.uint8
                )
                with open(os.path.join(directory, f"{name}_{number}.JPEG"), "wb") as file:
                    file.write(_jpeg(array))
    bad = []
    if awkward:
        directory = os.path.join(root, "train", classes[0])
        array = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        files = {
            "grey.JPEG": _jpeg(array, "L"),
            "cmyk.JPEG": _jpeg(array, "CMYK"),
            "png_named.JPEG": _png(array),
            "corrupt.JPEG": rng.bytes(500),
            "truncated.JPEG": _jpeg(array)[:200],
            "notes.txt": b"not an image",
        }
        for name, content in files.items():
            with open(os.path.join(directory, name), "wb") as file:
                file.write(content)
        bad = [
            os.path.join("train", classes[0], name) for name in ("corrupt.JPEG", "truncated.JPEG")
        ]
    return bad


def test_folder_classes_are_sorted_and_splits_found(tmp_path):
    _write_folder(str(tmp_path))
    source = open_source(str(tmp_path))
    assert source.classes == ["ant", "bee", "cat"] and source.num_classes == 3
    files = source.files("train")
    assert [os.path.basename(os.path.dirname(p)) for p in files.paths[::6]] == source.classes
    assert list(files.labels) == [0] * 6 + [1] * 6 + [2] * 6
    assert source.num_examples("validation") == 6  # 'validation' finds val/


def test_folder_batches_do_not_depend_on_the_process_count(tmp_path):
    _write_folder(str(tmp_path), per_class=8)
    args = dict(global_batch_size=8, augment=FULL_RECIPE, image_size=16)
    whole = _take(_train(None, dataset=str(tmp_path), **args).batches(), 3)
    halves = [
        _take(
            _train(
                None, dataset=str(tmp_path), process_index=index, process_count=2, **args
            ).batches(),
            3,
        )
        for index in range(2)
    ]
    for step, batch in enumerate(whole):
        for key in batch:
            np.testing.assert_array_equal(
                batch[key], np.concatenate([halves[0][step][key], halves[1][step][key]])
            )


def test_folder_with_awkward_files_trains_on_and_counts_the_bad_ones(tmp_path, caplog):
    bad = _write_folder(str(tmp_path), awkward=True)
    data = _train(None, dataset=str(tmp_path), global_batch_size=23, image_size=16)
    assert data.num_examples == 23  # 18 good + grey, CMYK, PNG-named, corrupt, truncated
    with caplog.at_level(logging.WARNING):
        batch = next(data.batches())
    masked = sorted(name.decode() for name in batch["id"][~batch["mask"]])
    assert masked == sorted(bad)
    assert np.isfinite(batch["image"]).all()
    assert not batch["image"][~batch["mask"]].any()
    assert data.skipped.count == 2
    assert "skipped 2 undecodable" in caplog.text and "corrupt.JPEG" in caplog.text
    # Grey, CMYK and PNG-in-a-.JPEG files decode to RGB and are used.
    by_name = dict(zip(batch["id"], batch["mask"]))
    for name in ("grey", "cmyk", "png_named"):
        assert by_name[f"train/cat/{name}.JPEG".encode()]


def test_folder_eval_with_a_corrupt_file_masks_it(tmp_path):
    _write_folder(str(tmp_path))
    with open(os.path.join(tmp_path, "val", "ant", "broken.jpg"), "wb") as file:
        file.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    data = EvalData(
        str(tmp_path),
        global_batch_size=4,
        image_size=16,
        split="validation",
        process_index=0,
        process_count=1,
    )
    batches = list(data.batches())
    ids = np.concatenate([b["id"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert len(batches) == 2 and data.num_examples == 7
    assert sorted(ids[mask]) == sorted(n for n in ids if n and not n.endswith(b"broken.jpg"))
    assert data.skipped.count == 1


# ---------------------------------------------------------------- TFDS datasets and errors


def test_mock_imagenet_full_recipe_at_224():
    with tfds.testing.mock_data(num_examples=12):
        data = TrainData(
            "imagenet2012",
            global_batch_size=4,
            image_size=224,
            seed=42,
            process_index=0,
            process_count=1,
            data_dir="/nonexistent_tfds",
        )
        assert data.num_examples == 12 and data.steps_per_epoch == 3  # counted, not from info
        assert data.num_classes == 1000
        batches = _take(data.batches(), 4)  # crosses into the second epoch
        for batch in batches:
            assert batch["image"].shape == (4, 224, 224, 3) and batch["mask"].all()
            assert np.isfinite(batch["image"]).all() and (0 <= batch["label"]).all()
            assert (batch["label"] < 1000).all()
        evaluation = EvalData(
            "imagenet2012",
            global_batch_size=5,
            image_size=224,
            process_index=0,
            process_count=1,
            data_dir="/nonexistent_tfds",
        )
        masks = [b["mask"] for b in evaluation.batches()]
        assert len(masks) == 3 and sum(m.sum() for m in masks) == 12


def test_unprepared_imagenet_says_where_the_tars_go(tmp_path):
    data_dir = str(tmp_path)
    with pytest.raises(DataError) as error:
        TrainData(
            "imagenet2012",
            global_batch_size=8,
            image_size=224,
            data_dir=data_dir,
            process_index=0,
            process_count=1,
        ).batches().__next__()
    message = str(error.value)
    assert "\n" not in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert f"tfds build imagenet2012 --data_dir={data_dir}" in message
    assert os.path.join(data_dir, "downloads", "manual") in message


def test_unprepared_downloadable_dataset_gives_the_build_command(tmp_path):
    with pytest.raises(DataError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
        open_source("cifar10", str(tmp_path)).num_examples("train")


@pytest.mark.parametrize(
    "dataset, match",
    [
        ("no_such_dataset_x", "unknown dataset 'no_such_dataset_x'"),
        ("/no/such/folder", "no such directory"),
    ],
)
def test_unknown_dataset_is_one_clear_line(dataset, match):
    with pytest.raises(DataError, match=match):
        open_source(dataset)


def test_bad_settings_are_one_clear_line(digits_data_dir):
    with pytest.raises(DataError, match="no split 'nope'"):
        _train(digits_data_dir, split="nope")
    with pytest.raises(DataError, match="multiple of the number of processes"):
        _train(digits_data_dir, global_batch_size=33, process_count=2)
    with pytest.raises(DataError, match="fewer than one global batch"):
        _train(digits_data_dir, global_batch_size=2048)
    with pytest.raises(ConfigError, match="interpolation"):
        TrainAugment(interpolation="nearest")
    with pytest.raises(ConfigError, match="rand_augment"):
        TrainAugment(rand_augment="rand-x9")
    with pytest.raises(ConfigError, match="random_erase_mode"):
        TrainAugment(random_erase_mode="noise")
    with pytest.raises(ConfigError, match="random_erase_count"):
        TrainAugment(random_erase_count=0)


# ---------------------------------------------------------------- the augmentation recipe


def test_recipe_imports_without_tensorflow():
    code = (
        "import sys, dynamixer_jax.data.recipe; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'tensorflow'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.stdout.strip() == "[]"


def test_default_config_declares_the_recipe_once():
    config = load_config(str(REPO / "configs" / "default.py"))
    assert config.augment.to_dict() == recipe.config_fields()
    assert recipe.config_fields()["scale"] == (0.08, 1.0)
    assert "mean" not in config.augment and "std" not in config.augment
    built = TrainAugment.from_fields(config.augment, mean=config.mean, std=config.std)
    assert built == TrainAugment()
    assert built.on_device().erase_prob == 0.25


def test_recipe_from_fields_takes_lists_as_tuples():
    built = TrainAugment.from_fields(
        {"scale": [0.5, 1.0], "ratio": [1.0, 1.0]}, mean=[0.5, 0.5, 0.5], std=(0.25, 0.25, 0.25)
    )
    assert built.scale == (0.5, 1.0) and built.ratio == (1.0, 1.0)
    assert built.mean == (0.5, 0.5, 0.5) and built.on_device().std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"hflip": 1.5}, "augment.hflip must be a probability in [0, 1], not 1.5"),
        ({"scale": (0.5, 0.1)}, "augment.scale must be None or (low, high)"),
        ({"scale": (None,)}, "augment.scale"),
        ({"ratio": (0.0, 1.0)}, "augment.ratio"),
        ({"interpolation": "nearest"}, "augment.interpolation must be random | bilinear | bicubic"),
        ({"rand_augment": "rand-x9"}, "augment.rand_augment: unsupported key 'x'"),
        ({"color_jitter": -0.1}, "augment.color_jitter"),
        ({"random_erase_prob": 2.0}, "augment.random_erase_prob"),
        ({"random_erase_mode": "noise"}, "augment.random_erase_mode) must be pixel | rand | const"),
        ({"random_erase_count": 0}, "augment.random_erase_count"),
        ({"hflipp": 0.5}, "augment has unknown field(s) ['hflipp']; known: color_jitter, hflip"),
    ],
)
def test_a_bad_recipe_field_is_one_config_error_line(fields, match):
    with pytest.raises(ConfigError) as error:
        TrainAugment.from_fields(fields, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert match in str(error.value) and "\n" not in str(error.value)


def test_a_bad_std_is_one_config_error_line():
    with pytest.raises(ConfigError, match="std must be 3 positive numbers, not"):
        TrainAugment.from_fields({}, mean=IMAGENET_MEAN, std=(0.2, 0.0, 0.2))
