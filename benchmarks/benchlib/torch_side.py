"""The PyTorch side of ``throughput.py``: the twin with the same seed-0 weights, its peak matmul
FLOP/s, and one timed eager or ``torch.compile`` training or inference step."""

from __future__ import annotations

import copy
import functools
import os
import time
from typing import Any

import numpy as np

from benchlib.adamw import LEARNING_RATE, WEIGHT_DECAY
from benchlib.models import (
    DROP_PATH_RATE,
    NUM_CLASSES,
    NUM_INPUT_BATCHES,
    architecture,
    torch_reference,
)
from benchlib.records import short_error
from benchlib.timing import peak_record, time_rounds, timed_repeats
from dynamixer_jax.model.network import as_hw


def import_torch(args):
    """(torch, TorchDynaMixer), or None with DYNAMIXER_NO_TORCH=1 or torch missing. Imported
    also for ``--frameworks jax``, for the twin's weights (made on the CPU; CUDA untouched)."""
    if os.environ.get("DYNAMIXER_NO_TORCH") == "1" or args.no_twin_weights:
        return None
    try:
        import torch

        twin = torch_reference().TorchDynaMixer
    except Exception as exc:  # torch missing or broken: the JAX side still runs
        print(f"[throughput] no PyTorch baseline: {short_error(exc)}", flush=True)
        return None
    return torch, twin


def build_torch_model(torch_mod, name: str, image_size: int):
    """The torch twin with seed-0 weights on the CPU (drop_path_rate 0.1), or None if it
    cannot take this configuration (non-square images)."""
    torch, torch_dynamixer = torch_mod
    if not isinstance(image_size, int):
        return None
    torch.manual_seed(0)
    return torch_dynamixer(
        **architecture(name),
        num_classes=NUM_CLASSES,
        image_size=image_size,
        drop_path_rate=DROP_PATH_RATE,
    )


def torch_device(torch):
    """CUDA where PyTorch sees a GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def synchronizer(torch, device):
    """A function that waits for ``device``'s queued work (nothing to wait for on the CPU)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    return sync


def measure_peak_torch(torch, dtype: str, size: int, repeats: int) -> dict[str, Any]:
    """Median FLOP/s of a size^3 torch matmul in ``dtype`` (float32 at --torch-fp32-precision)."""
    device = torch_device(torch)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    sync = synchronizer(torch, device)

    def call():
        torch.matmul(a, b)
        sync()

    return peak_record(timed_repeats(call, repeats), size, "torch")


def make_optimizer(torch, model, device):
    """AdamW at the benchmarks' rate and decay, fused on CUDA where this torch has it."""
    try:
        return torch.optim.AdamW(
            model.parameters(),
            lr=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            fused=device.type == "cuda",
        )
    except (TypeError, RuntimeError):
        return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)


def torch_steps(steps: int, torch, runner, optimizer, batches, train: bool, autocast, sync):
    """Run ``steps`` training (forward, cross-entropy, backward, AdamW) or inference steps,
    cycling through ``batches``, and wait for the device."""
    import torch.nn.functional as F

    for i in range(steps):
        images, labels = batches[i % NUM_INPUT_BATCHES]
        if train:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(runner(images).float(), labels)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                runner(images)
    sync()


def torch_measure(
    torch_mod, base_model, batch: int, mode: str, dtype: str, compiled: bool, args, deadline: float
) -> dict[str, Any]:
    """Time one PyTorch step (eager or torch.compile) on the torch device."""
    torch = torch_mod[0]
    device = torch_device(torch)
    model = copy.deepcopy(base_model).to(device)
    model.train(mode == "train")
    runner = torch.compile(model) if compiled else model
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if dtype == "bf16"
        else torch.autocast(device.type, enabled=False)
    )
    optimizer = make_optimizer(torch, model, device) if mode == "train" else None
    rng = np.random.default_rng(batch)
    height, width = as_hw(args.image_size)
    shape = (batch, 3, height, width)
    batches = [
        (
            torch.from_numpy(rng.standard_normal(shape, np.float32)).to(device),
            torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device),
        )
        for _ in range(NUM_INPUT_BATCHES)
    ]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = functools.partial(
        torch_steps,
        torch=torch,
        runner=runner,
        optimizer=optimizer,
        batches=batches,
        train=mode == "train",
        autocast=autocast,
        sync=synchronizer(torch, device),
    )
    start = time.perf_counter()
    run(1)  # torch.compile compiles here; eager: the first step
    compile_s = time.perf_counter() - start
    timing = time_rounds(run, batch, args.rounds, args.warmup, args.round_seconds, deadline)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    del model, runner, optimizer, batches, run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        **timing,
        "compile_s": compile_s if compiled else None,
        "first_step_s": compile_s,
        "peak_bytes_in_use": peak,
    }
