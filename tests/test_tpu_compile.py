"""The TPU compile lab (benchmarks/memory.py --tpu): its affine fit everywhere, and one compile of a
tiny model's real training step for a TPU where libtpu is installed (no TPU chip is needed).

The compile test checks what must hold of any correct compile of the step: the donated state is
aliased, the arguments are the state plus the batch, memory grows with the batch, and XLA's FLOP
count is at least the matrix products of ``dynamixer_jax.model.flops`` (XLA adds element-wise
work and the optimizer) and less than twice them (measured 1.1-1.3x on the CPU, test_flops.py).
"""

import math
import sys

import jax
import pytest
from conftest import MICRO_ARCH, REPO

from dynamixer_jax.model import flops

sys.path.insert(0, str(REPO / "benchmarks"))
from benchlib.tpu_fit import Affine


def test_affine_fit_and_largest_batch():
    fit = Affine.through((4, 10.0), (8, 18.0))
    assert (fit.fixed, fit.per_image) == (2.0, 2.0)
    assert fit.at(100) == 202.0
    assert fit.largest_batch(202.0) == 100
    assert fit.largest_batch(201.9) == 99
    assert fit.largest_batch(1.0) == 0
    with pytest.raises(ValueError):
        Affine.through((4, 1.0), (4, 2.0))


def test_tiny_training_step_compiles_for_a_tpu():
    pytest.importorskip("libtpu", reason="compiling for a TPU needs libtpu (pip install libtpu)")
    import numpy as np
    from jax.sharding import Mesh

    from benchlib.steps import published_train_step
    from benchlib.tpu_compile import chip_devices
    from benchlib.xla_stats import compile_stats

    batch = 8
    step, args, model = published_train_step(
        "dynamixer_s",
        batch,
        Mesh(np.array(chip_devices("v5e")[:1]), ("data",)),  # one chip's first device
        image_size=16,
        num_classes=10,
        model_overrides=dict(MICRO_ARCH),
    )
    stats = compile_stats(step, args)
    state_bytes = sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(args[0])
    )
    memory = stats["memory"]
    # The TPU pads small arrays to its tiles, so the compiler's bytes are at least the logical.
    assert memory["alias_bytes"] >= state_bytes  # the donated state is updated in place
    assert memory["argument_bytes"] >= state_bytes + batch * (16 * 16 * 3 + 4 + 1)
    assert stats["hbm_bytes"] >= memory["argument_bytes"] + memory["temp_bytes"]
    assert memory["temp_bytes"] > 0 and stats["bytes_accessed"] > 0
    # XLA counts the matmuls plus element-wise work and the optimizer: more, but not twice.
    matmuls = batch * flops.training_flops(model)
    assert matmuls <= stats["flops"] < 2 * matmuls


def test_pallas_mixing_compiles_for_two_tpu_devices_with_mosaic():
    # mixing="pallas" lowers its kernels with Mosaic (not the interpreter) when the step is
    # compiled for a TPU, and splits them over the step's mesh (XLA cannot partition a Mosaic
    # kernel: without the shard_map this compile fails). The two TensorCores of one v4 chip are
    # two devices, a data-parallel mesh of two.
    pytest.importorskip("libtpu", reason="compiling for a TPU needs libtpu (pip install libtpu)")
    import numpy as np
    from jax.sharding import Mesh

    from benchlib.steps import published_train_step
    from benchlib.tpu_compile import chip_devices

    mesh = Mesh(np.array(chip_devices("v4")[:2]), ("data",))
    texts = {}
    for mixing in ("pallas", "vector"):
        step, args, _ = published_train_step(
            "dynamixer_s",
            16,
            mesh,
            image_size=32,  # token grids of 8: the kernel's (L, L) split is whole (8, 128) tiles
            num_classes=10,
            model_overrides=dict(MICRO_ARCH, transitions=(False, False)),
            mixing=mixing,
        )
        texts[mixing] = step.lower(*args).compile().as_text()
    kernels = {m: text.count('custom_call_target="tpu_custom_call"') for m, text in texts.items()}
    # Two layers, two directions: a forward and a backward kernel each, and the forward again
    # where remat recomputes it. XLA's own mixing has none.
    assert kernels == {"pallas": 12, "vector": 0}
    # The data parallelism is the same: no gathering of the activations around the kernels.
    assert " all-gather(" not in texts["pallas"] and "all-gather-start" not in texts["pallas"]
