"""PIL's bicubic resize in TensorFlow (dynamixer_jax.data.pil_resize) and the evaluation
preprocessing built on it, compared with PIL itself on real photographs.

The photographs are the two that scikit-learn ships (china.jpg and flower.jpg, 640x427, real
camera JPEGs), read as shipped and cut into several sizes and aspect ratios: wide, tall, small
(upscaled), square, grey, and with the short side already at the resize target. Nothing is
downloaded.

Expected agreement: the same JPEG decoder (libjpeg's accurate integer IDCT, which PIL and our
decode both use) and the same integer arithmetic as Pillow give bit-equal pixels. The one
allowed difference is Pillow's pass order: Pillow 13 resizes along the height first when the
height shrinks much more than the width, as we do; Pillow 12 and earlier never do, and the
orders differ in where the intermediate uint8 image is rounded and clipped (see
``_assert_like_pil``).
"""

import io
import math
import os

import numpy as np
import PIL
import pytest
import sklearn.datasets
import tensorflow as tf
from PIL import Image

from dynamixer_jax.data import decode, pil_resize

PILLOW_ROWS_FIRST = int(PIL.__version__.split(".")[0]) >= 13
IMAGES = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")


def _pil_rows_first(in_hw, out_hw) -> bool:
    """Whether the installed Pillow resizes along the height first (see the module docstring)."""
    return PILLOW_ROWS_FIRST and bool(pil_resize.vertical_first(in_hw, out_hw))


def _encode(array, fmt="JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped():
    """The two photographs' JPEG bytes as scikit-learn ships them."""
    names = ("china.jpg", "flower.jpg")
    return [open(os.path.join(IMAGES, name), "rb").read() for name in names]


@pytest.fixture(scope="module")
def photos(shipped):
    """The photographs decoded by PIL: uint8 (427, 640, 3)."""
    return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in shipped]


@pytest.fixture(scope="module")
def encoded(shipped, photos):
    """{name: bytes}: the photographs in the shapes and formats evaluation meets (H x W)."""
    cases = {}
    for index, (data, photo) in enumerate(zip(shipped, photos)):
        portrait = np.rot90(photo)
        cases |= {
            f"{index} shipped 427x640": data,
            f"{index} portrait 640x427": _encode(portrait, quality=90),
            f"{index} wide 300x640": _encode(photo[60:360], quality=90),
            # Pillow 13 resizes this one along the height first.
            f"{index} tall 640x280 q75 4:2:0": _encode(portrait[:, 50:330], quality=75),
            f"{index} small 120x160 (upscaled)": _encode(photo[100:220, 200:360], quality=90),
            f"{index} square 400x400 PNG": _encode(photo[:400, 100:500], "PNG"),
            f"{index} grey 375x500": _encode(np.asarray(Image.fromarray(photo).convert("L"))),
            f"{index} 256x341 4:4:4": _encode(photo[:256, :341], quality=95, subsampling=0),
        }
    return cases


def timm_eval(data: bytes, size: int, crop_fraction: float) -> np.ndarray:
    """timm's eval transform on PIL: torchvision ``Resize(floor(size / crop_fraction))`` (the
    shorter side; the longer ``int(new_short * long / short)``), then ``CenterCrop(size)``."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    new_short = math.floor(size / crop_fraction)
    short, long = min(width, height), max(width, height)
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64))


def _assert_like_pil(ours, pil, pil_rows_first: bool, ours_rows_first: bool, what: str):
    """Bit-equal where Pillow's pass order is ours. Else (Pillow 12 on an image whose height
    shrinks much more than its width) the intermediate uint8 image is rounded and clipped
    elsewhere: measured mean 0.10-0.18 grey levels, 99th percentile 1, max 8 on these photos.
    The max is bounded by what clipping an overshoot can remove: 255 times the cubic kernel's
    negative lobes (1/12), 21 levels, plus 1 for rounding."""
    assert ours.shape == pil.shape and ours.dtype == np.uint8, what
    diff = _diff(ours, pil)
    if pil_rows_first == ours_rows_first:
        assert diff.max() == 0, f"{what}: {(diff > 0).mean():.4f} of values differ"
    else:
        assert diff.mean() < 0.25 and np.percentile(diff, 99) <= 1 and diff.max() <= 22, what


# Shrink, enlarge and mixed; an axis kept (one pass); the height shrinking much more than the
# width (Pillow 13: height first); tiny and very large factors; output 1 pixel wide.
RESIZE_CASES = [
    (256, 383),
    (300, 300),
    (427, 256),
    (120, 640),
    (100, 700),
    (37, 61),
    (900, 1300),
    (500, 200),
    (5, 640),
    (427, 1),
]


def test_resize_equals_pil(photos):
    resize = tf.function(
        pil_resize.resize,
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([2], tf.int32),
        ],
    )
    crops = [photos[0], photos[1][50:150, 100:180], np.rot90(photos[1])]
    for photo in crops:
        for out_hw in RESIZE_CASES:
            ours = resize(np.ascontiguousarray(photo), out_hw).numpy()
            pil = np.asarray(Image.fromarray(photo).resize(out_hw[::-1], Image.BICUBIC))
            in_hw = photo.shape[:2]
            _assert_like_pil(
                ours,
                pil,
                _pil_rows_first(in_hw, out_hw),
                bool(pil_resize.vertical_first(in_hw, out_hw)),
                f"{in_hw} -> {out_hw}",
            )


def test_resized_crop_is_a_crop_of_the_resize(photos):
    photo = photos[0][:300, :500]
    whole = pil_resize.resize(photo, [211, 333]).numpy()
    for window in ([0, 0, 211, 333], [13, 40, 100, 120], [200, 320, 11, 13], [5, 0, 1, 333]):
        top, left, height, width = window
        crop = pil_resize.resized_crop(photo, [211, 333], window).numpy()
        np.testing.assert_array_equal(crop, whole[top : top + height, left : left + width])


def test_weights_follow_pillow():
    # 10 -> 4 pixels: scale 2.5, support 5, so 2 * 5 + 1 = 11 taps. Centres 1.25, 3.75, 6.25,
    # 8.75; windows [int(c - 5 + 0.5), int(c + 5 + 0.5)) clipped to [0, 10): [0, 6), [0, 9),
    # [1, 10), [4, 10).
    first, weights = pil_resize.pil_weights(10, 4, 0, 4)
    first, weights = first.numpy(), weights.numpy()
    assert weights.shape == (4, 11)
    np.testing.assert_array_equal(first, [0, 0, 1, 4])
    for row, length in enumerate([6, 9, 9, 6]):
        assert (weights[row, length:] == 0).all() and (weights[row, :length] != 0).all()
    # The same windows for a crop of the output: pixels 2 and 3 alone.
    first_crop, weights_crop = pil_resize.pil_weights(10, 4, 2, 2)
    np.testing.assert_array_equal(first_crop, first[2:])
    np.testing.assert_array_equal(weights_crop, weights[2:])
    # Normalised weights: each row sums to 2**22 up to the rounding of each of its taps.
    sums = weights.sum(axis=1)
    assert (np.abs(sums - (1 << pil_resize.PRECISION_BITS)) <= 11).all()
    # The kernel of a plain copy (scale 1) is the identity: weight 2**22 on the pixel itself.
    first, weights = pil_resize.pil_weights(6, 6, 0, 6)
    np.testing.assert_array_equal(weights.numpy().max(axis=1), 1 << pil_resize.PRECISION_BITS)
    np.testing.assert_array_equal(first.numpy() + weights.numpy().argmax(axis=1), np.arange(6))


def test_pillow_pass_order_rule():
    assert not pil_resize.vertical_first([100, 100], [50, 75])  # equal: width first
    assert pil_resize.vertical_first([100, 100], [50, 76])
    assert pil_resize.vertical_first([100, 100], [50, 300])  # width enlarged
    assert not pil_resize.vertical_first([100, 100], [150, 20])  # height enlarged
    assert not pil_resize.vertical_first([375, 500], [256, 341])  # ImageNet-like: width first


@pytest.mark.parametrize("size, crop_fraction", [(224, 0.875), (160, 0.95)])
def test_eval_preprocess_equals_timm_on_photos(encoded, size, crop_fraction):
    """From encoded bytes through ``tf.data`` (as the pipeline runs it) to the crop, against
    PIL with timm's eval transform. Target: under 0.3 grey levels mean; in fact bit-equal."""
    names = list(encoded)
    dataset = tf.data.Dataset.from_tensor_slices([encoded[name] for name in names]).map(
        lambda data: decode.eval_preprocess(data, size, crop_fraction)
    )
    all_diffs = []
    for name, ours in zip(names, dataset.as_numpy_iterator()):
        pil = timm_eval(encoded[name], size, crop_fraction)
        in_hw = Image.open(io.BytesIO(encoded[name])).size[::-1]
        new_short = math.floor(size / crop_fraction)
        short = min(in_hw)
        out_hw = [new_short if side == short else new_short * side // short for side in in_hw]
        _assert_like_pil(
            ours,
            pil,
            _pil_rows_first(in_hw, out_hw),
            bool(pil_resize.vertical_first(in_hw, out_hw)),
            name,
        )
        all_diffs.append(_diff(ours, pil).ravel())
    assert np.concatenate(all_diffs).mean() < 0.3


def test_tensorflow_resize_fails_this_comparison(shipped):
    """The comparison above can fail: what evaluation did before (``tf.image.resize`` bicubic
    with antialiasing, TensorFlow's default fast IDCT) is 1.2 grey levels off on a photo."""
    image = tf.io.decode_image(shipped[0], channels=3)
    resized = tf.image.resize(image, [256, 383], method="bicubic", antialias=True)
    before = tf.cast(tf.clip_by_value(tf.round(resized[16:240, 80:304]), 0, 255), tf.uint8)
    assert _diff(before.numpy(), timm_eval(shipped[0], 224, 0.875)).mean() > 0.6


def test_eval_graph_has_no_python():
    """Everything is TensorFlow ops: no py_function or numpy_function in the graph."""
    graph = (
        tf.function(lambda data: decode.eval_preprocess(data, 224))
        .get_concrete_function(tf.TensorSpec([], tf.string))
        .graph.as_graph_def()
    )
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    assert "While" in ops or "StatelessWhile" in ops
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def test_large_photo_in_bounded_memory(photos):
    """A 4x enlarged photograph (1708x2560: 29-tap windows at 224) stays exact."""
    big = np.asarray(Image.fromarray(photos[1]).resize((2560, 1708), Image.BICUBIC))
    data = _encode(big, quality=90)
    ours = decode.eval_preprocess(tf.constant(data), 224).numpy()
    np.testing.assert_array_equal(ours, timm_eval(data, 224, 0.875))
