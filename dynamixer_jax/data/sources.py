"""Where images come from: a TFDS dataset by name, or an ImageNet-style folder.

Both kinds of source hand the pipeline records ``{"image": encoded bytes (or "path": a file to
read), "label": int64, "id": string}``, in an order that is a pure function of (seed, epoch,
process), and can start an epoch part-way through without decoding what comes before.

* :class:`TfdsSource` reads a prepared TFDS dataset (``imagenet2012``, ``cifar10``, the built-in
  ``sklearn_digits``, ...) from ``data_dir`` (local or ``gs://``). Each JAX process reads its own
  even part of the split (``tfds.even_splits``). An epoch's order comes from a seeded shuffle of
  the files plus a seeded shuffle buffer, so starting mid-epoch skips raw (undecoded) records.
* :class:`FolderSource` reads ``ROOT/<split>/<class>/<image>`` (the layout of the authors'
  ImageNet loader); class indices follow the sorted folder names. Files are addressed by index,
  so an epoch is a global permutation of the whole split: the batches do not depend on the
  number of processes, and starting mid-epoch costs nothing.

:func:`open_source` picks the kind from the configured dataset and turns a missing or
unprepared dataset into one :class:`DataError` line that says what to do.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from dynamixer_jax.data import digits as _digits  # noqa: F401  (registers sklearn_digits)
from dynamixer_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".gif", ".bmp")
"""File suffixes a folder dataset reads (case-insensitive); TensorFlow decodes all of them."""
SPLIT_ALIASES = {"validation": ("val", "valid"), "val": ("validation",), "test": ("val",)}
"""Folder names tried when a folder dataset has no directory named after the split."""


def epoch_seed(seed: int, epoch: int, *salt: int) -> int:
    """A 31-bit seed for one epoch (and optionally one process), mixed from ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, *salt]).generate_state(1)[0] >> 1)


def _split_share(num_examples: int, process_index: int, process_count: int) -> range:
    """The contiguous example range of one process (the first ``n % count`` get one more)."""
    # Same rule as tfds.even_splits: sizes differ by at most one, larger ones first.
    base, extra = divmod(num_examples, process_count)
    sizes = [base + (index < extra) for index in range(process_count)]
    start = sum(sizes[:process_index])
    return range(start, start + sizes[process_index])


class TfdsSource:
    """A prepared TFDS image-classification dataset (encoded images are not decoded here)."""

    kind = "tfds"

    def __init__(
        self,
        name: str,
        data_dir: str | None = None,
        *,
        image_key: str = "image",
        label_key: str = "label",
    ):
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(
                f"unknown dataset {name!r}: it is neither a TFDS dataset name (see `tfds "
                "build --help` or the TFDS catalog) nor a directory with train/ and val/ "
                "class folders"
            ) from None
        self.name = name
        self.image_key, self.label_key = image_key, label_key
        features = self.builder.info.features
        for key in (image_key, label_key):
            if key not in features:
                raise DataError(
                    f"dataset {name!r} has no feature {key!r} (it has "
                    f"{sorted(features)}); set image_key/label_key"
                )
        known = getattr(features[label_key], "num_classes", None)  # None: a plain integer
        self.num_classes = int(known) if known is not None else None
        if getattr(self.builder, "PREPARE_ON_FIRST_USE", False) and not self.builder.is_prepared():
            self.builder.download_and_prepare()
        self._counts: dict[str, int] = {}

    def _read(self, split, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
        """Raw records of ``split`` (deterministic file order; shuffled files if a seed is
        given)."""
        read_config = tfds.ReadConfig(
            add_tfds_id=True, shuffle_seed=shuffle_seed, try_autocache=False
        )
        try:
            records = self.builder.as_dataset(
                split=split,
                shuffle_files=shuffle_seed is not None,
                read_config=read_config,
                decoders={self.image_key: tfds.decode.SkipDecoding()},
            )
        except AssertionError as error:
            if "could not find data" not in str(error):
                raise
            raise DataError(self._unprepared_message()) from None
        except ValueError as error:  # an unknown split name
            raise DataError(f"dataset {self.name!r}: {str(error).splitlines()[0]}") from None
        image_key, label_key = self.image_key, self.label_key
        return records.map(
            lambda r: {
                "image": r[image_key],
                "label": tf.cast(r[label_key], tf.int64),
                "id": r["tfds_id"],
            }
        )

    def _unprepared_message(self) -> str:
        root = self.builder.data_dir_root
        name = self.name
        if self.builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
            manual = os.path.join(root, "downloads", "manual")
            what = (
                "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
                if name.startswith("imagenet2012")
                else "the files its TFDS catalog page lists"
            )
            return (
                f"dataset {name!r} is not prepared in {root}: put {what} in {manual}/, then "
                f"run `tfds build {name} --data_dir={root} --manual_dir={manual}`"
            )
        return (
            f"dataset {name!r} is not prepared in {root}: run `tfds build {name} "
            f"--data_dir={root}` on a machine with internet access (it downloads the data), "
            "or point data_dir at a directory where it is prepared"
        )

    def num_examples(self, split: str) -> int:
        """Examples in ``split``: from the dataset's info, or counted when the info has none."""
        if split not in self._counts:
            splits = self.builder.info.splits
            if splits:  # empty under tfds.testing.mock_data: count instead
                try:
                    self._counts[split] = int(splits[split].num_examples)
                except (KeyError, ValueError) as error:
                    raise DataError(
                        f"dataset {self.name!r} has no split {split!r} (it has {sorted(splits)})"
                    ) from error
            else:
                self._counts[split] = int(self._read(split).reduce(0, lambda n, _: n + 1))
        return self._counts[split]

    def steps_per_epoch(self, split: str, global_batch_size: int, process_count: int) -> int:
        """Full global batches per epoch: each process fills its batches from its own part."""
        return self.num_examples(split) // process_count // (global_batch_size // process_count)

    def train_records(
        self,
        split: str,
        *,
        seed: int,
        epoch: int,
        process_index: int,
        process_count: int,
        local_batch_size: int,
        steps_per_epoch: int,
        start_step: int,
        shuffle_buffer_size: int,
    ) -> tuple[tf.data.Dataset, np.ndarray | None]:
        """This process's records for steps ``start_step..steps_per_epoch-1`` of ``epoch``
        (and None: TFDS record ids are only known by reading the records)."""
        part = tfds.even_splits(split, n=process_count)[process_index]
        order_seed = epoch_seed(seed, epoch, process_index)
        records = self._read(part, shuffle_seed=order_seed)
        records = records.shuffle(
            shuffle_buffer_size, seed=order_seed, reshuffle_each_iteration=False
        )
        return (
            records.take(steps_per_epoch * local_batch_size).skip(start_step * local_batch_size)
        ), None

    def eval_records(
        self, split: str, *, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, int, np.ndarray | None]:
        """This process's part of ``split`` in a fixed order, its size (and None: no ids)."""
        share = _split_share(self.num_examples(split), process_index, process_count)
        part = tfds.even_splits(split, n=process_count)[process_index]
        return self._read(part), len(share), None


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The files of one split of a folder dataset, in sorted (class, file name) order."""

    paths: np.ndarray  # str, full paths
    labels: np.ndarray  # int64


class FolderSource:
    """An ImageNet-style folder: ``ROOT/<split>/<class name>/<image file>``."""

    kind = "folder"

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.name = self.root
        train = self._split_dir("train")
        self.classes = sorted(
            entry.rstrip("/")
            for entry in tf.io.gfile.listdir(train)
            if tf.io.gfile.isdir(os.path.join(train, entry))
        )
        if not self.classes:
            raise DataError(
                f"folder dataset {root}: {train} has no class folders; expected "
                "ROOT/train/<class>/<image files>"
            )
        self.num_classes = len(self.classes)
        self._splits: dict[str, FolderSplit] = {}

    def _split_dir(self, split: str) -> str:
        for name in (split, *SPLIT_ALIASES.get(split, ())):
            path = os.path.join(self.root, name)
            if tf.io.gfile.isdir(path):
                return path
        raise DataError(
            f"folder dataset {self.root} has no {split}/ directory (it has "
            f"{sorted(tf.io.gfile.listdir(self.root))}); set the split names"
        )

    def files(self, split: str) -> FolderSplit:
        """All image files of ``split`` with their class indices (scanned once, then cached)."""
        if split not in self._splits:
            directory = self._split_dir(split)
            self._check_class_folders(directory)
            paths, labels = [], []
            for label, name in enumerate(self.classes):
                class_dir = os.path.join(directory, name)
                if not tf.io.gfile.isdir(class_dir):
                    continue  # a class may be absent from a small validation split
                for file in self._images(class_dir):
                    paths.append(os.path.join(class_dir, file))
                    labels.append(label)
            if not paths:
                raise DataError(
                    f"folder dataset {self.root}: no images in {directory}; "
                    f"expected <class>/<file> with a suffix in {IMAGE_EXTENSIONS}"
                )
            self._splits[split] = FolderSplit(np.asarray(paths), np.asarray(labels, np.int64))
        return self._splits[split]

    def _images(self, class_dir: str) -> list[str]:
        return [
            file
            for file in sorted(tf.io.gfile.listdir(class_dir))
            if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith(".")
        ]

    def _check_class_folders(self, directory: str) -> None:
        """DataError if ``directory`` has class folders with images that train/ lacks (or
        spells otherwise): their images would be left out without a word."""
        known = set(self.classes)
        unknown = {}
        for entry in tf.io.gfile.listdir(directory):
            name = entry.rstrip("/")
            path = os.path.join(directory, name)
            if name in known or name.startswith(".") or not tf.io.gfile.isdir(path):
                continue
            count = len(self._images(path))
            if count:
                unknown[name] = count
        if not unknown:
            return
        lower = {name.lower(): name for name in self.classes}
        shown = [
            f"{name!r}"
            + (f" (train/ has {lower[name.lower()]!r})" if name.lower() in lower else "")
            for name in sorted(unknown)[:5]
        ]
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(
            f"folder dataset {self.root}: {directory} has class folder(s) {', '.join(shown)}{more} "
            f"that the training split lacks ({sum(unknown.values())} images would be left out); "
            "name every class folder as in the training split"
        )

    def num_examples(self, split: str) -> int:
        """Image files in ``split``."""
        return len(self.files(split).paths)

    def steps_per_epoch(self, split: str, global_batch_size: int, process_count: int) -> int:
        """Full global batches per epoch (the order is global, so process_count does not count)."""
        del process_count
        return self.num_examples(split) // global_batch_size

    def _records(self, split: str, indices: np.ndarray) -> tuple[tf.data.Dataset, np.ndarray]:
        """Records of the files at ``indices`` (``path`` instead of ``image``: the pipeline
        reads each file where a failure cannot stop the run), and their ids."""
        files = self.files(split)
        relative = np.asarray(
            [os.path.relpath(p, self.root) for p in files.paths[indices]], dtype=object
        ).astype(bytes)
        records = tf.data.Dataset.from_tensor_slices(
            {"path": files.paths[indices], "label": files.labels[indices], "id": relative}
        )
        return records, relative

    def train_records(
        self,
        split: str,
        *,
        seed: int,
        epoch: int,
        process_index: int,
        process_count: int,
        local_batch_size: int,
        steps_per_epoch: int,
        start_step: int,
        shuffle_buffer_size: int,
    ) -> tuple[tf.data.Dataset, np.ndarray]:
        """This process's records for steps ``start_step..`` of ``epoch`` and their ids: a
        slice of one global permutation of the split (so the global batches do not depend on
        ``process_count``)."""
        del shuffle_buffer_size  # the permutation is exact
        order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(self.num_examples(split))
        order = order[: steps_per_epoch * local_batch_size * process_count]
        mine = order.reshape(steps_per_epoch, process_count, local_batch_size)[
            start_step:, process_index
        ]
        return self._records(split, mine.reshape(-1))

    def eval_records(
        self, split: str, *, process_index: int, process_count: int
    ) -> tuple[tf.data.Dataset, int, np.ndarray]:
        """This process's contiguous part of ``split`` in sorted order, its size and ids."""
        share = _split_share(self.num_examples(split), process_index, process_count)
        records, ids = self._records(split, np.arange(share.start, share.stop))
        return records, len(share), ids


def is_folder_dataset(dataset: str) -> bool:
    """Whether ``dataset`` is a path (a folder dataset) rather than a TFDS name."""
    return dataset.startswith(("/", ".", "~", "gs://")) or os.path.isdir(dataset)


def open_source(
    dataset: str, data_dir: str | None = None, *, image_key: str = "image", label_key: str = "label"
) -> TfdsSource | FolderSource:
    """The source for ``dataset``: a folder dataset if it is a directory, else a TFDS name."""
    if is_folder_dataset(dataset):
        root = os.path.expanduser(dataset)
        if not tf.io.gfile.isdir(root):
            raise DataError(
                f"dataset {dataset!r}: no such directory (a folder dataset is "
                "ROOT/train/<class>/<images> and ROOT/val/<class>/<images>)"
            )
        return FolderSource(root)
    return TfdsSource(dataset, data_dir, image_key=image_key, label_key=label_key)
