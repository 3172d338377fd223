"""What a training step needs in memory, or what a mixer layer moves: compile only, nothing runs.

    python benchmarks/memory.py [--models S M L] [--dtypes fp32 bf16] [--remat none minimal full]
        [--batches 8 16] [--fit-gb 16 32 80] [--step adamw|library] [--scan-layers] [--json FILE]
    python benchmarks/memory.py --unit layer op --platform tpu cpu --dtypes bf16 --remat minimal \\
        --batches 8 [--stages stage1 stage3] [--mixing vector|dot] [--dump DIR]
    python benchmarks/memory.py --step library --platform tpu --models S --dtypes bf16 \\
        --remat minimal --batches 8        # the whole step for a TPU: ~15-40 min on 2 cores

``--unit step`` (the default) compiles a training step: ``--step adamw`` the plain AdamW step
``throughput.py`` times, ``--step library`` the library's own (``make_train_step``: device-side
augmentation, Mixup/CutMix, label smoothing, the loss guard, masked AdamW, EMA) on one device.
With two or more batches it fits the needed bytes (arguments + outputs - donated aliases +
temporaries + generated code) as ``fixed + per_image * batch`` through the smallest and largest
and prints the largest batch that fits each ``--fit-gb`` (95% of it usable). ``--unit layer``
and ``op``: one ``MixerLayer`` (wrapped for ``remat`` as the model wraps it) or one
``DynaMixerOp`` at DynaMixer-S's stage-1 (grid 32x32, C=192, S=8) and stage-3 (16x16, C=384,
S=16) sizes, forward and backward (the vjp of a cotangent passed in, so nothing folds away).
Every compile prints XLA's FLOPs, bytes accessed and temp bytes per image.

``--platform``: JAX's default device, ``cpu``, or ``tpu``: one v5e chip through libtpu
(``jax[tpu]``; no TPU needed) with the ``"vector"`` mixing a TPU runs. XLA:CPU fuses less than
the GPU and TPU compilers: read CPU figures as upper bounds for those.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchlib import DROP_PATH_RATE, DTYPES, UserError, create, model_name, write_json
from benchlib.steps import library_train_step, make_adamw_step
from benchlib.tpu_compile import chip_devices, quiet_libtpu
from benchlib.tpu_fit import Affine
from benchlib.xla_stats import compile_stats
from dynamixer_jax.model.layers import DynaMixerOp, MixerLayer
from dynamixer_jax.model.remat import remat_layer
from dynamixer_jax.model.variants import abstract_variables

USABLE = 0.95  # of each device size
# (grid side, channels, segments, reduced dim) of DynaMixer-S's stages 1 and 3.
STAGES = {"stage1": (32, 192, 8, 2), "stage3": (16, 384, 16, 2)}


def placed(tree, device):
    """Abstract arguments on ``device``: a compile for that device (which may be absent)."""
    on = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on), tree)


def step_args(model, batch: int, step: str, device):
    """(jitted step, abstract arguments) of one training step of ``model`` at ``batch``."""
    if step == "library":
        return library_train_step(model, jax.sharding.Mesh(np.array([device]), ("data",)), batch)
    size = model.image_size
    params = abstract_variables(model)["params"]
    fn, tx = make_adamw_step(model)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return fn, placed((params, jax.eval_shape(tx.init, params), images, labels, key), device)


def unit_args(unit: str, stage: str, batch: int, dtype, remat: str, mixing: str, device):
    """(jitted vjp, abstract arguments) of one mixer layer or DynaMixer op at a stage's size."""
    side, channels, segments, reduced = STAGES[stage]
    if unit == "layer":
        module = remat_layer(MixerLayer, remat, mixing)(
            side, side, segments, reduced, dtype=dtype, mixing=mixing
        )
        extra = (False,)  # train
    else:
        module, extra = DynaMixerOp(side, segments, reduced, dtype=dtype, mixing=mixing), ()
    x = jax.ShapeDtypeStruct((batch, side, side, channels), dtype or jnp.float32)
    params = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), *extra)
    )

    def fwd_bwd(params, x, cotangent):
        y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x, *extra), params, x)
        return vjp(cotangent.astype(y.dtype))

    return jax.jit(fwd_bwd), placed((params["params"], x, x), device)


def measure(unit: str, what: str, dtype: str, remat: str, device, args) -> dict:
    """Every batch's compile of one configuration, and the fit through them for a step."""
    platform = device.platform
    mixing = args.mixing or ("vector" if platform == "tpu" else "dot")
    if unit == "step":
        model = create(
            what,
            image_size=args.image_size,
            drop_path_rate=DROP_PATH_RATE,
            remat=remat,
            scan_layers=args.scan_layers,
            dtype=DTYPES[dtype],
            mixing=mixing,
        )
    row = {"platform": platform, "unit": unit, "model": what, "dtype": dtype, "remat": remat}
    row.update(mixing=mixing, step=args.step, image_size=args.image_size, points=[])
    for batch in args.batches:
        if unit == "step":
            fn, abstract = step_args(model, batch, args.step, device)
        else:
            fn, abstract = unit_args(unit, what, batch, DTYPES[dtype], remat, mixing, device)
        hlo = args.dump and os.path.join(args.dump, f"{platform}_{what}_{unit}_b{batch}.hlo.txt")
        stats = compile_stats(fn, abstract, hlo_path=hlo)
        per_image = {
            "mflop_per_image": stats["flops"] / batch / 1e6,
            "accessed_mb_per_image": stats["bytes_accessed"] / batch / 1e6,
            "temp_mb_per_image": stats["memory"]["temp_bytes"] / batch / 1e6,
        }
        row["points"].append({"batch": batch, **per_image, **stats})
        print(
            f"{platform:>4} {what:>12} {unit:>5} {dtype:>5} {remat:>8} batch {batch:>4}: "
            f"compile {stats['compile_s']:.1f} s; per image {per_image['mflop_per_image']:.1f} "
            f"MFLOP, {per_image['accessed_mb_per_image']:.2f} MB accessed, "
            f"{per_image['temp_mb_per_image']:.2f} MB temp; needs {stats['hbm_bytes'] / 1e9:.2f} GB",
            flush=True,
        )
    points = sorted(row["points"], key=lambda p: p["batch"])
    if unit == "step" and len(points) > 1:
        low, high = points[0], points[-1]
        fit = Affine.through((low["batch"], low["hbm_bytes"]), (high["batch"], high["hbm_bytes"]))
        row.update(per_image_mb=fit.per_image / 1e6, fixed_gb=fit.fixed / 1e9)
        row["largest_batch"] = {
            f"{gb:g}GB": fit.largest_batch(gb * 1e9 * USABLE) for gb in args.fit_gb
        }
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unit", choices=["step", "layer", "op"], nargs="+", default=["step"])
    parser.add_argument("--platform", nargs="+", default=[None], choices=["cpu", "tpu"])
    parser.add_argument("--models", nargs="+", default=["S", "M", "L"], help="S, M, L, tiny")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", default=["none", "minimal", "full"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--step", choices=["adamw", "library"], default="adamw")
    parser.add_argument(
        "--mixing", choices=["vector", "dot", "pallas"], help="default: what runs there"
    )
    parser.add_argument("--fit-gb", type=float, nargs="+", default=[16, 32, 80])
    parser.add_argument("--dump", metavar="DIR", help="write each optimised HLO module here")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    try:
        models = [model_name(m) for m in args.models]
        if len(set(args.batches)) != len(args.batches) or min(args.batches) < 1:
            raise UserError(f"--batches must be distinct positive sizes, not {args.batches}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "tpu" in args.platform:
        quiet_libtpu("v5e")  # before JAX starts a backend
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    rows = []
    for platform in args.platform:
        device = chip_devices("v5e")[0] if platform == "tpu" else jax.devices(platform)[0]
        step = f", the {args.step} step" if "step" in args.unit else ""
        print(f"{device.platform} ({device.device_kind}){step}", flush=True)
        for unit in args.unit:
            names = models if unit == "step" else args.stages
            for name in names:
                for dtype in args.dtypes:
                    for remat in ["-"] if unit == "op" else args.remat:
                        rows.append(measure(unit, name, dtype, remat, device, args))
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
        write_json(args.json, {"results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
