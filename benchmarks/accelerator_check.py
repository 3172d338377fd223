"""Correctness of DynaMixer on an accelerator, before trusting its throughput figures.

Run by ``benchmarks/accelerator_check.sh``; by hand:

    python benchmarks/accelerator_check.py --json OUT/correctness.json [--quick] [--budget-s 60]

Checks, each recorded (and any failure recorded as an error, the rest still running):
  * ``device_vs_cpu``: logits of S, M, L (same weights) on the default device vs on the host
    CPU, both float32 at ``highest`` matmul precision (so TF32 cannot hide a bug): max abs
    and relative error (max abs / max |logit|). Also the default-precision (TF32 on recent
    NVIDIA GPUs) error against the same CPU logits;
  * ``jax_vs_torch``: JAX logits vs the PyTorch twin (``dynamixer_torch``) on the
    same device, float32, TF32 off on both sides;
  * ``bf16_vs_fp32``: top-1 agreement of the bfloat16 model with the float32 one on 64 smooth
    random images, and their logit error relative to the logits' spread.
The weights are the twin's ``randomize_``-d ones (every parameter random, logits O(1)), so
mistakes in biases or norms would show, and argmaxes are not ties.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import NUM_CLASSES, architecture, create, short_error, write_json
from dynamixer_jax.convert import torch_to_flax


def flax_model(name: str, image_size: int, dtype=None):
    """The Flax model for ``name`` ('tiny' is a small custom architecture)."""
    return create(name, num_classes=NUM_CLASSES, image_size=image_size, dtype=dtype)


def twin_and_params(name: str, image_size: int):
    """(torch twin with randomised weights, the same weights as Flax params in numpy)."""
    import torch

    import dynamixer_torch as twin_module

    torch.manual_seed(0)
    twin = twin_module.randomize_(
        twin_module.TorchDynaMixer(
            **architecture(name), num_classes=NUM_CLASSES, image_size=image_size
        ),
        seed=0,
    ).eval()
    params = torch_to_flax(twin.state_dict(), flax_model(name, image_size))["params"]
    return twin, params


def smooth_images(batch: int, size: int, seed: int) -> np.ndarray:
    """Images that look like blurry photos: 8x8 normal noise upsampled (cubic) to size x size."""
    coarse = np.random.default_rng(seed).standard_normal((batch, 8, 8, 3)).astype(np.float32)
    cpu = jax.devices("cpu")[0]
    resized = jax.image.resize(jax.device_put(coarse, cpu), (batch, size, size, 3), "cubic")
    return np.asarray(resized)


def logits_on(model, params, images: np.ndarray, device, precision: str) -> np.ndarray:
    """Float32 numpy logits of ``model`` computed on ``device`` at a matmul precision."""
    params, images = jax.device_put((params, images), device)
    with jax.default_matmul_precision(precision):
        apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
        return np.asarray(apply(params, images), np.float32)


def errors(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Max abs error, and max abs error over the largest |reference|."""
    diff = float(np.max(np.abs(got.astype(np.float64) - want)))
    return {"max_abs": diff, "max_rel": diff / max(float(np.max(np.abs(want))), 1e-30)}


def device_vs_cpu(name: str, image_size: int, batch: int) -> dict[str, Any]:
    """Default device vs CPU logits (highest precision), and the default-precision error."""
    twin, params = twin_and_params(name, image_size)
    model = flax_model(name, image_size)
    images = smooth_images(batch, image_size, seed=1)
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    on_cpu = logits_on(model, params, images, cpu, "highest")
    on_device = logits_on(model, params, images, device, "highest")
    on_device_default = logits_on(model, params, images, device, "default")
    out = {
        "model": name,
        "batch": batch,
        "device": str(device),
        "cpu": str(cpu),
        "logit_std": float(on_cpu.std()),
        "highest": errors(on_device, on_cpu),
        "default_precision": errors(on_device_default, on_cpu),
        "top1_agreement_default_vs_cpu": float(
            np.mean(on_device_default.argmax(-1) == on_cpu.argmax(-1))
        ),
    }
    out["jax_vs_torch"] = jax_vs_torch(twin, images, on_device)
    return out


def jax_vs_torch(twin, images: np.ndarray, jax_logits: np.ndarray) -> dict[str, Any]:
    """The torch twin's float32 logits (TF32 off) on its device vs JAX's."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = twin.to(device).eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        logits = model(x).float().cpu().numpy()
    model.cpu()
    return {"torch_device": str(device), **errors(jax_logits, logits)}


def bf16_vs_fp32(name: str, image_size: int, batch: int) -> dict[str, Any]:
    """Top-1 agreement and relative logit error of bfloat16 vs float32, on the default device."""
    _, params = twin_and_params(name, image_size)
    images = smooth_images(batch, image_size, seed=2)
    device = jax.devices()[0]
    fp32 = logits_on(flax_model(name, image_size), params, images, device, "highest")
    bf16 = logits_on(flax_model(name, image_size, jnp.bfloat16), params, images, device, "default")
    diff = np.abs(bf16 - fp32)
    return {
        "model": name,
        "batch": batch,
        "device": str(device),
        "top1_agreement": float(np.mean(bf16.argmax(-1) == fp32.argmax(-1))),
        "max_abs_over_logit_std": float(diff.max() / fp32.std()),
        "mean_abs_over_logit_std": float(diff.mean() / fp32.std()),
        "fp32_top1_margin_median": float(np.median(np.diff(np.sort(fp32, -1)[:, -2:]))),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="output (default $OUT/correctness.json)")
    parser.add_argument("--quick", action="store_true", help="tiny model at 56x56 (CPU smoke)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="start no new check after this many seconds",
    )
    args = parser.parse_args(argv)
    path = args.json or (
        os.path.join(os.environ["OUT"], "correctness.json") if os.environ.get("OUT") else None
    )
    deadline = time.monotonic() + args.budget_s
    size = 56 if args.quick else 224
    device = jax.devices()[0]
    result: dict[str, Any] = {
        "jax": jax.__version__,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "image_size": size,
        "checks": [],
    }
    checks: list = (
        [
            ("device_vs_cpu", lambda: device_vs_cpu("tiny", size, 2)),
            ("bf16_vs_fp32", lambda: bf16_vs_fp32("tiny", size, 64)),
        ]
        if args.quick
        else [
            ("device_vs_cpu", lambda: device_vs_cpu("dynamixer_s", size, 8)),
            ("bf16_vs_fp32", lambda: bf16_vs_fp32("dynamixer_s", size, 64)),
            ("device_vs_cpu", lambda: device_vs_cpu("dynamixer_m", size, 2)),
            ("device_vs_cpu", lambda: device_vs_cpu("dynamixer_l", size, 2)),
        ]
    )
    for kind, check in checks:
        run_check(result, kind, check, deadline)
        if path:
            write_json(path, result)
    return 0


def run_check(
    result: dict[str, Any], kind: str, check: Callable[[], dict[str, Any]], deadline: float
) -> None:
    """Run one check into ``result['checks']``, printing it; errors and skips are recorded."""
    start = time.monotonic()
    if start > deadline:
        entry = {"check": kind, "status": "skipped", "error": "time budget"}
    else:
        try:
            entry = {"check": kind, "status": "ok", **check()}
        except Exception as exc:
            traceback.print_exc()
            entry = {"check": kind, "status": "error", "error": short_error(exc)}
    entry["seconds"] = time.monotonic() - start
    result["checks"].append(entry)
    print(f"[correctness] {json.dumps(entry)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
