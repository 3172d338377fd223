"""Correctness of DynaMixer on an accelerator, before trusting its throughput figures.

    python benchmarks/accelerator_check.py --json OUT/correctness.json [--quick] [--budget-s 60]

Run by ``accelerator_check.sh``. Each check is recorded (a failure as an error; the rest still
run): ``device_vs_cpu``, float32 logits of S, M, L on the default device against the host CPU at
``highest`` matmul precision (so TF32 cannot hide a bug), and at the default precision; with
``jax_vs_torch``, the PyTorch twin's float32 logits (TF32 off) on its device against JAX's;
``bf16_vs_fp32``, top-1 agreement and logit error of bfloat16 against float32 on 64 smooth random
images. The weights are the twin's ``randomize_``-d ones (every parameter random, logits O(1)),
so mistakes in biases or norms show and argmaxes are not ties.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import NUM_CLASSES, architecture, create, short_error, write_json
from dynamixer_jax.convert import torch_to_flax


def flax_model(name: str, image_size: int, dtype=None):
    return create(name, num_classes=NUM_CLASSES, image_size=image_size, dtype=dtype)


def twin_and_params(name: str, image_size: int):
    """(torch twin with randomised weights, the same weights as Flax params in numpy)."""
    import torch

    import dynamixer_torch

    torch.manual_seed(0)
    twin = dynamixer_torch.TorchDynaMixer(
        **architecture(name), num_classes=NUM_CLASSES, image_size=image_size
    )
    twin = dynamixer_torch.randomize_(twin, seed=0).eval()
    return twin, torch_to_flax(twin.state_dict(), flax_model(name, image_size))["params"]


def smooth_images(batch: int, size: int, seed: int) -> np.ndarray:
    """Images that look like blurry photos: 8x8 normal noise upsampled (cubic) to size x size."""
    coarse = np.random.default_rng(seed).standard_normal((batch, 8, 8, 3)).astype(np.float32)
    cpu = jax.devices("cpu")[0]
    return np.asarray(
        jax.image.resize(jax.device_put(coarse, cpu), (batch, size, size, 3), "cubic")
    )


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


def device_vs_cpu(name: str, image_size: int, batch: int) -> dict:
    twin, params = twin_and_params(name, image_size)
    model = flax_model(name, image_size)
    images = smooth_images(batch, image_size, seed=1)
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    on_cpu = logits_on(model, params, images, cpu, "highest")
    on_device = logits_on(model, params, images, device, "highest")
    default = logits_on(model, params, images, device, "default")
    return {
        "model": name,
        "batch": batch,
        "device": str(device),
        "cpu": str(cpu),
        "logit_std": float(on_cpu.std()),
        "highest": errors(on_device, on_cpu),
        "default_precision": errors(default, on_cpu),
        "top1_agreement_default_vs_cpu": float(np.mean(default.argmax(-1) == on_cpu.argmax(-1))),
        "jax_vs_torch": jax_vs_torch(twin, images, on_device),
    }


def jax_vs_torch(twin, images: np.ndarray, jax_logits: np.ndarray) -> dict:
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


def bf16_vs_fp32(name: str, image_size: int, batch: int) -> dict:
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
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no check after")
    args = parser.parse_args(argv)
    out = os.environ.get("OUT")
    path = args.json or (os.path.join(out, "correctness.json") if out else None)
    deadline = time.monotonic() + args.budget_s
    size, device = 56 if args.quick else 224, jax.devices()[0]
    result = {
        "jax": jax.__version__,
        "device": str(device),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "image_size": size,
        "checks": [],
    }
    if args.quick:
        checks = [(device_vs_cpu, "tiny", 2), (bf16_vs_fp32, "tiny", 64)]
    else:
        checks = [(device_vs_cpu, "dynamixer_s", 8), (bf16_vs_fp32, "dynamixer_s", 64)]
        checks += [(device_vs_cpu, "dynamixer_m", 2), (device_vs_cpu, "dynamixer_l", 2)]
    for check, name, batch in checks:
        start = time.monotonic()
        entry = {"check": check.__name__, "status": "skipped", "error": "time budget"}
        if start <= deadline:
            try:
                entry = {"check": check.__name__, "status": "ok", **check(name, size, batch)}
            except Exception as exc:  # recorded; the other checks still run
                traceback.print_exc()
                entry = {"check": check.__name__, "status": "error", "error": short_error(exc)}
        entry["seconds"] = time.monotonic() - start
        result["checks"].append(entry)
        print(f"[correctness] {json.dumps(entry)}", flush=True)
        if path:
            write_json(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
