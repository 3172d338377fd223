"""Training and inference throughput of DynaMixer on whatever device JAX finds (CPU, GPU, TPU),
with memory, model FLOP utilisation and a PyTorch baseline on the same device and weights.

For every (model, dtype, batch) it measures, after a warm-up, the median images/s over several
timed rounds of:
  * ``train``: forward in train mode (stochastic depth 0.1), integer-label cross-entropy,
    backward, optax AdamW (weight decay 0.05 on weights of 2+ axes), parameters and optimizer
    state donated;
  * ``infer``: the jitted ``apply(train=False)``.
plus the compile time, XLA's memory analysis of the compiled step (temp, argument, output,
code bytes; activation bytes per image = temp / batch), the device's peak bytes in use where
the backend reports it, XLA's FLOP count, and MFU = analytic FLOPs per image
(``dynamixer_jax.model.flops``; a training step counts 3 x forward) x images/s / peak FLOP/s, the
peak measured in this run by a large matmul in the compute dtype (same default precision as
the model: XLA may run float32 matmuls as TF32 on NVIDIA GPUs; PyTorch's float32 baseline
uses TF32 too, ``--torch-fp32-precision high``).

``bf16`` is ``create_model(..., dtype=jnp.bfloat16)`` with float32 parameters; for PyTorch it
is ``torch.autocast(bfloat16)`` with float32 parameters. The PyTorch model is the test twin
``tests/torch_reference.py``, built with ``torch.manual_seed(0)``; the JAX parameters are
converted from it (``dynamixer_jax.convert.torch_to_flax``), so both run the same weights.
On CUDA, PyTorch also runs ``torch.compile`` (within the time budget).

    python benchmarks/throughput.py                        # S, M, L; fp32, bf16; batches 32 64 128
    python benchmarks/throughput.py --quick                # tiny smoke run
    python benchmarks/throughput.py --models S --batches S:64,128,256 --remat minimal full none
    python benchmarks/throughput.py --frameworks torch --append --json out.json
    python benchmarks/throughput.py --summarize out.json   # print the table of a JSON file

Records are written to ``--json`` (default ``$OUT/throughput.json`` when OUT is set) after
every measurement, so a run that is killed keeps what it measured. Needs jax, flax, optax,
numpy and this package; torch only for the baseline (skipped without it, with
``--frameworks jax`` or with DYNAMIXER_NO_TORCH=1). No timed assertions anywhere.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dynamixer_jax.model import flops as flop_count  # noqa: E402
from dynamixer_jax.model.init import abstract_variables, init_variables  # noqa: E402
from dynamixer_jax.model.network import as_hw  # noqa: E402
from dynamixer_jax.model.variants import VARIANTS, create_model  # noqa: E402

ALIASES = {"S": "dynamixer_s", "M": "dynamixer_m", "L": "dynamixer_l", "tiny": "tiny"}
# A small custom architecture with every kind of part, for smoke runs and tests.
TINY = dict(VARIANTS["dynamixer_s"], layers=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64),
            num_segments=(4, 8, 8, 8))
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
NUM_CLASSES, LEARNING_RATE, WEIGHT_DECAY, DROP_PATH_RATE = 1000, 1e-3, 0.05, 0.1
NUM_INPUT_BATCHES = 2


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# Small helpers


def model_name(alias: str) -> str:
    """Full variant name for an alias (S, M, L, tiny) or a full name."""
    name = ALIASES.get(alias, alias)
    if name != "tiny" and name not in VARIANTS:
        raise UserError(f"unknown model {alias!r}; use S, M, L, tiny or one of {sorted(VARIANTS)}")
    return name


def architecture(name: str) -> Dict[str, Any]:
    """The architecture fields of a model name."""
    return dict(TINY if name == "tiny" else VARIANTS[name])


def create_model_accepts_remat() -> bool:
    """Whether this checkout's ``create_model`` has a ``remat`` argument."""
    return "remat" in inspect.signature(create_model).parameters


def build_model(name: str, image_size: int, dtype: str, remat: str, train: bool):
    """The Flax model for one measurement (``remat`` passed where ``create_model`` takes it)."""
    kwargs = dict(num_classes=NUM_CLASSES, image_size=image_size, dtype=DTYPES[dtype],
                  param_dtype=jnp.float32, drop_path_rate=DROP_PATH_RATE if train else 0.0)
    if create_model_accepts_remat():
        kwargs["remat"] = remat
    if name == "tiny":
        return create_model("dynamixer_s", **kwargs, **TINY)
    return create_model(name, **kwargs)


def parse_batches(items: Sequence[str], models: Sequence[str]) -> Dict[str, List[int]]:
    """{model: [batch, ...]} from e.g. ``64 128`` (all models) or ``S:64,128,256 M:64``."""
    common, per_model = [], {}
    for item in items:
        try:
            if ":" in item:
                alias, values = item.split(":", 1)
                per_model[model_name(alias)] = [int(v) for v in values.split(",") if v]
            else:
                common.extend(int(v) for v in item.split(",") if v)
        except ValueError:
            raise UserError(f"bad --batches entry {item!r}; use e.g. 64 128 or S:64,128") from None
    out = {m: per_model.get(m, common) for m in models}
    for m, batches in out.items():
        if not batches or min(batches) < 1:
            raise UserError(f"no positive batch sizes for {m}; add e.g. --batches {m}:64")
    return out


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def bytes_fields(compiled) -> Dict[str, Optional[int]]:
    """XLA's memory analysis of a compiled function, each field None where unavailable."""
    names = {"temp_bytes": "temp_size_in_bytes", "argument_bytes": "argument_size_in_bytes",
             "output_bytes": "output_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
             "generated_code_bytes": "generated_code_size_in_bytes",
             "peak_memory_bytes": "peak_memory_in_bytes"}
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not implemented on some backends / versions
        analysis = None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    out = {}
    for key, attr in names.items():
        value = getattr(analysis, attr, None) if analysis is not None else None
        out[key] = int(value) if isinstance(value, (int, np.integer)) else None
    return out


def required_bytes(memory: Dict[str, Optional[int]]) -> Optional[int]:
    """Device bytes a compiled step needs: arguments + outputs - donated aliases + temp + code."""
    if memory.get("temp_bytes") is None or memory.get("argument_bytes") is None:
        return None
    return (memory["argument_bytes"] + (memory.get("output_bytes") or 0)
            - (memory.get("alias_bytes") or 0) + memory["temp_bytes"]
            + (memory.get("generated_code_bytes") or 0))


def xla_flops(compiled) -> Optional[float]:
    """``cost_analysis()['flops']`` (a dict in recent jax, a list of dicts in older), or None."""
    try:
        costs = compiled.cost_analysis()
        if isinstance(costs, (list, tuple)):
            costs = costs[0] if costs else None
        return float(costs["flops"]) if costs and "flops" in costs else None
    except Exception:
        return None


def device_memory_stats(device) -> Dict[str, Any]:
    """``device.memory_stats()`` or {} where the backend has none."""
    try:
        return dict(device.memory_stats() or {})
    except Exception:
        return {}


def short_error(exc: BaseException) -> str:
    """The first line of an exception, for records and logs."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# Timing


def time_rounds(run: Callable[[int], None], batch: int, rounds: int, warmup: int,
                round_seconds: float, deadline: float) -> Dict[str, Any]:
    """Warm up, then time ``rounds`` rounds of k steps (k so a round takes ~round_seconds).

    ``run(k)`` runs k steps and blocks until they are done. Stops early at ``deadline``
    (time.monotonic) after at least one round.
    """
    start = time.perf_counter()
    run(max(warmup, 1))
    per_step = (time.perf_counter() - start) / max(warmup, 1)
    steps = max(1, int(round(round_seconds / max(per_step, 1e-6))))
    rates, step_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        run(steps)
        seconds = time.perf_counter() - start
        rates.append(steps * batch / seconds)
        step_times.append(seconds / steps)
        if time.monotonic() > deadline:
            break
    return {"img_s": median(rates), "step_ms": 1e3 * median(step_times), "rounds_img_s": rates,
            "steps_per_round": steps}


def measure_peak_jax(dtype: str, size: int, repeats: int) -> Dict[str, Any]:
    """Median FLOP/s of a size^3 matmul in ``dtype`` on the default device (default precision)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (size, size), DTYPES[dtype])
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), DTYPES[dtype])
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    del a, b
    return {"flops_per_s": 2 * size ** 3 / median(times), "matmul_size": size, "framework": "jax",
            "best_flops_per_s": 2 * size ** 3 / min(times)}


# ----------------------------------------------------------------------------------------------
# JAX measurements


def weight_decay_mask(params):
    """True for weights of 2+ axes (no decay on biases and norm scales), as the recipe."""
    return jax.tree_util.tree_map(lambda leaf: jnp.ndim(leaf) > 1, params)


def make_jax_train_step(model, tx):
    """(params, opt_state, images, labels, key) -> (params, opt_state, loss); jit, donated."""
    def loss_fn(params, images, labels, key):
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels).mean()

    def step(params, opt_state, images, labels, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(step, donate_argnums=(0, 1))


def make_jax_infer(model):
    """(params, images) -> logits, jit, train=False."""
    return jax.jit(lambda params, images: model.apply({"params": params}, images, train=False))


def make_optimizer():
    return optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY, mask=weight_decay_mask)


def abstract_args(model, params, batch: int, mode: str, tx):
    """ShapeDtypeStructs of the step's arguments, for compile-only memory analysis."""
    height, width = as_hw(model.image_size)
    images = jax.ShapeDtypeStruct((batch, height, width, 3), model.dtype or jnp.float32)
    if mode == "infer":
        return (params, images)
    opt_state = jax.eval_shape(tx.init, params)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return (params, opt_state, images, labels, jax.eval_shape(lambda: jax.random.key(0)))


def input_batches(model, batch: int, seed: int):
    """A few device-resident (images, labels, dropout key) batches in the compute dtype."""
    rng = np.random.default_rng(seed)
    height, width = as_hw(model.image_size)
    out = []
    for i in range(NUM_INPUT_BATCHES):
        images = rng.standard_normal((batch, height, width, 3), dtype=np.float32)
        out.append((jnp.asarray(images, model.dtype or jnp.float32),
                    jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32),
                    jax.random.key(seed * 1000 + i)))
    return out


def jax_measure(model, params, batch: int, mode: str, args, deadline: float,
                precompiled: Optional[Tuple[Any, float]] = None,
                free_bytes: Optional[int] = None) -> Dict[str, Any]:
    """Compile and time one JAX step; returns the measured fields of a record.

    ``precompiled``: (executable, compile seconds) of this very step, to skip compiling.
    ``free_bytes``: device memory available; a step whose compile-only memory analysis needs
    more is not run (an 'error' record with the figures) rather than failing out of memory."""
    tx = make_optimizer()
    fn = make_jax_train_step(model, tx) if mode == "train" else make_jax_infer(model)
    batches = input_batches(model, batch, seed=batch)
    start = time.perf_counter()
    if mode == "train":
        own = jax.tree_util.tree_map(jnp.copy, params)  # the caller's params survive donation
        state = {"params": own, "opt": tx.init(own)}
        images, labels, key = batches[0]
        compiled = precompiled[0] if precompiled else fn.lower(
            state["params"], state["opt"], images, labels, key).compile()
    else:
        compiled = precompiled[0] if precompiled else fn.lower(params, batches[0][0]).compile()
    compile_s = precompiled[1] if precompiled else time.perf_counter() - start
    need = required_bytes(bytes_fields(compiled))
    if free_bytes and need and need > free_bytes:
        return {"status": "error", "compile_s": compile_s, "memory": bytes_fields(compiled),
                "error": f"does not fit: needs {need / 2**30:.1f} GiB, "
                         f"{free_bytes / 2**30:.1f} GiB free (compile-only memory analysis)"}

    def run(steps: int):
        out = None
        for i in range(steps):
            images, labels, key = batches[i % NUM_INPUT_BATCHES]
            if mode == "train":
                state["params"], state["opt"], out = compiled(state["params"], state["opt"],
                                                              images, labels, key)
            else:
                out = compiled(params, images)
        jax.block_until_ready(out)

    timing = time_rounds(run, batch, args.rounds, args.warmup, args.round_seconds, deadline)
    memory = bytes_fields(compiled)
    flops_xla = xla_flops(compiled)
    if mode == "train":
        del state
    return {**timing, "compile_s": compile_s, "memory": memory,
            "activation_bytes_per_image": (memory["temp_bytes"] / batch
                                           if memory["temp_bytes"] is not None else None),
            "xla_flops_per_image": flops_xla / batch if flops_xla else None}


def jax_params_for(name: str, model, torch_model) -> Any:
    """JAX parameters: converted from the torch twin when there is one, else our own init."""
    if torch_model is not None:
        from dynamixer_jax.convert import torch_to_flax
        return jax.device_put(torch_to_flax(torch_model.state_dict(), model)["params"])
    return init_variables(model, jax.random.key(0))["params"]


# ----------------------------------------------------------------------------------------------
# PyTorch measurements


def import_torch(args):
    """(torch, TorchDynaMixer), or None with DYNAMIXER_NO_TORCH=1 or torch missing. Imported
    also for ``--frameworks jax``, for the twin's weights (made on the CPU; CUDA untouched)."""
    if os.environ.get("DYNAMIXER_NO_TORCH") == "1" or args.no_twin_weights:
        return None
    try:
        import torch
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from torch_reference import TorchDynaMixer
    except Exception as exc:  # torch missing or broken: the JAX side still runs
        print(f"[throughput] no PyTorch baseline: {short_error(exc)}", flush=True)
        return None
    return torch, TorchDynaMixer


def build_torch_model(torch_mod, name: str, image_size: int):
    """The torch twin with seed-0 weights on the CPU (drop_path_rate 0.1), or None if it
    cannot take this configuration (non-square images)."""
    torch, TorchDynaMixer = torch_mod
    if not isinstance(image_size, int):
        return None
    torch.manual_seed(0)
    return TorchDynaMixer(**architecture(name), num_classes=NUM_CLASSES, image_size=image_size,
                          drop_path_rate=DROP_PATH_RATE)


def torch_device(torch):
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def measure_peak_torch(torch, dtype: str, size: int, repeats: int) -> Dict[str, Any]:
    """Median FLOP/s of a size^3 torch matmul in ``dtype`` (float32 at --torch-fp32-precision)."""
    device = torch_device(torch)
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    torch.matmul(a, b)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return {"flops_per_s": 2 * size ** 3 / median(times), "matmul_size": size,
            "framework": "torch", "best_flops_per_s": 2 * size ** 3 / min(times)}


def torch_measure(torch_mod, base_model, batch: int, mode: str, dtype: str, compiled: bool,
                  args, deadline: float) -> Dict[str, Any]:
    """Time one PyTorch step (eager or torch.compile) on the torch device."""
    torch = torch_mod[0]
    import copy

    import torch.nn.functional as F
    device = torch_device(torch)
    model = copy.deepcopy(base_model).to(device)
    model.train(mode == "train")
    runner = torch.compile(model) if compiled else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else torch.autocast(device.type, enabled=False))
    optimizer = None
    if mode == "train":
        try:
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                                          weight_decay=WEIGHT_DECAY, fused=device.type == "cuda")
        except (TypeError, RuntimeError):
            optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE,
                                          weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(batch)
    height, width = as_hw(args.image_size)
    shape = (batch, 3, height, width)
    batches = [(torch.from_numpy(rng.standard_normal(shape, np.float32)).to(device),
                torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device))
               for _ in range(NUM_INPUT_BATCHES)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(steps: int):
        for i in range(steps):
            images, labels = batches[i % NUM_INPUT_BATCHES]
            if mode == "train":
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = F.cross_entropy(runner(images).float(), labels)
                loss.backward()
                optimizer.step()
            else:
                with torch.no_grad(), autocast:
                    runner(images)
        sync()

    start = time.perf_counter()
    run(1)  # torch.compile compiles here; eager: the first step
    compile_s = time.perf_counter() - start
    timing = time_rounds(run, batch, args.rounds, args.warmup, args.round_seconds, deadline)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    del model, runner, optimizer, batches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**timing, "compile_s": compile_s if compiled else None, "first_step_s": compile_s,
            "peak_bytes_in_use": peak}


# ----------------------------------------------------------------------------------------------
# The run


class Recorder:
    """Holds the run's metadata and records; writes the JSON file after every change."""

    def __init__(self, path: Optional[str], meta: Dict[str, Any], append: bool):
        self.path, self.runs, self.records = path, [], []
        if append and path and os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            self.runs, self.records = previous.get("runs", []), previous.get("records", [])
        self.meta = meta
        self.runs.append(meta)

    def add(self, record: Dict[str, Any]) -> None:
        record["run"] = len(self.runs) - 1
        self.records.append(record)
        print("[throughput] " + format_record(record), flush=True)
        self.write()

    def write(self) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"runs": self.runs, "records": self.records}, f, indent=1, default=str)
        os.replace(tmp, self.path)


def format_record(r: Dict[str, Any]) -> str:
    """One log line for a record."""
    head = (f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<4} {r.get('remat', 'none'):<6} "
            f"{r['mode']:<5} b={str(r.get('batch')):<5}")
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {r.get('error', '')}"
    if r["mode"] == "max_batch":
        return f"{head} fits (limit {r['limit_bytes'] / 2**30:.2f} GiB), tried {r['tried']}"
    return (f"{head} {r['img_s']:9.1f} img/s  step {r['step_ms']:8.1f} ms  compile "
            f"{fmt(r.get('compile_s'), '.1f')} s  MFU {fmt(r.get('mfu'), '.1%')}")


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def add_flop_fields(record: Dict[str, Any], model, peaks: Dict[str, Any]) -> None:
    """FLOPs per image, achieved TFLOP/s and MFU of a measured record."""
    per_image = (flop_count.training_flops(model) if record["mode"] == "train"
                 else flop_count.forward_flops(model))
    record["flops_per_image"] = per_image
    if record.get("img_s"):
        achieved = per_image * record["img_s"]
        record["tflops_per_s"] = achieved / 1e12
        peak = (peaks.get(record["dtype"]) or {}).get("flops_per_s")
        record["peak_flops_per_s"] = peak
        record["mfu"] = achieved / peak if peak else None


def run_config(recorder: Recorder, base: Dict[str, Any], measure: Callable[[], Dict[str, Any]],
               model, peaks, device=None) -> Dict[str, Any]:
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


def plan(args, batches: Dict[str, List[int]]) -> List[Tuple[str, str, int, str]]:
    """(model, dtype, batch, remat) in priority order: every model and dtype at its first batch
    with the first remat value, the same with each other remat value (first dtype only), then the
    other batches in order."""
    def one_round(i: int, remat: str):
        return [(name, dtype, batches[name][i], remat) for name in args.models
                for dtype in args.dtypes if i < len(batches[name])]
    primary = args.remat[0]
    out = one_round(0, primary)
    for remat in [r for r in args.remat if r != primary]:
        out += [config for config in one_round(0, remat) if config[1] == args.dtypes[0]]
    for i in range(1, max(len(b) for b in batches.values())):
        out += one_round(i, primary)
    return out


def max_batch_search(recorder, args, name, dtype, start_batch, limit_bytes, device, peaks,
                     deadline, confirm: bool, torch_mod) -> None:
    """Largest power-of-two multiple of ``start_batch`` whose training step fits in
    ``limit_bytes`` by XLA's compile-only memory analysis, confirmed by one real step."""
    model = build_model(name, args.image_size, dtype, args.remat[0], train=True)
    params = abstract_variables(model)["params"]
    tx = make_optimizer()
    step = make_jax_train_step(model, tx)
    in_use = device_memory_stats(device).get("bytes_in_use", 0) or 0
    fits, tried, batch, previous, executables = None, [], start_batch, None, {}
    while time.monotonic() < deadline:
        if previous is not None:  # skip a compile where the linear trend already says no
            per_image = (previous[1] - previous[2]) / previous[0]
            if previous[2] + per_image * batch > 1.5 * (limit_bytes - in_use):
                tried.append({"batch": batch, "required_bytes": None, "skipped": "extrapolated"})
                break
        start = time.perf_counter()
        compiled = step.lower(*abstract_args(model, params, batch, "train", tx)).compile()
        executables[batch] = (compiled, time.perf_counter() - start)
        memory = bytes_fields(compiled)
        need = required_bytes(memory)
        if need is None:
            raise RuntimeError("memory_analysis() gave no temp/argument sizes on this backend")
        tried.append({"batch": batch, "required_bytes": need})
        print(f"[throughput] max-batch {name} {dtype}: batch {batch} needs {need / 2**30:.3g} GiB "
              f"of {(limit_bytes - in_use) / 2**30:.3g}", flush=True)
        if need > limit_bytes - in_use:
            break
        fits, previous = batch, (batch, need, memory["argument_bytes"] or 0)
        batch *= 2
    record = {"framework": "jax", "model": name, "dtype": dtype, "batch": fits, "mode": "max_batch",
              "remat": args.remat[0], "image_size": args.image_size, "limit_bytes": limit_bytes,
              "tried": tried, "status": "ok" if fits else "error",
              "error": None if fits else f"batch {start_batch} does not fit"}
    # Confirm with one real step (two short timed rounds) of the executable compiled above; if
    # it does not fit after all, try the next smaller batch, which was compile-checked too.
    for candidate in ([fits, fits // 2] if fits and confirm else []):
        if candidate not in executables:
            break
        base = {k: record[k] for k in ("framework", "model", "dtype", "remat", "image_size")}
        real = run_config(recorder, dict(base, mode="train", batch=candidate, note="max batch"),
                          lambda: jax_measure(model, jax_params_for(name, model, None), candidate,
                                              "train", _one_round(args), deadline,
                                              precompiled=executables[candidate]),
                          model, peaks, device)
        record.update(batch=candidate, confirmed=real["status"] == "ok",
                      error=None if real["status"] == "ok" else real.get("error"))
        if record["confirmed"]:
            break
    executables.clear()
    recorder.add(record)


def _one_round(args):
    return argparse.Namespace(**{**vars(args), "rounds": 2, "warmup": 1})


def run_plan(recorder, args, batches, peaks, torch_mod, deadline) -> None:
    """Every planned measurement: per configuration JAX then PyTorch eager (when both run);
    torch.compile ones after all the others, since they cost the most time."""
    device = jax.devices()[0]
    torch_models: Dict[str, Any] = {}
    params_cache: Dict[Tuple[str, str], Any] = {}
    baseline = bool(torch_mod) and "torch" in args.frameworks
    deferred = []
    for name, dtype, batch, remat in plan(args, batches):
        for mode in args.modes:
            if mode == "infer" and remat != args.remat[0]:
                continue  # remat changes nothing without a backward pass
            base = {"framework": "jax", "model": name, "dtype": dtype, "batch": batch,
                    "mode": mode, "remat": remat, "image_size": args.image_size}
            if "jax" in args.frameworks:
                run_jax_config(recorder, args, base, peaks, torch_mod, torch_models, params_cache,
                               device, deadline)
            if baseline and remat == args.remat[0]:
                deferred += run_torch_configs(recorder, args, torch_mod, torch_models, base,
                                              peaks, deadline)
    for base in deferred:
        run_torch_configs(recorder, args, torch_mod, torch_models, base, peaks, deadline,
                          compiled=True)


def run_jax_config(recorder, args, base, peaks, torch_mod, torch_models, params_cache, device,
                   deadline):
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
            params_cache[(name, remat)] = jax_params_for(name, model, torch_models.get(name))
        params = params_cache[(name, remat)]
    except Exception as exc:  # an unknown remat value counts as remat not available
        unknown_remat = remat != args.remat[0] and isinstance(exc, (ValueError, TypeError))
        recorder.add(dict(base, status="skipped" if unknown_remat else "error",
                          error=short_error(exc)))
        return
    stats = device_memory_stats(device)
    free = (stats["bytes_limit"] - stats.get("bytes_in_use", 0)
            if stats.get("bytes_limit") else None)
    predicted = predicted_bytes(recorder.records, base)
    if free and predicted and predicted > 1.05 * free:
        recorder.add(dict(base, status="skipped", error=f"would not fit: ~{predicted / 2**30:.1f} "
                          f"GiB by a smaller batch's memory, {free / 2**30:.1f} GiB free"))
        return
    run_config(recorder, base, lambda: jax_measure(model, params, base["batch"], base["mode"],
                                                   args, deadline, free_bytes=free),
               model, peaks, device)


def predicted_bytes(records: List[Dict[str, Any]], base: Dict[str, Any]) -> Optional[int]:
    """Device bytes ``base`` needs, extrapolated linearly in the batch from the largest smaller
    batch of the same JAX configuration (arguments fixed, the rest per image); None if none."""
    same = [r for r in records if r.get("framework") == "jax" and r.get("memory")
            and all(r.get(k) == base[k] for k in ("model", "dtype", "mode", "remat"))
            and isinstance(r.get("batch"), int) and r["batch"] < base["batch"]
            and required_bytes(r["memory"])]
    if not same:
        return None
    ref = max(same, key=lambda r: r["batch"])
    need, fixed = required_bytes(ref["memory"]), ref["memory"]["argument_bytes"] or 0
    return int(fixed + (need - fixed) * base["batch"] / ref["batch"])


def run_torch_configs(recorder, args, torch_mod, torch_models, base, peaks, deadline,
                      compiled: bool = False) -> list:
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
    run_config(recorder, record, lambda: torch_measure(
        torch_mod, torch_models[name], base["batch"], base["mode"], base["dtype"], compiled,
        args, deadline), model, peaks)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # also after a failure, for the next configuration
    wants_compile = (torch_device(torch).type == "cuda" and args.torch_compile and
                     (name, base["dtype"], base["batch"]) in args.torch_compile_configs)
    return [base] if wants_compile and not compiled else []


def environment(args, torch_mod) -> Dict[str, Any]:
    """Device and version information for the JSON file."""
    device = jax.devices()[0]
    meta = {"jax_device_platform": device.platform, "jax_device_kind": device.device_kind,
            "jax_device": str(device), "jax_device_count": jax.device_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision",
                                                    None),
            "peak_bytes_in_use_note": "device-wide peak since the process started",
            "create_model_accepts_remat": create_model_accepts_remat(),
            "image_size": args.image_size, "argv": sys.argv[1:],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import jaxlib
        meta["jaxlib"] = jaxlib.__version__
    except Exception:
        pass
    if torch_mod:
        meta["jax_weights"] = "torch twin, torch.manual_seed(0)"
    if torch_mod and "torch" in args.frameworks:
        torch = torch_mod[0]
        meta.update(torch=torch.__version__, torch_device=str(torch_device(torch)),
                    torch_threads=torch.get_num_threads(),
                    torch_float32_matmul_precision=torch.get_float32_matmul_precision())
        if torch.cuda.is_available():
            meta["torch_device_name"] = torch.cuda.get_device_name(0)
    return meta


def measure_peaks(args, torch_mod) -> Dict[str, Any]:
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
            print(f"[throughput] peak {dtype} matmul {size}^3: "
                  f"{peaks[dtype]['flops_per_s'] / 1e12:.2f} TFLOP/s", flush=True)
        except Exception as exc:
            peaks[dtype] = {"error": short_error(exc)}
    return peaks


# ----------------------------------------------------------------------------------------------
# Summary table


def summary_lines(records: List[Dict[str, Any]]) -> List[str]:
    """An aligned table of the measured records, then JAX / PyTorch ratios."""
    header = (f"{'framework':<13} {'model':<12} {'dtype':<5} {'remat':<6} {'mode':<5} "
              f"{'batch':>5} {'img/s':>9} {'step ms':>9} {'compile s':>9} {'TFLOP/s':>8} "
              f"{'MFU':>6} {'act MB/img':>10} {'peak GB':>8}")
    lines = [header]
    for r in records:
        if r.get("mode") == "max_batch":
            lines.append(f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} "
                         f"{'none':<6} {'max batch':<10} {fmt(r.get('batch'), 'd'):>0} "
                         f"(limit {r.get('limit_bytes', 0) / 1e9:.3g} GB, confirmed by a real "
                         f"step: {r.get('confirmed', '-')}) {r.get('error') or ''}")
            continue
        if r.get("status") != "ok":
            lines.append(f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} "
                         f"{r.get('remat', 'none'):<6} {r['mode']:<5} {r['batch']:>5} "
                         f"{r['status']}: {r.get('error', '')[:80]}")
            continue
        act = r.get("activation_bytes_per_image")
        peak = r.get("peak_bytes_in_use")
        lines.append(
            f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} {r.get('remat', 'none'):<6} "
            f"{r['mode']:<5} {r['batch']:>5} {r['img_s']:>9.1f} {r['step_ms']:>9.1f} "
            f"{fmt(r.get('compile_s'), '.1f'):>9} {fmt(r.get('tflops_per_s'), '.2f'):>8} "
            f"{fmt(r.get('mfu'), '.1%'):>6} {fmt(act and act / 1e6, '.1f'):>10} "
            f"{fmt(peak and peak / 1e9, '.1f'):>8}")
    lines += ratio_lines(records)
    return lines


def ratio_lines(records: List[Dict[str, Any]]) -> List[str]:
    """JAX images/s divided by each PyTorch variant's, for the configurations both measured (a
    PyTorch record carries the remat value of the JAX configuration it was measured beside)."""
    ok = {(r["framework"], r["model"], r["dtype"], r["batch"], r["mode"], r.get("remat")):
          r["img_s"]
          for r in records if r.get("status") == "ok" and r.get("mode") in ("train", "infer")
          and not r.get("note")}
    lines = []
    for (framework, model, dtype, batch, mode, remat), jax_rate in sorted(ok.items(), key=str):
        if framework != "jax":
            continue
        for other in ("torch", "torch-compile"):
            rate = ok.get((other, model, dtype, batch, mode, remat))
            if rate:
                lines.append(f"JAX / {other:<13} {model:<12} {dtype:<5} {mode:<5} b={batch:<5} "
                             f"{jax_rate / rate:6.2f}")
    return (["", "ratios (images/s):"] + lines) if lines else []


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help="S, M, L, tiny or full names (default: S M L; --quick: tiny)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--batches", nargs="+", default=None,
                        help="batch sizes for all models, or per model as S:64,128,256 "
                             "(default: 32 64 128; --quick: 2)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="default 224; --quick: 56")
    parser.add_argument("--frameworks", nargs="+", default=["jax", "torch"],
                        choices=["jax", "torch"])
    parser.add_argument("--modes", nargs="+", default=["train", "infer"],
                        choices=["train", "infer"])
    parser.add_argument("--no-twin-weights", action="store_true",
                        help="JAX weights from init_variables instead of the torch twin's")
    parser.add_argument("--max-batch-dtypes", nargs="+", default=None, choices=sorted(DTYPES),
                        help="dtypes of the max-batch search (default: --dtypes)")
    parser.add_argument("--remat", nargs="+", default=["minimal"],
                        help="remat values for create_model (none, minimal, full); the first is "
                             "used everywhere, the others for training, first dtype, first batch")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--round-seconds", type=float, default=0.5,
                        help="target length of one timed round")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="start no new measurement after this many seconds")
    parser.add_argument("--max-batch", nargs="*", default=None, metavar="MODEL",
                        help="search the largest training batch for these models (GPU/TPU; on "
                             "CPU with --memory-limit-gb); no value: the first model")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="memory limit for --max-batch (default: the device's bytes_limit)")
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                        help="skip torch.compile on CUDA")
    parser.add_argument("--torch-compile-for", nargs="*", default=None, metavar="MODEL:DTYPE:BATCH",
                        help="configurations that also run torch.compile (default: the first "
                             "model, dtype and batch)")
    parser.add_argument("--compile-reserve-s", type=float, default=60.0,
                        help="start torch.compile only with this much budget left")
    parser.add_argument("--torch-fp32-precision", default="high", choices=["high", "highest"],
                        help="torch.set_float32_matmul_precision on CUDA: high = TF32 (like "
                             "XLA's default on recent NVIDIA GPUs), highest = full float32")
    parser.add_argument("--peak-size", type=int, default=0,
                        help="matmul size for the peak FLOP/s (default 8192; 2048 on CPU)")
    parser.add_argument("--peak-repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="output file (default $OUT/throughput.json)")
    parser.add_argument("--append", action="store_true", help="add to the records of --json")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model at 56x56, batch 2, 2 short rounds")
    parser.add_argument("--summarize", nargs="+", metavar="JSON",
                        help="only print the table of these result files")
    args = parser.parse_args(argv)
    quick = args.quick
    args.models = args.models or (["tiny"] if quick else ["S", "M", "L"])
    args.batches = args.batches or (["2"] if quick else ["32", "64", "128"])
    args.image_size = args.image_size or (56 if quick else 224)
    if quick:
        args.rounds, args.warmup, args.round_seconds = 2, 3, 0.05
        args.peak_size, args.peak_repeats = args.peak_size or 256, 2
        args.compile_reserve_s = 0.0
    args.models = [model_name(m) for m in args.models]
    if args.json is None and os.environ.get("OUT"):
        args.json = os.path.join(os.environ["OUT"], "throughput.json")
    if args.max_batch is not None:
        args.max_batch = [model_name(m) for m in args.max_batch] or args.models[:1]
    return args


def torch_compile_configs(args, batches) -> set:
    """(model, dtype, batch) triples that also run torch.compile."""
    if args.torch_compile_for is None:
        first = args.models[0]
        return {(first, args.dtypes[0], batches[first][0])}
    out = set()
    for item in args.torch_compile_for:
        try:
            alias, dtype, batch = item.split(":")
            out.add((model_name(alias), dtype, int(batch)))
        except ValueError:
            raise UserError(f"bad --torch-compile-for entry {item!r}; use e.g. S:bf16:128") \
                from None
    return out


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The whole benchmark; returns {'meta': ..., 'records': [...]} as written to --json."""
    args = parse_args(argv)
    if args.summarize:
        records = []
        for path in args.summarize:
            with open(path) as f:
                records += json.load(f).get("records", [])
        print("\n".join(summary_lines(records)))
        return {"records": records}
    started = time.monotonic()
    deadline = started + args.budget_s
    batches = parse_batches(args.batches, args.models)
    args.torch_compile_configs = torch_compile_configs(args, batches)
    device = jax.devices()[0]  # JAX's backend (and its CUDA libraries) before torch's
    torch_mod = import_torch(args)
    if torch_mod and "torch" in args.frameworks:
        torch = torch_mod[0]
        if torch.cuda.is_available():
            torch.set_float32_matmul_precision(args.torch_fp32_precision)
            torch.backends.cudnn.benchmark = True
        print(f"[throughput] torch {torch.__version__} on {torch_device(torch)}", flush=True)
    if "jax" not in args.frameworks and not (torch_mod and "torch" in args.frameworks):
        raise UserError("nothing to run: --frameworks torch but PyTorch is unavailable")
    print(f"[throughput] jax {jax.__version__} on {device.platform} ({device.device_kind}); "
          f"models {args.models}, dtypes {args.dtypes}, batches {batches}", flush=True)
    peaks = measure_peaks(args, torch_mod)
    meta = dict(environment(args, torch_mod), peak_flops=peaks,
                flops_per_image={m: flop_count.summary(build_model(m, args.image_size, "fp32",
                                                                   args.remat[0], False))
                                 for m in args.models},
                training_flops_convention="3 x forward matmul/conv FLOPs (dynamixer_jax.model.flops)")
    recorder = Recorder(args.json, meta, args.append)
    recorder.write()
    run_plan(recorder, args, batches, peaks, torch_mod, deadline)
    if args.max_batch and "jax" in args.frameworks:
        run_max_batch(recorder, args, batches, peaks, torch_mod, deadline)
    recorder.meta["elapsed_s"] = time.monotonic() - started
    recorder.write()
    print("\n".join(summary_lines(recorder.records)), flush=True)
    if args.json:
        print(f"[throughput] wrote {args.json}", flush=True)
    return {"runs": recorder.runs, "records": recorder.records}


def run_max_batch(recorder, args, batches, peaks, torch_mod, deadline) -> None:
    """The max-batch search for --max-batch models, every dtype, within the budget."""
    device = jax.devices()[0]
    stats = device_memory_stats(device)
    if args.memory_limit_gb:
        limit, confirm = int(args.memory_limit_gb * 1e9), device.platform != "cpu"
    elif stats.get("bytes_limit"):
        limit, confirm = int(stats["bytes_limit"]), True
    else:
        print("[throughput] max-batch: no bytes_limit on this device; pass --memory-limit-gb",
              flush=True)
        return
    for name in args.max_batch:
        for dtype in args.max_batch_dtypes or args.dtypes:
            base = {"framework": "jax", "model": name, "dtype": dtype, "mode": "max_batch",
                    "remat": args.remat[0], "batch": None, "image_size": args.image_size}
            if time.monotonic() > deadline:
                recorder.add(dict(base, status="skipped", error="time budget"))
                continue
            try:
                max_batch_search(recorder, args, name, dtype, max(batches[name]), limit, device,
                                 peaks, deadline, confirm, torch_mod)
            except Exception as exc:
                traceback.print_exc()
                recorder.add(dict(base, status="error", error=short_error(exc)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
