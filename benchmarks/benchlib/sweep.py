"""The measurements of a throughput run, in order: the peak FLOP/s, then per configuration JAX
and PyTorch eager, then ``torch.compile``; each a record, a failure an 'error' record."""

from __future__ import annotations

import gc
import importlib.metadata
import platform
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import flax
import jax
import numpy as np
import optax

from benchlib.jax_side import jax_measure, jax_params_for
from benchlib.models import build_model, create_model_accepts_remat
from benchlib.records import Recorder, add_flop_fields, short_error
from benchlib.timing import measure_peak_jax
from benchlib.torch_side import build_torch_model, measure_peak_torch, torch_device, torch_measure
from benchlib.xla_stats import device_memory_stats, predicted_bytes


def environment(args, torch_mod) -> dict[str, Any]:
    """Device and version information for the JSON file."""
    device = jax.devices()[0]
    meta = {
        "jax_device_platform": device.platform,
        "jax_device_kind": device.device_kind,
        "jax_device": str(device),
        "jax_device_count": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision", None),
        "peak_bytes_in_use_note": "device-wide peak since the process started",
        "create_model_accepts_remat": create_model_accepts_remat(),
        "image_size": args.image_size,
        "argv": sys.argv[1:],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        meta["jaxlib"] = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        pass
    if torch_mod:
        meta["jax_weights"] = "torch twin, torch.manual_seed(0)"
    if torch_mod and "torch" in args.frameworks:
        torch = torch_mod[0]
        meta.update(
            torch=torch.__version__,
            torch_device=str(torch_device(torch)),
            torch_threads=torch.get_num_threads(),
            torch_float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
        if torch.cuda.is_available():
            meta["torch_device_name"] = torch.cuda.get_device_name(0)
    return meta


def measure_peaks(args, torch_mod) -> dict[str, Any]:
    """Peak matmul FLOP/s per compute dtype (JAX's when JAX runs, else torch's)."""
    platform_name = jax.devices()[0].platform
    size = args.peak_size or (2048 if platform_name == "cpu" else 8192)
    peaks = {}
    for dtype in args.dtypes:
        try:
            if "jax" in args.frameworks or not (torch_mod and "torch" in args.frameworks):
                peaks[dtype] = measure_peak_jax(dtype, size, args.peak_repeats)
            else:
                peaks[dtype] = measure_peak_torch(torch_mod[0], dtype, size, args.peak_repeats)
            print(
                f"[throughput] peak {dtype} matmul {size}^3: "
                f"{peaks[dtype]['flops_per_s'] / 1e12:.2f} TFLOP/s",
                flush=True,
            )
        except Exception as exc:
            peaks[dtype] = {"error": short_error(exc)}
    return peaks


def run_config(
    recorder: Recorder,
    base: dict[str, Any],
    measure: Callable[[], dict[str, Any]],
    model,
    peaks,
    device=None,
) -> dict[str, Any]:
    """Measure one configuration into a record; any failure becomes an 'error' record."""
    record = dict(base, status="ok")
    try:
        record.update(measure())
        add_flop_fields(record, model, peaks)
        if device is not None and "peak_bytes_in_use" not in record:
            record["peak_bytes_in_use"] = device_memory_stats(device).get("peak_bytes_in_use")
    except Exception as exc:  # one failing configuration must not end the run
        record.update(status="error", error=short_error(exc))
        traceback.print_exc()
    gc.collect()
    recorder.add(record)
    return record


def plan(args, batches: dict[str, list[int]]) -> list[tuple[str, str, int, str]]:
    """(model, dtype, batch, remat) in priority order: every model and dtype at its first batch
    with the first remat value, the same with each other remat value (first dtype only), then the
    other batches in order."""

    def one_round(i: int, remat: str):
        return [
            (name, dtype, batches[name][i], remat)
            for name in args.models
            for dtype in args.dtypes
            if i < len(batches[name])
        ]

    primary = args.remat[0]
    out = one_round(0, primary)
    for remat in [r for r in args.remat if r != primary]:
        out += [config for config in one_round(0, remat) if config[1] == args.dtypes[0]]
    for i in range(1, max(len(b) for b in batches.values())):
        out += one_round(i, primary)
    return out


def run_plan(recorder, args, batches, peaks, torch_mod, deadline) -> None:
    """Every planned measurement: per configuration JAX then PyTorch eager (when both run);
    torch.compile ones after all the others, since they cost the most time."""
    device = jax.devices()[0]
    torch_models: dict[str, Any] = {}
    params_cache: dict[tuple[str, str], Any] = {}
    baseline = bool(torch_mod) and "torch" in args.frameworks
    deferred = []
    for name, dtype, batch, remat in plan(args, batches):
        for mode in args.modes:
            if mode == "infer" and remat != args.remat[0]:
                continue  # remat changes nothing without a backward pass
            base = {
                "framework": "jax",
                "model": name,
                "dtype": dtype,
                "batch": batch,
                "mode": mode,
                "remat": remat,
                "image_size": args.image_size,
            }
            if "jax" in args.frameworks:
                run_jax_config(
                    recorder,
                    args,
                    base,
                    peaks,
                    torch_mod,
                    torch_models,
                    params_cache,
                    device,
                    deadline,
                )
            if baseline and remat == args.remat[0]:
                deferred += run_torch_configs(
                    recorder, args, torch_mod, torch_models, base, peaks, deadline
                )
    for base in deferred:
        run_torch_configs(
            recorder, args, torch_mod, torch_models, base, peaks, deadline, compiled=True
        )


def run_jax_config(
    recorder, args, base, peaks, torch_mod, torch_models, params_cache, device, deadline
):
    """One JAX measurement (or a skipped/error record). Parameters (float32 whatever the
    compute dtype) are made once per model and remat setting, kept in ``params_cache``."""
    name, remat = base["model"], base["remat"]
    if time.monotonic() > deadline:
        recorder.add(dict(base, status="skipped", error="time budget"))
        return
    if remat != args.remat[0] and not create_model_accepts_remat():
        recorder.add(dict(base, status="skipped", error="create_model has no remat argument"))
        return
    try:
        model = build_model(name, args.image_size, base["dtype"], remat, base["mode"] == "train")
        if torch_mod and name not in torch_models:
            torch_models[name] = build_torch_model(torch_mod, name, args.image_size)
        if (name, remat) not in params_cache:
            params_cache.clear()  # one model's parameters on the device at a time
            params_cache[(name, remat)] = jax_params_for(model, torch_models.get(name))
        params = params_cache[(name, remat)]
    except Exception as exc:  # an unknown remat value counts as remat not available
        unknown_remat = remat != args.remat[0] and isinstance(exc, (ValueError, TypeError))
        recorder.add(
            dict(base, status="skipped" if unknown_remat else "error", error=short_error(exc))
        )
        return
    stats = device_memory_stats(device)
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0) if stats.get("bytes_limit") else None
    predicted = predicted_bytes(recorder.records, base)
    if free and predicted and predicted > 1.05 * free:
        recorder.add(
            dict(
                base,
                status="skipped",
                error=f"would not fit: ~{predicted / 2**30:.1f} "
                f"GiB by a smaller batch's memory, {free / 2**30:.1f} GiB free",
            )
        )
        return
    run_config(
        recorder,
        base,
        lambda: jax_measure(
            model, params, base["batch"], base["mode"], args, deadline, free_bytes=free
        ),
        model,
        peaks,
        device,
    )


def run_torch_configs(
    recorder, args, torch_mod, torch_models, base, peaks, deadline, compiled: bool = False
) -> list:
    """PyTorch eager (or, with ``compiled``, torch.compile) for one configuration; returns the
    configurations whose torch.compile run is still to come."""
    torch = torch_mod[0]
    name = base["model"]
    if name not in torch_models:
        torch_models[name] = build_torch_model(torch_mod, name, args.image_size)
    if torch_models[name] is None:
        return []
    model = build_model(name, args.image_size, base["dtype"], args.remat[0], False)  # FLOPs only
    record = dict(base, framework="torch-compile" if compiled else "torch")
    left = deadline - time.monotonic()
    if left < 0 or (compiled and left < args.compile_reserve_s):
        recorder.add(dict(record, status="skipped", error="time budget"))
        return []
    run_config(
        recorder,
        record,
        lambda: torch_measure(
            torch_mod,
            torch_models[name],
            base["batch"],
            base["mode"],
            base["dtype"],
            compiled,
            args,
            deadline,
        ),
        model,
        peaks,
    )
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # also after a failure, for the next configuration
    wants_compile = (
        torch_device(torch).type == "cuda"
        and args.torch_compile
        and (name, base["dtype"], base["batch"]) in args.torch_compile_configs
    )
    return [base] if wants_compile and not compiled else []
