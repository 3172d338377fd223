"""The TPU compile lab: what the library's training step needs on each TPU generation, from libtpu's
compiler alone (no TPU needed; compiler estimates, nothing runs).

    python benchmarks/tpu_compile.py [--generations v3 v4 v5e v5p v6e]
        [--variants dynamixer_s dynamixer_m dynamixer_l] [--batches 8 16] [--remat minimal]
        [--mixing vector|dot|pallas] [--verify v5e:dynamixer_s[:BATCH] ...] [--cached-only]
    python benchmarks/tpu_compile.py --cached-only --libtpu-version 0.0.42.1   # no libtpu needed

For each generation and variant it compiles the step as ``configs/imagenet.py`` builds it for
one chip at two per-device batches (each compile in its own process, cached as JSON in
``benchmarks/results/tpu-compile/``, so a rerun compiles only what is missing), fits HBM, FLOPs
and bytes accessed as ``fixed + per_image * batch``, and extrapolates to the variant's
per-device batch on 8 devices and to the largest batch that fits. ``--verify`` also compiles at
BATCH (default: the published per-device batch), reports the fit's error there, and fits through
the two largest compiles. Writes ``summary_<remat>[_<mixing>].json`` there and prints the
README's table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

from benchlib import REPO, write_json
from benchlib.tpu_compile import CHIPS, versions
from benchlib.tpu_fit import Affine, accumulation_to_fit, roofline_images_per_s

RESULTS = os.path.join(REPO, "benchmarks", "results", "tpu-compile")
DEVICES = 8  # the published recipe's setup: 8 GPUs, or the 8 cores of a v3-8 / v4-8
GIB = 2**30


def cache_name(found: dict, generation, variant, batch, remat, accum, mixing) -> str:
    """The file of one compile's record: everything that changes the answer (``"dot"``, the
    layout every model had before ``"vector"``, and one accumulation step leave no suffix)."""
    accum = f"_accum{accum}" if accum != 1 else ""
    layout = f"_{mixing}" if mixing != "dot" else ""
    return (
        f"jax{found['jax']}_libtpu{found['libtpu']}_{generation}_{variant}"
        f"_b{batch}_{remat}_bf16{accum}{layout}.json"
    )


def load(name: str) -> dict | None:
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def compile_one(generation: str, variant: str, batch: int, args) -> dict:
    """Compile the step once (in this process) and return its record."""
    from benchlib.steps import published_train_step
    from benchlib.tpu_compile import chip_devices, chip_mesh
    from benchlib.xla_stats import compile_stats

    devices = chip_devices(generation)
    mesh, accum = chip_mesh(generation), args.accum
    step, abstract, _ = published_train_step(
        variant, batch, mesh, remat=args.remat, grad_accum_steps=accum, mixing=args.mixing
    )
    stats = compile_stats(step, abstract)
    return {
        "generation": generation,
        "device_kind": devices[0].device_kind,
        "devices_per_chip": len(devices),
        "variant": variant,
        "batch": batch,
        "remat": args.remat,
        "dtype": "bf16",
        "grad_accum_steps": args.accum,
        "mixing": args.mixing,
        "versions": versions(),
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        **stats,
    }


def ensure(generation: str, variant: str, batch: int, args) -> dict | None:
    """The cached record, compiling it in a child process first if it is missing."""
    names = versions(args.libtpu_version), generation, variant, batch
    name = cache_name(*names, args.remat, args.accum, args.mixing)
    record = load(name)
    if record is not None or args.cached_only:
        return record
    start = time.time()
    print(f"compiling {generation} {variant} batch {batch} ({args.remat}) ...", flush=True)
    child = [sys.executable, os.path.abspath(__file__), "--one", generation, variant, str(batch)]
    child += ["--remat", args.remat, "--accum", str(args.accum), "--mixing", args.mixing]
    done = subprocess.run(child, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line[:1] not in ("W", "I")]
        print("  failed:", "\n".join(lines[-5:]), flush=True)
        return None
    record = load(name)
    print(f"  {time.time() - start:.0f} s wall, compile {record['compile_s']:.0f} s", flush=True)
    return record


def per_device_batch(variant: str) -> int:
    from dynamixer_jax.model.variants import PUBLISHED

    return PUBLISHED[variant]["batch_size"] // DEVICES


def summarise(generation, variant, points, verify=None) -> dict:
    """Fits, extrapolations, fit on the chip, roofline and analytic figures of one pair."""
    import jax.numpy as jnp

    from dynamixer_jax import create_model
    from dynamixer_jax.model import flops, traffic

    chip = CHIPS[generation]
    low, high = sorted(points, key=lambda r: r["batch"])
    measured = [*points, *([verify] if verify else [])]
    per_chip = low["devices_per_chip"]
    capacity = chip.hbm_bytes / per_chip
    peak, bandwidth = chip.bf16_tflops * 1e12 / per_chip, chip.hbm_gb_s * 1e9 / per_chip
    fields = ("hbm_bytes", "flops", "bytes_accessed")

    def fit_through(a, b):
        return {f: Affine.through((a["batch"], a[f]), (b["batch"], b[f])) for f in fields}

    fits = fit_through(low, high)
    if verify is not None:
        errors = {f: fits[f].at(verify["batch"]) / verify[f] - 1 for f in fields}
        if verify["batch"] > high["batch"]:  # extrapolate from the two largest compiles
            low, high = high, verify
            fits = fit_through(low, high)
    batch = per_device_batch(variant)
    largest = fits["hbm_bytes"].largest_batch(capacity)
    at = {field: fit.at(batch) for field, fit in fits.items()}
    model = create_model(variant, dtype=jnp.bfloat16)
    minimum_bytes = traffic.training_bytes_per_image(model, batch)
    xla = roofline_images_per_s(at["flops"] / batch, at["bytes_accessed"] / batch, peak, bandwidth)
    analytic = roofline_images_per_s(flops.training_flops(model), minimum_bytes, peak, bandwidth)

    def per_chip_rates(roofline):
        return {k: v * per_chip if "per_s" in k else v for k, v in roofline.items()}

    temp = high["memory"]["temp_bytes"] - low["memory"]["temp_bytes"]
    out = {
        "generation": generation,
        "device_kind": low["device_kind"],
        "variant": variant,
        "remat": low["remat"],
        "chip": {k: getattr(chip, k) for k in ("hbm", "bf16_tflops", "hbm_gb_s", "source")},
        "devices_per_chip": per_chip,
        "device_hbm_gib": capacity / GIB,
        "measured_batches": sorted(r["batch"] for r in measured),
        "fit_batches": [low["batch"], high["batch"]],
        "compile_s": {r["batch"]: r["compile_s"] for r in measured},
        "fixed_hbm_gb": fits["hbm_bytes"].fixed / 1e9,
        "temp_mb_per_image": temp / (high["batch"] - low["batch"]) / 1e6,
        "hbm_mb_per_image": fits["hbm_bytes"].per_image / 1e6,
        "published_device_batch": batch,
        "published_hbm_gib": at["hbm_bytes"] / GIB,
        "published_headroom_gib": (capacity - at["hbm_bytes"]) / GIB,
        "published_fits": at["hbm_bytes"] <= capacity,
        "largest_device_batch": largest,
        "devices_for_published_batch": math.ceil(batch * DEVICES / largest) if largest else None,
        "grad_accum_steps_to_fit": accumulation_to_fit(
            fits["hbm_bytes"], batch, capacity, traffic.num_parameters(model)
        ),
        "xla_gflops_per_image": at["flops"] / batch / 1e9,
        "xla_gb_accessed_per_image": at["bytes_accessed"] / batch / 1e9,
        "analytic_gflops_per_image": flops.training_flops(model) / 1e9,
        "minimum_gb_per_image": minimum_bytes / 1e9,
        "minimum_over_xla_bytes": minimum_bytes * batch / at["bytes_accessed"],
        "roofline_xla": per_chip_rates(xla),
        "roofline_analytic": per_chip_rates(analytic),
        "extrapolated": True,
    }
    if verify is not None:
        out["verified_at_batch"] = verify["batch"]
        out["verify_compile_s"] = verify["compile_s"]
        out["verify_measured"] = {f: verify[f] for f in errors}
        out["verify_relative_error"] = errors
        if verify["batch"] == batch:
            out["published_hbm_gib"] = verify["hbm_bytes"] / GIB
            out["published_headroom_gib"] = (capacity - verify["hbm_bytes"]) / GIB
            out["published_fits"] = verify["hbm_bytes"] <= capacity
            out["extrapolated"] = False
    return out


def table(rows: list[dict]) -> str:
    """The README's table (one row per generation and variant)."""
    lines = [
        "| TPU | variant | HBM/device | batch/device | HBM there (headroom) | largest batch "
        "| accumulate | MB/image | GFLOP/image | GB accessed/image (minimum) "
        "| FLOP/byte (minimum) | roofline img/s/chip (minimum) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "" if r["extrapolated"] else " (compiled)"
        fit = r["grad_accum_steps_to_fit"]
        accum = f"{fit['steps']} ({fit['estimated_gib']:.1f} GiB)" if fit else "-"
        xla, low = r["roofline_xla"], r["roofline_analytic"]
        lines.append(
            f"| {r['generation']} | {r['variant'].split('_')[1].upper()} "
            f"| {r['device_hbm_gib']:.1f} GiB | {r['published_device_batch']} "
            f"| {r['published_hbm_gib']:.1f} GiB ({r['published_headroom_gib']:+.1f}){mark} "
            f"| {r['largest_device_batch']} | {accum} | {r['hbm_mb_per_image']:.0f} "
            f"| {r['xla_gflops_per_image']:.1f} | {r['xla_gb_accessed_per_image']:.2f} "
            f"({r['minimum_gb_per_image']:.2f}) "
            f"| {xla['intensity_flops_per_byte']:.0f} ({low['intensity_flops_per_byte']:.0f}) "
            f"| {xla['bound_images_per_s']:.0f} ({low['bound_images_per_s']:.0f}) |"
        )
    return "\n".join(lines)


NOTES = {
    "measured": "the compiles at measured_batches (and verified_at_batch), per device",
    "extrapolated": "every published_* and largest_device_batch figure, and the per-image "
    "figures at published_device_batch, from the affine fit through the measured batches, unless "
    "extrapolated is false (then published_* is compiled)",
    "estimated": "grad_accum_steps_to_fit: the fit at batch/steps plus a float32 gradient "
    "accumulator, not compiled",
    "hbm_bytes": "arguments + outputs - aliases + temporaries + generated code",
    "verify_relative_error": "(fit through the two smaller compiles) / compiled - 1 at "
    "verified_at_batch; the row's figures then use the two largest compiles",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generations", nargs="+", default=list(CHIPS))
    parser.add_argument(
        "--variants", nargs="+", default=["dynamixer_s", "dynamixer_m", "dynamixer_l"]
    )
    parser.add_argument("--batches", nargs=2, type=int, default=[8, 16])
    parser.add_argument(
        "--verify", nargs="*", default=[], metavar="GEN:VARIANT[:BATCH]", help="compile there too"
    )
    parser.add_argument("--remat", default="minimal", choices=["none", "minimal", "full"])
    parser.add_argument("--accum", type=int, default=1, help="grad_accum_steps")
    parser.add_argument(
        "--mixing",
        default="vector",
        choices=["vector", "dot", "pallas"],
        help="the token mixing: vector (what a TPU runs), dot (the first compiles'), pallas",
    )
    parser.add_argument("--cached-only", action="store_true")
    parser.add_argument("--libtpu-version", help="read the cache of this libtpu (e.g. 0.0.42.1)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # GEN VARIANT BATCH, compiled
    args = parser.parse_args()
    if args.one:
        generation, variant, batch = args.one[0], args.one[1], int(args.one[2])
        record = compile_one(generation, variant, batch, args)
        key = (generation, variant, batch, args.remat, args.accum, args.mixing)
        write_json(os.path.join(RESULTS, cache_name(record["versions"], *key)), record, True)
        return
    verify = {}
    for item in args.verify:
        generation, variant, *batch = item.split(":")
        verify[generation, variant] = int(batch[0]) if batch else per_device_batch(variant)
    rows = []
    for variant in args.variants:  # every generation for a variant before the next variant
        for generation in args.generations:
            points = [ensure(generation, variant, b, args) for b in args.batches]
            if None in points:
                print(f"missing: {generation} {variant}", flush=True)
                continue
            check = verify.get((generation, variant))
            check = check and ensure(generation, variant, check, args)
            rows.append(summarise(generation, variant, points, check))
    if rows:
        summary = {
            "versions": versions(args.libtpu_version),
            "devices": DEVICES,
            "notes": NOTES,
            "rows": rows,
        }
        layout = f"_{args.mixing}" if args.mixing != "dot" else ""
        write_json(os.path.join(RESULTS, f"summary_{args.remat}{layout}.json"), summary, True)
        print(table(rows))


if __name__ == "__main__":
    main()
