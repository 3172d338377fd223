"""Compile time and activation memory of the library's own training step (compile only).

The step of ``dynamixer_jax.train.steps.make_train_step`` (device-side normalisation, Mixup/
CutMix, label smoothing, the loss guard, AdamW with the weight-decay mask, EMA) for one model on
a one-device mesh, lowered and compiled for an abstract uint8 batch; nothing runs.

    python benchmarks/compile_step.py [--model dynamixer_s] [--batch 32] [--dtypes fp32 bf16]
        [--remat minimal] [--scan-layers]

Imports only jax, flax, optax, numpy and this package (no TensorFlow).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from dynamixer_jax import create_model
from dynamixer_jax.train import parallel
from dynamixer_jax.train.mixup import MixupConfig
from dynamixer_jax.train.optimizer import make_optimizer
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_train_step
from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

prefer_memory_saving_scheduler()  # as main.py: before any JAX computation


def compile_train_step(
    model_name: str, batch: int, dtype: str, remat: str, scan_layers: bool
) -> dict:
    """Seconds to trace and to compile the training step, and XLA's temp bytes per image."""
    model = create_model(
        model_name,
        drop_path_rate=0.1,
        remat=remat,
        scan_layers=scan_layers,
        dtype=jnp.bfloat16 if dtype == "bf16" else None,
    )
    size = model.image_size
    mesh = parallel.make_mesh()
    schedule = optax.cosine_decay_schedule(1e-3, 1000)
    tx = make_optimizer(schedule, weight_decay=0.05)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    state = jax.eval_shape(
        lambda p: create_train_state(p, tx, seed=1, use_ema=True), params["params"]
    )
    step = make_train_step(
        model,
        tx,
        schedule,
        mesh,
        num_classes=model.num_classes,
        mixup=MixupConfig(label_smoothing=0.1),
        ema_decay=0.9999,
    )
    batch_spec = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "mask": jax.ShapeDtypeStruct((batch,), jnp.bool_),
    }
    start = time.perf_counter()
    lowered = step.lower(state, batch_spec)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    temp = compiled.memory_analysis().temp_size_in_bytes
    return {
        "trace_s": traced - start,
        "compile_s": done - traced,
        "temp_mb_per_image": temp / batch / 1e6,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--remat", default="minimal")
    parser.add_argument("--scan-layers", action="store_true")
    args = parser.parse_args()
    print(
        f"{jax.default_backend()}: {args.model} batch {args.batch} remat={args.remat} "
        f"scan_layers={args.scan_layers}",
        flush=True,
    )
    for dtype in args.dtypes:
        r = compile_train_step(args.model, args.batch, dtype, args.remat, args.scan_layers)
        print(
            f"{dtype}: trace {r['trace_s']:.1f} s, compile {r['compile_s']:.1f} s, "
            f"{r['temp_mb_per_image']:.0f} MB per image",
            flush=True,
        )


if __name__ == "__main__":
    main()
