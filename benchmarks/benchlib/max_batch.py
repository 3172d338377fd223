"""The largest training batch that fits on the device: doubled while XLA's compile-only memory
analysis says it fits, then confirmed by a real step of the executable compiled for it."""

from __future__ import annotations

import argparse
import time
import traceback

import jax

from benchlib.adamw import make_adamw_step, make_optimizer
from benchlib.jax_side import abstract_args, jax_measure, jax_params_for
from benchlib.models import build_model
from benchlib.records import short_error
from benchlib.sweep import run_config
from benchlib.timing import compile_timed
from benchlib.xla_stats import bytes_fields, device_memory_stats, required_bytes
from dynamixer_jax.model.init import abstract_variables


def run_max_batch(recorder, args, batches, peaks, deadline) -> None:
    """The max-batch search for --max-batch models, every dtype, within the budget."""
    device = jax.devices()[0]
    stats = device_memory_stats(device)
    if args.memory_limit_gb:
        limit, confirm = int(args.memory_limit_gb * 1e9), device.platform != "cpu"
    elif stats.get("bytes_limit"):
        limit, confirm = int(stats["bytes_limit"]), True
    else:
        print(
            "[throughput] max-batch: no bytes_limit on this device; pass --memory-limit-gb",
            flush=True,
        )
        return
    for name in args.max_batch:
        for dtype in args.max_batch_dtypes or args.dtypes:
            base = {
                "framework": "jax",
                "model": name,
                "dtype": dtype,
                "mode": "max_batch",
                "remat": args.remat[0],
                "batch": None,
                "image_size": args.image_size,
            }
            if time.monotonic() > deadline:
                recorder.add(dict(base, status="skipped", error="time budget"))
                continue
            try:
                max_batch_search(
                    recorder,
                    args,
                    name,
                    dtype,
                    max(batches[name]),
                    limit,
                    device,
                    peaks,
                    deadline,
                    confirm,
                )
            except Exception as exc:
                traceback.print_exc()
                recorder.add(dict(base, status="error", error=short_error(exc)))


def max_batch_search(
    recorder, args, name, dtype, start_batch, limit_bytes, device, peaks, deadline, confirm: bool
) -> None:
    """Largest power-of-two multiple of ``start_batch`` whose training step fits in
    ``limit_bytes`` by XLA's compile-only memory analysis, confirmed by one real step."""
    model = build_model(name, args.image_size, dtype, args.remat[0], train=True)
    params = abstract_variables(model)["params"]
    step, tx = make_adamw_step(model, make_optimizer(mask_decay=True))
    in_use = device_memory_stats(device).get("bytes_in_use", 0) or 0
    fits, tried, batch, previous, executables = None, [], start_batch, None, {}
    while time.monotonic() < deadline:
        if previous is not None:  # skip a compile where the linear trend already says no
            per_image = (previous[1] - previous[2]) / previous[0]
            if previous[2] + per_image * batch > 1.5 * (limit_bytes - in_use):
                tried.append({"batch": batch, "required_bytes": None, "skipped": "extrapolated"})
                break
        executables[batch] = compile_timed(step, *abstract_args(model, params, batch, "train", tx))
        memory = bytes_fields(executables[batch][0])
        need = required_bytes(memory)
        if need is None:
            raise RuntimeError("memory_analysis() gave no temp/argument sizes on this backend")
        tried.append({"batch": batch, "required_bytes": need})
        print(
            f"[throughput] max-batch {name} {dtype}: batch {batch} needs {need / 2**30:.3g} GiB "
            f"of {(limit_bytes - in_use) / 2**30:.3g}",
            flush=True,
        )
        if need > limit_bytes - in_use:
            break
        fits, previous = batch, (batch, need, memory["argument_bytes"] or 0)
        batch *= 2
    record = {
        "framework": "jax",
        "model": name,
        "dtype": dtype,
        "batch": fits,
        "mode": "max_batch",
        "remat": args.remat[0],
        "image_size": args.image_size,
        "limit_bytes": limit_bytes,
        "tried": tried,
        "status": "ok" if fits else "error",
        "error": None if fits else f"batch {start_batch} does not fit",
    }
    # Confirm with one real step (two short timed rounds) of the executable compiled above; if
    # it does not fit after all, try the next smaller batch, which was compile-checked too.
    short = argparse.Namespace(**{**vars(args), "rounds": 2, "warmup": 1})
    for candidate in [fits, fits // 2] if fits and confirm else []:
        if candidate not in executables:
            break
        base = {k: record[k] for k in ("framework", "model", "dtype", "remat", "image_size")}
        real = run_config(
            recorder,
            dict(base, mode="train", batch=candidate, note="max batch"),
            lambda batch=candidate: jax_measure(
                model,
                jax_params_for(model, None),
                batch,
                "train",
                short,
                deadline,
                precompiled=executables[batch],
            ),
            model,
            peaks,
            device,
        )
        record.update(
            batch=candidate,
            confirmed=real["status"] == "ok",
            error=None if real["status"] == "ok" else real.get("error"),
        )
        if record["confirmed"]:
            break
    executables.clear()
    recorder.add(record)
