"""Sharded weights (``dynamixer_jax.sharding``) and a sharded training state
(``config.state_sharding``), on 8 simulated CPU devices in a process of their own
(``tests/sharded_run.py``): on meshes with automatic and with explicit axes (``jax.make_mesh``'s
default) the model gives the logits of its unsharded weights, and ZeRO-1 and FSDP train with the
losses of the replicated run; the Pallas mixing kernel split over the devices gives the unsplit
kernel's values and gradients."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO, xla_flags


def test_sharded_weights_and_training_state_on_8_devices():
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(8),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "sharded_run.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for kind in ("auto", "explicit"):
        # The same computation with weights gathered by XLA: float rounding only (the sums of
        # a matmul split over "model" are added in another order; logits are ~1, errors ~1e-7).
        inference = out[kind]
        assert inference["inference_split"] > 0.3 and inference["inference_error"] < 1e-5
        assert inference["init_split"] > 0.3 and inference["init_equal"]
    # On explicit axes the logits come back split over "data", as the images were.
    assert out["explicit"]["logits_type"] == "float32[8@data,10]"
    assert out["composed_error"] < 1e-5 and out["composed_type"] == "float32[8@data,2,2,5]"
    replicated, zero1, fsdp = out["replicated"], out["zero1"], out["fsdp"]
    assert replicated["params_split"] == replicated["opt_split"] == replicated["ema_split"] == 0
    assert zero1["params_split"] == 0 and zero1["opt_split"] > 0.3 and zero1["ema_split"] > 0.3
    for full in (fsdp, out["explicit_fsdp"]):
        assert full["params_split"] > 0.3 and full["opt_split"] > 0.3 and full["ema_split"] > 0.3
    for sharded in (zero1, fsdp, out["explicit_fsdp"]):
        # Only the order of the gradient sums differs (~1e-7 relative); with Adam's eps = 1e-3
        # the update is smooth in the gradient (see test_train_lib's accumulation test).
        np.testing.assert_allclose(sharded["losses"], replicated["losses"], rtol=1e-5)
        for got, want in zip(sharded["params"], replicated["params"]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["explicit_fsdp"]["eval_loss"], fsdp["eval_loss"], rtol=1e-5)
    # The kernel against jax.numpy (softmax and sums in another order) and generate's gradients
    # summed over the 8 devices: float32 rounding of sums of 4-16 terms (seen: 1.2e-7 relative).
    assert out["pallas_split"] and out["pallas_error"] < 1e-6 * out["pallas_scale"]
