"""The built-in dataset: scikit-learn's 1,797 handwritten digits as a TFDS dataset.

``sklearn_digits`` needs no download: its source is the 8x8 greyscale digits (UCI "optdigits",
17 grey levels) that ship inside the scikit-learn package. The builder scales them to 0-255,
upscales them to 32x32 with bicubic interpolation, replicates the grey channel to RGB and
stores them as PNG. Splits: ``train`` (1,437 images) and ``test`` (360), a fixed random 80/20
split. :func:`dynamixer_jax.data.sources.open_tfds` prepares it into the TFDS data dir the
first time it is used; it is the dataset of the quickstart and of the tests.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

DIGITS_IMAGE_SIZE = 32
"""Side of the stored images, in pixels."""
DIGITS_TEST_SIZE = 360
"""Number of images in the ``test`` split; the other 1,437 form ``train``."""


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (1797, 32, 32, 3) and int64 labels (1797,)."""
    # Needed only the first time the dataset is built: scikit-learn is optional.
    from PIL import Image  # noqa: PLC0415
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    size = DIGITS_IMAGE_SIZE
    large = np.stack(
        [
            np.asarray(Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC))
            for image in small
        ]
    )
    return np.repeat(large[..., None], 3, axis=-1), digits.target.astype(np.int64)


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed example indices of each split (a seeded permutation, sorted within a split)."""
    order = np.random.default_rng(0).permutation(1797)
    return {"train": np.sort(order[DIGITS_TEST_SIZE:]), "test": np.sort(order[:DIGITS_TEST_SIZE])}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits, upscaled to 32x32 RGB (no download needed)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    PREPARE_ON_FIRST_USE = True  # read by dynamixer_jax.data.sources: nothing to download

    def _info(self) -> tfds.core.DatasetInfo:
        size = DIGITS_IMAGE_SIZE
        return self.dataset_info_from_configs(
            description="scikit-learn's 8x8 handwritten digits upscaled to 32x32 RGB.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(digit) for digit in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn
        images, labels = digits_arrays()
        return {
            name: self._generate_examples(images, labels, indices)
            for name, indices in digits_split_indices().items()
        }

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": labels[index]}
