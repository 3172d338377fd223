"""Memory traffic of the token mixing: FLOPs, bytes accessed and temp bytes per image, from the
compiler, for one mixer layer and for the DynaMixer op alone, forward + backward (compile only).

    python benchmarks/mixing_traffic.py [--platform tpu cpu] [--batch 8] [--dtype bf16]
        [--remat minimal] [--mixing xla] [--units layer op] [--dump DIR]
    python benchmarks/mixing_traffic.py --step [--batch 8] [--platform tpu]

``--step`` compiles the library's whole training step instead (``make_train_step``: DynaMixer-S,
bf16, the given remat, AdamW, EMA, Mixup/CutMix; ``benchlib.published_step.library_train_step``,
as ``benchmarks/memory.py --step library``) on a
one-device mesh: about 15 minutes for a TPU on 2 CPU cores. Run it with ``PYTHONPATH`` pointing at
another checkout to measure that checkout's model the same way.

TPU figures come from compiling for an abstract v5e chip (``jax.experimental.topologies``): no
TPU is needed, only libtpu (``jax[tpu]``). Sizes are DynaMixer-S's: stage 1 (grid 32x32, C=192,
S=8, r=2) and stage 3 (grid 16x16, C=384, S=16, r=2). Each unit is the vjp of the unit's output
with respect to its parameters and its input, for a cotangent given as an argument (so nothing
folds to a constant). One JSON line per (platform, stage, unit). ``--dump DIR`` writes each
optimised HLO module there, to find which ops move the bytes.

Imports only jax, flax, numpy and this package.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pathlib

import jax
import jax.numpy as jnp

from benchlib.xla_stats import costs
from dynamixer_jax.model.layers import DynaMixerOp, MixerLayer
from dynamixer_jax.model.remat import remat_layer

# (name, grid side, channels, segments, reduced dim) of DynaMixer-S's stages 1 and 3.
STAGES = (("stage1", 32, 192, 8, 2), ("stage3", 16, 384, 16, 2))
DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}


def tpu_device():
    """One device of an abstract v5e topology (compile-only: nothing runs on it)."""
    from jax.experimental import topologies

    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    topology = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
    return topology.devices[0]


def _accepts(cls, field: str) -> bool:
    """Whether the module class has ``field`` (so the script also measures older code)."""
    return field in inspect.signature(cls).parameters


def mixing_fields(platform: str, args) -> dict:
    """The ``mixing`` field to build with: ``--mixing``, else what ``"auto"`` picks on that
    platform's own host ("vector" on a TPU; a TPU compiled from a CPU host would get "dot");
    nothing for code without the field."""
    if not _accepts(MixerLayer, "mixing"):
        return {}
    return {"mixing": args.mixing or ("vector" if platform == "tpu" else "dot")}


def build_unit(unit: str, side: int, channels: int, segments: int, reduced: int, platform, args):
    """(module, apply function of (params, x)) of one mixer layer or one DynaMixer op."""
    extra = mixing_fields(platform, args)
    dtype = DTYPES[args.dtype]
    if unit == "layer":
        cls = remat_layer(MixerLayer, args.remat, extra.get("mixing", "dot"))
        module = cls(side, side, segments, reduced, dtype=dtype, **extra)

        def apply(params, x):
            return module.apply({"params": params}, x, False)

    else:
        module = DynaMixerOp(side, segments, reduced, dtype=dtype, **extra)

        def apply(params, x):
            return module.apply({"params": params}, x)

    return module, apply


def compile_unit(unit: str, stage: tuple, platform: str, args):
    """The compiled vjp of one unit for ``platform``."""
    _, side, channels, segments, reduced = stage
    module, apply = build_unit(unit, side, channels, segments, reduced, platform, args)
    dtype = DTYPES[args.dtype]
    x = jax.ShapeDtypeStruct((args.batch, side, side, channels), dtype)
    init_args = (jax.random.key(0), jnp.zeros(x.shape, x.dtype))
    if unit == "layer":
        init_args += (False,)
    params = jax.eval_shape(lambda: module.init(*init_args)["params"])

    def fwd_bwd(params, x, cotangent):
        y, vjp = jax.vjp(apply, params, x)
        return vjp(cotangent.astype(y.dtype))

    if platform == "tpu":
        sharding = jax.sharding.SingleDeviceSharding(tpu_device())
        jitted = jax.jit(fwd_bwd, in_shardings=sharding, out_shardings=sharding)
    else:
        jitted = jax.jit(fwd_bwd, backend="cpu")
    return jitted.lower(params, x, x).compile()


def compile_train_step(platform: str, args):
    """The compiled training step of DynaMixer-S (bf16) for ``args.batch`` images on one device."""
    import numpy as np

    from benchlib.published_step import library_train_step
    from dynamixer_jax import create_model

    extra = mixing_fields(platform, args)
    model = create_model(
        "dynamixer_s", drop_path_rate=0.1, remat=args.remat, dtype=DTYPES[args.dtype], **extra
    )
    device = tpu_device() if platform == "tpu" else jax.devices("cpu")[0]
    mesh = jax.sharding.Mesh(np.array([device]), ("data",))
    step, step_args = library_train_step(model, mesh, args.batch)
    return step.lower(*step_args).compile()


def figures(compiled, batch: int) -> dict:
    """FLOPs, bytes accessed and temp bytes per image (MB for bytes, MFLOP for FLOPs)."""
    cost = costs(compiled)
    memory = compiled.memory_analysis()
    return {
        "mflop_per_image": round(cost["flops"] / batch / 1e6, 1),
        "accessed_mb_per_image": round(cost["bytes_accessed"] / batch / 1e6, 2),
        "temp_mb_per_image": round(memory.temp_size_in_bytes / batch / 1e6, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--platform", nargs="+", default=["tpu", "cpu"], choices=["tpu", "cpu"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--remat", default="minimal")
    parser.add_argument(
        "--mixing", default=None, help="the layers' mixing field, where they have one"
    )
    parser.add_argument("--units", nargs="+", default=["layer", "op"], choices=["layer", "op"])
    parser.add_argument("--stages", nargs="+", default=[s[0] for s in STAGES])
    parser.add_argument("--dump", default=None, help="folder for the optimised HLO text")
    parser.add_argument("--step", action="store_true", help="the whole training step instead")
    args = parser.parse_args()
    if args.step:
        for platform in args.platform:
            row = {"platform": platform, "unit": "train_step", "model": "dynamixer_s"}
            row.update(batch=args.batch, dtype=args.dtype, remat=args.remat)
            row.update(mixing=mixing_fields(platform, args).get("mixing"))
            row.update(figures(compile_train_step(platform, args), args.batch))
            print(json.dumps(row), flush=True)
        return
    for platform in args.platform:
        for stage in STAGES:
            if stage[0] not in args.stages:
                continue
            for unit in args.units:
                compiled = compile_unit(unit, stage, platform, args)
                row = {"platform": platform, "stage": stage[0], "unit": unit, "batch": args.batch}
                row.update(dtype=args.dtype, remat=args.remat)
                row.update(mixing=mixing_fields(platform, args).get("mixing"))
                row.update(figures(compiled, args.batch))
                print(json.dumps(row), flush=True)
                if args.dump:
                    folder = pathlib.Path(args.dump)
                    folder.mkdir(parents=True, exist_ok=True)
                    name = f"{platform}_{stage[0]}_{unit}.hlo.txt"
                    (folder / name).write_text(compiled.as_text())


if __name__ == "__main__":
    main()
