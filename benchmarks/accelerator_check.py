"""Correctness, then throughput, of DynaMixer on one accelerator, in about 7 minutes at most.

    python benchmarks/accelerator_check.py [--out DIR] [--quick] 2>&1 | tee DIR/log.txt

Writes correctness.json (the checks alone: ``--json FILE``), then throughput.json (the race of
``throughput.py``) to ``--out``. README: "Benchmarks on any device" and "Speed and memory".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import jax
import numpy as np

from benchlib import create, torch_twin, write_json
from dynamixer_jax.convert import torch_to_flax

HERE = os.path.dirname(os.path.abspath(__file__))
# The baselines first: a setting the budget leaves out is one of the last.
RACE = "peak torch jax:minimal torch-compile jax:none jax:full jax-scan:minimal"
RACE += " torch@M jax:minimal@M torch@L jax:minimal@L"
QUICK_RACE = "peak torch@tiny jax:minimal@tiny torch-compile@tiny jax:none@tiny"


def twin_and_params(name: str, image_size: int):
    """(torch twin with randomised weights, the same weights as Flax params in numpy): every
    parameter random, logits O(1), so mistakes in biases or norms show and argmaxes are no ties."""
    import dynamixer_torch

    twin = dynamixer_torch.randomize_(torch_twin(name, image_size), seed=0).eval()
    return twin, torch_to_flax(twin.state_dict(), create(name, image_size=image_size))["params"]


def smooth_images(batch: int, size: int, seed: int) -> np.ndarray:
    """Images that look like blurry photos: 8x8 normal noise upsampled (cubic) to size x size."""
    coarse = np.random.default_rng(seed).standard_normal((batch, 8, 8, 3)).astype(np.float32)
    coarse = jax.device_put(coarse, jax.devices("cpu")[0])
    return np.asarray(jax.image.resize(coarse, (batch, size, size, 3), "cubic"))


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
    """Float32 logits on the default device against the host CPU's at ``highest`` matmul
    precision (so TF32 cannot hide a bug) and at the default one, and against the PyTorch twin's
    on its device, TF32 off."""
    import torch

    twin, params = twin_and_params(name, image_size)
    model = create(name, image_size=image_size)
    images = smooth_images(batch, image_size, seed=1)
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    on_cpu = logits_on(model, params, images, cpu, "highest")
    on_device = logits_on(model, params, images, device, "highest")
    default = logits_on(model, params, images, device, "default")
    torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        twin_logits = twin.to(torch_device)(x.to(torch_device)).float().cpu().numpy()
    return {
        "model": name,
        "batch": batch,
        "device": str(device),
        "cpu": str(cpu),
        "logit_std": float(on_cpu.std()),
        "highest": errors(on_device, on_cpu),
        "default_precision": errors(default, on_cpu),
        "top1_agreement_default_vs_cpu": float(np.mean(default.argmax(-1) == on_cpu.argmax(-1))),
        "jax_vs_torch": {"torch_device": str(torch_device), **errors(on_device, twin_logits)},
    }


def bf16_vs_fp32(name: str, image_size: int, batch: int) -> dict:
    """Top-1 agreement and logit error of bfloat16 against float32 on smooth random images."""
    _, params = twin_and_params(name, image_size)
    images = smooth_images(batch, image_size, seed=2)
    device = jax.devices()[0]
    fp32 = logits_on(create(name, image_size=image_size), params, images, device, "highest")
    bf16 = logits_on(create(name, "bf16", image_size=image_size), params, images, device, "default")
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


def correctness(path: str, quick: bool, budget_s: float) -> dict:
    """Every check in turn (none started after ``budget_s``), the record rewritten after each."""
    deadline = time.monotonic() + budget_s
    size, device = 56 if quick else 224, jax.devices()[0]
    result = {"jax": jax.__version__, "device": str(device), "device_kind": device.device_kind}
    result.update(platform=device.platform, image_size=size, checks=[])
    result["environment"] = jax.print_environment_info(return_string=True)
    if quick:
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
                error = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:400]
                entry = {"check": check.__name__, "status": "error", "error": error}
        entry["seconds"] = time.monotonic() - start
        result["checks"].append(entry)
        print(f"[correctness] {json.dumps(entry)}", flush=True)
        write_json(path, result)
    return result


def check_line(c: dict) -> str:
    """One check's figures in a line."""
    if c["status"] != "ok":
        return f"{c['check']:<14} {c['status']}: {c.get('error')}"
    if c["check"] == "device_vs_cpu":
        return (
            f"device_vs_cpu  {c['model']:<12} highest max_rel {c['highest']['max_rel']:.2e}  "
            f"default max_rel {c['default_precision']['max_rel']:.2e}  "
            f"jax_vs_torch max_rel {c['jax_vs_torch']['max_rel']:.2e}"
        )
    return (
        f"bf16_vs_fp32   {c['model']:<12} top-1 agreement {100 * c['top1_agreement']:.1f}%  "
        f"max |dlogit| / std {c['max_abs_over_logit_std']:.3f}"
    )


def whole_check(args) -> None:
    """The correctness checks, then the throughput race, each in its own process and budget."""
    out = os.path.abspath(args.out or os.environ.get("OUT") or "accelerator_out")
    os.makedirs(out, exist_ok=True)
    scale, quick = args.time_scale, ["--quick"] if args.quick else []
    race = args.settings or (QUICK_RACE if args.quick else RACE).split()
    race_args = ["--batches", str(args.batch or (2 if args.quick else 128))]
    race_args += ["--image-size", "56", "--steps", "3"] if args.quick else ["--steps", "30"]
    race_args += ["--budget-s", str(270 * scale), "--setting-timeout-s", str(200 * scale)]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    started = time.monotonic()
    checks = [sys.executable, __file__, *quick, "--budget-s", str(100 * scale)]
    checks += ["--json", os.path.join(out, "correctness.json")]
    try:
        code = subprocess.run(checks, env=env, timeout=130 * scale).returncode
    except subprocess.TimeoutExpired:
        code = "killed at its budget"
    print(f"correctness exit code {code}", flush=True)
    timer = [sys.executable, os.path.join(HERE, "throughput.py"), "--dtype", "bf16"]
    timer += ["--rounds", "1", "--warmup", "2", *race_args]
    timer += ["--settings", *race, "--json", os.path.join(out, "throughput.json")]
    print(f"training-step race exit code {subprocess.run(timer, env=env).returncode}", flush=True)
    with open(os.path.join(out, "correctness.json")) as f:
        print("\n".join(map(check_line, json.load(f)["checks"])))
    print(f"done in {time.monotonic() - started:.0f} s; files in {out}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="run only the correctness checks, into this file")
    parser.add_argument("--out", help="the whole check's folder (default $OUT, ./accelerator_out)")
    parser.add_argument("--quick", action="store_true", help="tiny models at 56x56 (CPU smoke)")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no check after")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every budget")
    parser.add_argument("--settings", nargs="+", help="the race's (throughput.py's names)")
    parser.add_argument("--batch", type=int, help="the race's batch (default 128)")
    args = parser.parse_args(argv)
    if args.json:
        correctness(args.json, args.quick, args.budget_s)
    else:
        whole_check(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
