"""Mixup/CutMix on device (dynamixer_jax.data.mixup): targets, pixels, rates, dtypes and sharding.

Everything runs through ``jax.jit`` (the config and class count static), as in the train step.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, xla_flags

from dynamixer_jax.data.mixup import MixupConfig, mix_batch, smooth_labels

NUM_CLASSES = 10
SMOOTHING = 0.1
OFF = SMOOTHING / NUM_CLASSES
ON = 1.0 - SMOOTHING + OFF

MIXUP_ONLY = MixupConfig(cutmix_alpha=0.0)
CUTMIX_ONLY = MixupConfig(mixup_alpha=0.0)
BOTH = MixupConfig()

mix = jax.jit(mix_batch, static_argnums=(3, 4))


def _batch(batch=8, height=12, width=10, channels=3, seed=0):
    """Random images (pixels differ between i and B-1-i everywhere) and labels i (distinct from B-1-i)."""
    images = (
        np.random.default_rng(seed).normal(size=(batch, height, width, channels)).astype(np.float32)
    )
    return images, np.arange(batch, dtype=np.int32)


def _lam_from_targets(targets, labels):
    """lam per row, read from the weight on the row's own label: t = lam*on + (1-lam)*off."""
    own = np.asarray(targets)[np.arange(len(labels)), labels]
    return (own - OFF) / (ON - OFF)


def test_smooth_labels_values():
    labels = jnp.array([0, 3, 4, 3])
    soft = np.asarray(smooth_labels(labels, 5, 0.1))
    assert soft.dtype == np.float32 and soft.shape == (4, 5)
    expected = np.full((4, 5), 0.02, np.float32)
    expected[np.arange(4), [0, 3, 4, 3]] = 0.92
    np.testing.assert_array_equal(soft, expected)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(smooth_labels(labels, 5, 0.0)), np.eye(5, dtype=np.float32)[[0, 3, 4, 3]]
    )
    with pytest.raises(ValueError, match="smoothing"):
        smooth_labels(labels, 5, 1.0)


@pytest.mark.parametrize("config", [MIXUP_ONLY, CUTMIX_ONLY, BOTH], ids=["mixup", "cutmix", "both"])
def test_target_rows_sum_to_one(config):
    images, labels = _batch()
    for seed in range(6):
        mixed, targets = mix(jax.random.PRNGKey(seed), images, labels, NUM_CLASSES, config)
        assert mixed.shape == images.shape and mixed.dtype == jnp.float32
        assert targets.shape == (8, NUM_CLASSES) and targets.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, atol=1e-6)
        assert np.all(np.asarray(targets) >= 0)


def test_mixup_blends_with_the_reversed_batch():
    images, labels = _batch()
    for seed in range(5):
        mixed, targets = mix(jax.random.PRNGKey(seed), images, labels, NUM_CLASSES, MIXUP_ONLY)
        lam = _lam_from_targets(targets, labels)
        np.testing.assert_allclose(lam, lam[0], atol=1e-6)  # one lam for the whole batch
        lam = float(lam[0])
        assert 0.0 < lam < 1.0
        np.testing.assert_allclose(
            np.asarray(mixed), lam * images + (1 - lam) * images[::-1], atol=1e-5
        )
        # The mirrored label carries the rest of the weight.
        other = np.asarray(targets)[np.arange(8), labels[::-1]]
        np.testing.assert_allclose(other, (1 - lam) * ON + lam * OFF, atol=1e-6)


def test_cutmix_pastes_a_box_of_the_reversed_batch():
    images, labels = _batch(height=16, width=12)
    fractions = []
    for seed in range(12):
        mixed, targets = mix(jax.random.PRNGKey(seed), images, labels, NUM_CLASSES, CUTMIX_ONLY)
        mixed = np.asarray(mixed)
        own, flipped = mixed == images, mixed == images[::-1]
        assert np.all(own | flipped), "every pixel is its own or the mirrored image's, bit for bit"
        # One box for the whole batch and all channels ...
        box = flipped[0, :, :, 0]
        assert np.all(flipped == box[None, :, :, None])
        # ... and it is an axis-aligned rectangle.
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        if box.any():
            assert box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
            assert box.sum() == len(rows) * len(cols)
        lam = _lam_from_targets(targets, labels)
        np.testing.assert_allclose(1.0 - lam, box.mean(), atol=1e-6)
        fractions.append(box.mean())
    assert sum(f > 0 for f in fractions) >= 6, "most draws cut a non-empty box"


@pytest.mark.parametrize(
    "config",
    [
        MixupConfig(prob=0.0),
        MixupConfig(mixup_alpha=0.0, cutmix_alpha=0.0),
        MixupConfig(prob=0.0, label_smoothing=0.0),
    ],
    ids=["prob0", "alphas0", "prob0-nosmoothing"],
)
def test_inactive_config_leaves_images(config):
    assert not config.active
    images, labels = _batch()
    mixed, targets = mix(jax.random.PRNGKey(0), images, labels, NUM_CLASSES, config)
    np.testing.assert_array_equal(np.asarray(mixed), images)
    np.testing.assert_array_equal(
        np.asarray(targets), np.asarray(smooth_labels(labels, NUM_CLASSES, config.label_smoothing))
    )


def test_active_property():
    assert BOTH.active and MIXUP_ONLY.active and CUTMIX_ONLY.active
    assert MixupConfig(prob=0.01).active


def test_same_rng_same_output_different_rng_different_output():
    images, labels = _batch()
    a = mix(jax.random.PRNGKey(3), images, labels, NUM_CLASSES, BOTH)
    b = mix(jax.random.PRNGKey(3), images, labels, NUM_CLASSES, BOTH)
    c = mix(jax.random.PRNGKey(4), images, labels, NUM_CLASSES, BOTH)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))
    # Typed keys work too.
    mixed, _ = mix(jax.random.key(3), images, labels, NUM_CLASSES, BOTH)
    assert mixed.shape == images.shape


# Rates over many draws, all under one jit (vmap over keys). With N = 4096 draws a proportion p
# has standard error sqrt(p(1-p)/N) <= 0.0078; the tolerance 0.04 is over 5 standard errors, so a
# correct implementation fails with probability < 1e-6 (and the keys are fixed, so it is stable).
DRAWS = 4096
RATE_TOL = 0.04


def _many(config, batch=2, height=4, width=4):
    images, labels = _batch(batch=batch, height=height, width=width, channels=1, seed=1)
    keys = jax.random.split(jax.random.PRNGKey(42), DRAWS)
    run = jax.jit(jax.vmap(lambda key: mix_batch(key, images, labels, NUM_CLASSES, config)))
    mixed, targets = run(keys)
    return images, labels, np.asarray(mixed), np.asarray(targets)


def test_cutmix_chosen_switch_prob_of_the_time():
    for switch_prob in (0.5, 0.2):
        images, _, mixed, _ = _many(dataclasses.replace(BOTH, switch_prob=switch_prob))
        # CutMix output is bitwise its own or the mirrored pixels; a Mixup blend is neither
        # (short of lam within ~1e-7 of 0 or 1, which Beta(0.8, 0.8) gives with probability ~1e-6).
        pasted = ((mixed == images) | (mixed == images[::-1])).reshape(DRAWS, -1).all(1)
        assert abs(pasted.mean() - switch_prob) < RATE_TOL, (switch_prob, pasted.mean())


def test_mixup_lam_distribution():
    _, labels, _, targets = _many(MIXUP_ONLY)
    lam = _lam_from_targets(targets.reshape(-1, NUM_CLASSES), np.tile(labels, DRAWS)).reshape(
        DRAWS, -1
    )[:, 0]
    assert np.all((lam >= -1e-6) & (lam <= 1 + 1e-6))
    # Beta(0.8, 0.8): mean 0.5, variance a^2 / ((2a)^2 (2a+1)) = 0.0962, sd 0.31, so the mean of
    # 4096 draws has standard error 0.0049: 0.025 is 5 of them.
    assert abs(lam.mean() - 0.5) < 0.025
    # The variance tells alpha apart (Beta(1, 1) has 0.0833): the sample variance has standard error
    # sqrt((mu4 - var^2) / N) = sqrt(0.696 var^2 / N) = 0.0013 (excess kurtosis -6/(2a+3)), 5x = 0.0065.
    assert abs(lam.var() - 0.0962) < 0.0065


def test_prob_is_the_rate_of_mixed_batches():
    images, labels, mixed, targets = _many(dataclasses.replace(BOTH, prob=0.3))
    untouched = (mixed == images).reshape(DRAWS, -1).all(1)
    assert abs(untouched.mean() - 0.7) < RATE_TOL
    plain = np.asarray(smooth_labels(labels, NUM_CLASSES, SMOOTHING))
    np.testing.assert_allclose(
        targets[untouched], np.broadcast_to(plain, targets[untouched].shape), atol=1e-6
    )


def test_bfloat16_images_stay_bfloat16():
    images, labels = _batch()
    low = jnp.asarray(images, jnp.bfloat16)
    ref = np.asarray(low, np.float32)
    for config in (MIXUP_ONLY, CUTMIX_ONLY):
        mixed, targets = mix(jax.random.PRNGKey(1), low, labels, NUM_CLASSES, config)
        assert mixed.dtype == jnp.bfloat16 and targets.dtype == jnp.float32
        lam = float(_lam_from_targets(targets, labels)[0])
        expected = lam * ref + (1 - lam) * ref[::-1] if config is MIXUP_ONLY else None
        got = np.asarray(mixed, np.float32)
        if expected is not None:  # one bfloat16 rounding of the float32 blend (8 bits of mantissa)
            np.testing.assert_allclose(got, expected, rtol=2**-8, atol=1e-6)
        else:
            assert np.all((got == ref) | (got == ref[::-1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mixup_alpha=-0.1), "mixup_alpha must be >= 0"),
        (dict(cutmix_alpha=-1.0), "cutmix_alpha must be >= 0"),
        (dict(cutmix_alpha=float("nan")), "cutmix_alpha must be >= 0"),
        (dict(switch_prob=1.5), r"switch_prob must be in \[0, 1\]"),
        (dict(prob=-0.01), r"prob must be in \[0, 1\]"),
        (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
        (dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 1\)"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixupConfig(**kwargs)


def test_bad_shapes_raise():
    images, labels = _batch()
    with pytest.raises(ValueError, match="images must be"):
        mix_batch(jax.random.PRNGKey(0), images[0], labels, NUM_CLASSES, BOTH)
    with pytest.raises(ValueError, match="labels must be"):
        mix_batch(jax.random.PRNGKey(0), images, labels[:4], NUM_CLASSES, BOTH)


SHARDED_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from dynamixer_jax.data.mixup import MixupConfig, mix_batch

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    batch_sharded = NamedSharding(mesh, PartitionSpec("batch"))
    data = np.load(sys.argv[1])
    images = jax.device_put(data["images"], batch_sharded)
    labels = jax.device_put(data["labels"], batch_sharded)
    assert len(images.sharding.device_set) == 8
    mix = jax.jit(mix_batch, static_argnums=(3, 4))
    out = {}
    for name, config in [("both", MixupConfig()), ("mixup", MixupConfig(cutmix_alpha=0.0)),
                         ("cutmix", MixupConfig(mixup_alpha=0.0))]:
        for seed in range(3):
            mixed, targets = mix(jax.random.PRNGKey(seed), images, labels, 10, config)
            assert len(mixed.sharding.device_set) == 8, mixed.sharding
            out[f"{name}_{seed}_images"] = np.asarray(mixed)
            out[f"{name}_{seed}_targets"] = np.asarray(targets)
    np.savez(sys.argv[2], **out)
""")


def test_sharded_batch_matches_unsharded(tmp_path):
    images, labels = _batch(batch=16, height=8, width=8)
    np.savez(tmp_path / "in.npz", images=images, labels=labels)
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(8),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    sharded = np.load(tmp_path / "out.npz")
    for name, config in [("both", BOTH), ("mixup", MIXUP_ONLY), ("cutmix", CUTMIX_ONLY)]:
        for seed in range(3):
            mixed, targets = mix(jax.random.PRNGKey(seed), images, labels, NUM_CLASSES, config)
            np.testing.assert_allclose(
                sharded[f"{name}_{seed}_images"], np.asarray(mixed), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_allclose(
                sharded[f"{name}_{seed}_targets"], np.asarray(targets), atol=1e-7
            )
