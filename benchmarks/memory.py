"""What a training step needs in memory, and moves, by the compiler alone: nothing runs.

Commands and figures: README, "Benchmarks on any device", and for ``--tpu`` (one chip of each
generation, compiles cached in ``benchmarks/results/tpu-compile/``) "On a TPU". XLA:CPU fuses
less than the GPU and TPU compilers: read CPU figures as upper bounds for those.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from jax.sharding import Mesh

import benchlib
from benchlib import DTYPES, UserError, table_header, table_row, write_json
from benchlib.steps import abstract_adamw_step, library_train_step, published_train_step
from benchlib.tpu_compile import CHIPS, chip_devices, versions
from benchlib.tpu_fit import Affine
from benchlib.xla_stats import compile_stats
from dynamixer_jax.model import traffic
from dynamixer_jax.model.variants import PUBLISHED

USABLE = 0.95  # of each --fit-gb
RESULTS = os.path.join(benchlib.REPO, "benchmarks", "results", "tpu-compile")
DEVICES = 8  # the published recipe's setup: 8 GPUs, or the 8 cores of a v3-8 / v4-8
GIB = 2**30


def compiled_point(step, abstract, batch: int, label: str) -> dict:
    """:func:`compile_stats` of ``step`` on ``abstract`` arguments, per-image figures, printed."""
    stats = compile_stats(step, abstract)
    mflop, accessed = stats["flops"] / batch / 1e6, stats["bytes_accessed"] / batch / 1e6
    temp, gb = stats["memory"]["temp_bytes"] / batch / 1e6, stats["hbm_bytes"] / 1e9
    print(
        f"{label} batch {batch:>4}: compile {stats['compile_s']:.1f} s; per image {mflop:.1f} "
        f"MFLOP, {accessed:.2f} MB accessed, {temp:.2f} MB temp; needs {gb:.2f} GB",
        flush=True,
    )
    per_image = dict(mflop_per_image=mflop, accessed_mb_per_image=accessed, temp_mb_per_image=temp)
    return {"batch": batch, **per_image, **stats}


def fit(points: list[dict], field: str = "hbm_bytes") -> Affine:
    """``field`` as ``fixed + per_image * batch`` through the smallest and the largest batch."""
    low, high = min(points, key=lambda p: p["batch"]), max(points, key=lambda p: p["batch"])
    return Affine.through((low["batch"], low[field]), (high["batch"], high[field]))


def local_row(name: str, dtype: str, remat: str, args) -> dict:
    """Every batch's compile of one model, dtype and remat here, and the largest batches."""
    model = benchlib.create(
        name,
        dtype,
        image_size=args.image_size,
        drop_path_rate=benchlib.DROP_PATH_RATE,
        remat=remat,
        scan_layers=args.scan_layers,
    )
    device, label = jax.devices()[0], f"{name:>12} {dtype:>5} {remat:>8}"
    row = {"platform": device.platform, "model": name, "dtype": dtype, "remat": remat}
    row.update(step=args.step, image_size=args.image_size, points=[])
    for batch in args.batches:
        if args.step == "library":
            step, abstract = library_train_step(model, Mesh(np.array([device]), ("data",)), batch)
        else:
            step, abstract = abstract_adamw_step(model, batch)
        row["points"].append(compiled_point(step, abstract, batch, label))
    if len(args.batches) > 1:
        hbm = fit(row["points"])
        row.update(per_image_mb=hbm.per_image / 1e6, fixed_gb=hbm.fixed / 1e9)
        row["largest_batch"] = {
            f"{gb:g}GB": hbm.largest_batch(gb * 1e9 * USABLE) for gb in args.fit_gb
        }
    return row


def tpu_point(generation: str, variant: str, batch: int, remat: str, args) -> dict | None:
    """One compile's record for a TPU chip: from the cache, else compiled and cached (None if
    ``--libtpu-version`` forbids compiling); ``"dot"``, the first layout, has no name suffix."""
    found = versions(args.libtpu_version)
    layout = f"_{args.mixing}" if args.mixing != "dot" else ""
    name = f"jax{found['jax']}_libtpu{found['libtpu']}_{generation}_{variant}_b{batch}_{remat}"
    path = os.path.join(RESULTS, f"{name}_bf16{layout}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if args.libtpu_version:
        return None
    devices = chip_devices(generation)  # a one-device mesh: the per-device program
    mesh = Mesh(np.array(devices[:1]), ("data",))
    step, abstract, _ = published_train_step(variant, batch, mesh, remat=remat, mixing=args.mixing)
    label = f"{generation:>4} {variant:>12} {remat:>8}"
    record = {
        "generation": generation,
        "device_kind": devices[0].device_kind,
        "devices_per_chip": len(devices),
        "variant": variant,
        "remat": remat,
        "dtype": "bf16",
        "grad_accum_steps": 1,
        "mixing": args.mixing,
        "versions": found,
        **compiled_point(step, abstract, batch, label),
    }
    write_json(path, record, sort_keys=True)
    return record


def tpu_row(generation: str, variant: str, points: list[dict]) -> dict:
    """The README's figures of one generation and variant: the fits at the published batch."""
    chip, per_chip = CHIPS[generation], points[0]["devices_per_chip"]
    capacity = chip.hbm_bytes / per_chip
    batch = PUBLISHED[variant]["batch_size"] // DEVICES
    fits = {field: fit(points, field) for field in ("hbm_bytes", "flops", "bytes_accessed")}
    at = {field: line.at(batch) for field, line in fits.items()}
    model = benchlib.create(variant, "bf16")
    return {
        "generation": generation,
        "device_kind": points[0]["device_kind"],
        "variant": variant,
        "remat": points[0]["remat"],
        "chip": {"hbm": chip.hbm, "source": chip.source},
        "devices_per_chip": per_chip,
        "device_hbm_gib": capacity / GIB,
        "measured_batches": sorted(p["batch"] for p in points),
        "compile_s": {p["batch"]: p["compile_s"] for p in points},
        "fixed_hbm_gb": fits["hbm_bytes"].fixed / 1e9,
        "hbm_mb_per_image": fits["hbm_bytes"].per_image / 1e6,
        "published_device_batch": batch,
        "published_hbm_gib": at["hbm_bytes"] / GIB,
        "published_headroom_gib": (capacity - at["hbm_bytes"]) / GIB,
        "largest_device_batch": fits["hbm_bytes"].largest_batch(capacity),
        "xla_gflops_per_image": at["flops"] / batch / 1e9,
        "xla_gb_accessed_per_image": at["bytes_accessed"] / batch / 1e9,
        "minimum_gb_per_image": traffic.training_bytes_per_image(model, batch) / 1e9,
    }


def tpu_table(rows: list[dict]) -> str:
    """The README's table: one row per generation and variant."""
    header = ["TPU", "variant", "HBM/device", "batch/device", "HBM there (headroom)"]
    header += ["largest batch", "MB/image", "GFLOP/image", "GB accessed/image (minimum)"]
    lines = [table_header(header)]
    for r in rows:
        there = f"{r['published_hbm_gib']:.1f} GiB ({r['published_headroom_gib']:+.1f})"
        accessed = f"{r['xla_gb_accessed_per_image']:.2f} ({r['minimum_gb_per_image']:.2f})"
        cells = [r["generation"], r["variant"].split("_")[1].upper()]
        cells += [f"{r['device_hbm_gib']:.1f} GiB", r["published_device_batch"], there]
        cells += [r["largest_device_batch"], f"{r['hbm_mb_per_image']:.0f}"]
        lines.append(table_row([*cells, f"{r['xla_gflops_per_image']:.1f}", accessed]))
    return "\n".join(lines)


def tpu_rows(models: list[str], args) -> list[dict]:
    """Every generation's rows for each model and remat; each remat's summary and table."""
    rows = []
    for remat in args.remat or ["minimal"]:
        found = []
        for variant in models:
            for generation in args.tpu:
                points = [tpu_point(generation, variant, b, remat, args) for b in args.batches]
                if None in points:
                    print(f"missing: {generation} {variant} {remat}", flush=True)
                else:
                    found.append(tpu_row(generation, variant, points))
        if found:
            summary = {"versions": versions(args.libtpu_version), "devices": DEVICES, "rows": found}
            layout = f"_{args.mixing}" if args.mixing != "dot" else ""
            path = os.path.join(RESULTS, f"summary_{remat}{layout}.json")
            write_json(path, summary, sort_keys=True)
            print(tpu_table(found), flush=True)
        rows += found
    return rows


def local_table(rows: list[dict], fit_gb: list[float]) -> str:
    """Per model, dtype and remat: MB per image, the fixed GB and the largest batches."""
    header = ["model", "dtype", "remat", "MB/img", "fixed GB", *(f"{gb:g} GB" for gb in fit_gb)]
    lines = [f"\n{USABLE:.0%} of each device size usable", table_header(header)]
    for row in rows:
        cells = [row["model"], row["dtype"], row["remat"], f"{row['per_image_mb']:.1f}"]
        lines.append(table_row([*cells, f"{row['fixed_gb']:.2f}", *row["largest_batch"].values()]))
    return "\n".join(lines)


def run(argv=None) -> list[dict]:
    """The whole analysis; returns the rows as written to ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["S", "M", "L"], help="S, M, L, tiny")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--remat", nargs="+", help="default: none minimal full (--tpu: minimal)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scan-layers", action="store_true")
    parser.add_argument("--step", choices=["adamw", "library"], default="adamw")
    parser.add_argument("--fit-gb", type=float, nargs="+", default=[16, 32, 80])
    parser.add_argument("--tpu", nargs="+", choices=list(CHIPS), help="TPU generations")
    parser.add_argument("--mixing", choices=["vector", "dot", "pallas"], default="vector")
    parser.add_argument("--libtpu-version", help="--tpu: read this libtpu's cache (0.0.42.1)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    models = [benchlib.model_name(m) for m in args.models]
    if len(set(args.batches)) != len(args.batches) or min(args.batches) < 1:
        raise UserError(f"--batches must be distinct positive sizes, not {args.batches}")
    if args.tpu and "tiny" in models:
        raise UserError("--tpu compiles the published variants: S, M or L")
    if args.tpu:
        rows = tpu_rows(models, args)
    else:
        print(f"{jax.devices()[0].device_kind}, the {args.step} step", flush=True)
        remats = args.remat or ["none", "minimal", "full"]
        rows = [local_row(m, d, r, args) for m in models for d in args.dtypes for r in remats]
        if len(args.batches) > 1:
            print(local_table(rows, args.fit_gb), flush=True)
    if args.json:
        write_json(args.json, {"results": rows})
    return rows


def main(argv=None) -> int:
    return benchlib.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
