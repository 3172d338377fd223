"""What a training step needs in memory, and how large a batch fits N GB: compile only, nothing runs.

Compiles (never runs) a training step of each model, dtype and ``remat`` choice at each of
``--batches`` on whatever device JAX finds, and reads XLA's memory analysis (needed bytes =
arguments + outputs - donated aliases + temporaries + generated code) and cost analysis. With two
or more batches it fits ``needed = fixed + per_image * batch`` through the smallest and the
largest (``fixed``: parameters, AdamW's moments, gradients and the update; ``per_image``: the
activations) and gives the largest batch that fits each of ``--fit-gb`` (95% of it usable).
Nothing is allocated, so it runs on a CPU for any size; XLA:CPU fuses less than the GPU and TPU
compilers, so CPU figures are an upper bound for those devices (run it there for theirs).

    python benchmarks/memory.py [--models S M L] [--dtypes fp32 bf16] [--remat none minimal full]
        [--batches 8 16] [--fit-gb 16 32 80] [--json out.json]
    python benchmarks/memory.py --step library --models S --remat minimal --batches 32 [--scan-layers]

``--step adamw`` (the default) is the plain AdamW step ``benchmarks/throughput.py`` times;
``--step library`` is the library's own (``make_train_step``: device-side normalisation,
Mixup/CutMix, label smoothing, the loss guard, AdamW with the weight-decay mask, EMA) on a
one-device mesh, for an abstract uint8 batch (``benchlib.published_step.library_train_step``).
The TPU figures are ``benchmarks/tpu_compile.py``'s (compiled for a chip this machine lacks).
Imports only jax, flax, optax, numpy and this package.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from benchlib import UserError, write_json
from benchlib.adamw import make_adamw_step
from benchlib.models import DROP_PATH_RATE, DTYPES, create, model_name
from benchlib.published_step import library_train_step
from benchlib.tpu_compile import compile_stats
from benchlib.tpu_fit import Affine
from dynamixer_jax.model.variants import abstract_variables
from dynamixer_jax.train import parallel

USABLE = 0.95  # of each device size


def abstract_step(model, batch: int, step: str):
    """(jitted step, abstract arguments) of one training step of ``model`` at ``batch``."""
    if step == "library":
        return library_train_step(model, parallel.make_mesh(), batch)
    size = model.image_size
    params = abstract_variables(model)["params"]
    fn, tx = make_adamw_step(model)
    return fn, (
        params,
        jax.eval_shape(tx.init, params),
        jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.eval_shape(lambda: jax.random.key(0)),
    )


def measure(name: str, dtype: str, remat: str, args) -> dict:
    """Every batch's compile of one configuration, and the fit through them."""
    model = create(
        name,
        image_size=args.image_size,
        drop_path_rate=DROP_PATH_RATE,
        remat=remat,
        scan_layers=args.scan_layers,
        dtype=DTYPES[dtype],
    )
    points = []
    for batch in args.batches:
        stats = compile_stats(*abstract_step(model, batch, args.step))
        temp = stats["memory"]["temp_bytes"]
        points.append({"batch": batch, "temp_mb_per_image": temp / batch / 1e6, **stats})
        print(
            f"{name:>12} {dtype:>5} {remat:>8} batch {batch:>4}: lower {stats['lower_s']:.1f} s, "
            f"compile {stats['compile_s']:.1f} s, temp {temp / batch / 1e6:.0f} MB per image, "
            f"needs {stats['hbm_bytes'] / 1e9:.2f} GB",
            flush=True,
        )
    row = {"model": name, "dtype": dtype, "remat": remat, "step": args.step, "points": points}
    row.update(image_size=args.image_size, scan_layers=args.scan_layers)
    if len(points) > 1:
        low, high = min(points, key=lambda p: p["batch"]), max(points, key=lambda p: p["batch"])
        fit = Affine.through((low["batch"], low["hbm_bytes"]), (high["batch"], high["hbm_bytes"]))
        row.update(per_image_mb=fit.per_image / 1e6, fixed_gb=fit.fixed / 1e9)
        row["largest_batch"] = {
            f"{gb:g}GB": fit.largest_batch(gb * 1e9 * USABLE) for gb in args.fit_gb
        }
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["S", "M", "L"], help="S, M, L, tiny")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["none", "minimal", "full"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--step", choices=["adamw", "library"], default="adamw")
    parser.add_argument("--fit-gb", type=float, nargs="+", default=[16, 32, 80])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        models = [model_name(m) for m in args.models]
        if len(set(args.batches)) != len(args.batches) or min(args.batches) < 1:
            raise UserError(f"--batches must be distinct positive sizes, not {args.batches}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = jax.devices()[0]
    print(f"{device.platform} ({device.device_kind}): the {args.step} step", flush=True)
    rows = [measure(m, d, r, args) for m in models for d in args.dtypes for r in args.remat]
    fitted = [row for row in rows if "largest_batch" in row]
    if fitted:
        print(f"\n{USABLE:.0%} of each device size usable")
        print(
            f"{'model':>12} {'dtype':>5} {'remat':>8} {'MB/img':>7} {'fixed GB':>8} "
            + " ".join(f"{f'{gb:g} GB':>7}" for gb in args.fit_gb)
        )
        for row in fitted:
            print(
                f"{row['model']:>12} {row['dtype']:>5} {row['remat']:>8} "
                f"{row['per_image_mb']:>7.1f} {row['fixed_gb']:>8.2f} "
                + " ".join(f"{n:>7}" for n in row["largest_batch"].values())
            )
    if args.json:
        write_json(args.json, {"platform": device.platform, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
