"""How large a training batch fits on a 16, 32 or 80 GB device, from XLA's own memory analysis.

Compiles (never runs) the training step of each model, dtype and ``remat`` choice at two batch
sizes on whatever backend JAX finds, reads ``compiled.memory_analysis()``, and fits
``bytes = fixed + per_image * batch``: ``fixed`` holds the parameters, AdamW's two moments, the
gradients and the optimiser's temporaries; ``per_image`` is the activation memory. Nothing is
allocated, so it runs on a CPU for any size. XLA:CPU fuses less than the GPU and TPU compilers,
so the CPU figures are an upper bound for those devices (run it there for theirs).

    python benchmarks/memory_fit.py [--models dynamixer_s dynamixer_m dynamixer_l]
        [--dtypes fp32 bf16] [--remat none minimal full] [--batches 8 16] [--json out.json]

Imports only jax, flax, optax, numpy and this package.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from benchlib.adamw import make_adamw_step
from benchlib.timing import compile_timed
from dynamixer_jax import create_model
from dynamixer_jax.model.init import abstract_variables

DEVICE_GB = (16, 32, 80)
DTYPES = {"fp32": None, "bf16": jnp.bfloat16}


def step_memory(model, batch: int) -> dict:
    """Bytes XLA assigns to one AdamW training step of ``model`` at ``batch`` (compile only)."""
    size = model.image_size if isinstance(model.image_size, int) else model.image_size[0]
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    params = abstract_variables(model)["params"]
    step, tx = make_adamw_step(model)
    opt_state = jax.eval_shape(tx.init, params)
    compiled, seconds = compile_timed(step, params, opt_state, images, labels, jax.random.key(0))
    analysis = compiled.memory_analysis()
    temp = analysis.temp_size_in_bytes
    arguments = analysis.argument_size_in_bytes
    # Donated parameters and optimiser state alias the outputs: count the arguments once.
    return {
        "batch": batch,
        "temp": temp,
        "arguments": arguments,
        "total": temp + arguments,
        "compile_s": seconds,
    }


def fit(
    model_name: str, dtype: str, remat: str, batches: tuple[int, int], image_size: int = 224
) -> dict:
    """The linear fit of step memory against batch, and the largest batch per device size."""
    model = create_model(
        model_name, image_size=image_size, drop_path_rate=0.1, remat=remat, dtype=DTYPES[dtype]
    )
    low, high = (step_memory(model, batch) for batch in batches)
    per_image = (high["total"] - low["total"]) / (high["batch"] - low["batch"])
    fixed = low["total"] - per_image * low["batch"]
    largest = {f"{gb}GB": max(0, int((gb * 1e9 * 0.95 - fixed) // per_image)) for gb in DEVICE_GB}
    return {
        "model": model_name,
        "dtype": dtype,
        "remat": remat,
        "image_size": image_size,
        "per_image_mb": per_image / 1e6,
        "fixed_gb": fixed / 1e9,
        "largest_batch": largest,
        "points": [low, high],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["dynamixer_s", "dynamixer_m", "dynamixer_l"]
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["none", "minimal", "full"])
    parser.add_argument("--batches", type=int, nargs=2, default=[8, 16])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    print(
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); 95% of each device "
        "size usable",
        flush=True,
    )
    print(
        f"{'model':>12} {'dtype':>5} {'remat':>8} {'MB/img':>7} {'fixed GB':>8} "
        + " ".join(f"{f'{gb} GB':>7}" for gb in DEVICE_GB),
        flush=True,
    )
    results = []
    for model_name in args.models:
        for dtype in args.dtypes:
            for remat in args.remat:
                row = fit(model_name, dtype, remat, tuple(args.batches), args.image_size)
                results.append(row)
                print(
                    f"{model_name:>12} {dtype:>5} {remat:>8} {row['per_image_mb']:>7.1f} "
                    f"{row['fixed_gb']:>8.2f} "
                    + " ".join(f"{row['largest_batch'][f'{gb}GB']:>7}" for gb in DEVICE_GB),
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": jax.default_backend(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
