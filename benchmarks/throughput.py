"""Training-step and inference throughput of DynaMixer against our PyTorch twin of the authors'
model, on whatever device JAX and PyTorch find (CPU, GPU, TPU), the baseline measured in the same
run.

    python benchmarks/throughput.py --quick                  # tiny model at 56x56, batch 2
    python benchmarks/throughput.py [--model S] [--batches 8 16] [--dtype fp32|bf16]
        [--modes train infer] [--settings torch jax:minimal jax:none ...] [--json out.json]
    python benchmarks/throughput.py --dtype bf16 --batches 128 --concurrent --steps 10 \\
        --settings peak jax:minimal torch torch-compile jax:minimal@M torch@M    # one GPU
    python benchmarks/throughput.py --summarize out.json     # the table of a JSON file again

A setting is ``NAME[@MODEL]`` (MODEL: S, M, L, a variant name, or ``tiny``; default ``--model``):
``jax:<remat>`` (``none``, ``minimal``, ``full``); ``jax-scan:<remat>`` (``scan_layers=True``);
``jax-cublas:<remat>`` (XLA:GPU's Triton matmul fusions off: every matmul through cuBLAS);
``jax-default-scheduler:<remat>`` (XLA:CPU's own concurrency-optimised scheduler, which defeats
rematerialisation; see ``dynamixer_jax/xla_cpu.py``); ``torch`` (the twin, ``dynamixer_torch``,
eager); ``torch-compile`` (the whole model under ``torch.compile``); ``torch-compile-layers`` (each
mixer layer compiled on its own: far shorter compiles); ``peak`` (the median FLOP/s of a large
matmul in the compute dtype, for model FLOP utilisation).

``train`` is forward in train mode (stochastic depth 0.1), integer-label cross-entropy, backward
and AdamW (``benchlib/adamw.py``; PyTorch: ``torch.optim.AdamW``, fused on CUDA), parameters and
optimizer state donated; ``infer`` is ``apply(train=False)`` (PyTorch: ``no_grad``, eval mode).
``bf16`` computes in bfloat16 with float32 parameters (PyTorch: ``torch.autocast``). PyTorch runs
on CUDA where it sees a GPU (float32 matmuls may use TF32 there, as XLA's default does), else on
the CPU; ``--device cpu`` keeps both frameworks on the CPU.

Every setting runs in a fresh interpreter started with glibc's huge-page malloc (see
``dynamixer_jax/train/hugepages.py``), so that no framework warms the allocator or the caches for
the other; ``--rounds`` processes per setting, one after the other; ``--in-process`` runs them all
in this process instead. ``--concurrent`` (for an accelerator, where compiling dominates a short
lease) starts every setting's process at once: they compile side by side, wait until all have
compiled (or ``--barrier-s`` has passed), then take turns on the device, one timed at a time under
a file lock (``$STEP_TIMING_LOCK`` if set, so that other work can hold the device too); compile
times are then inflated by the contention (read them as upper bounds).

Reported per (batch, mode, setting): median images/s over the timed rounds, its ratio to PyTorch
eager of the same model, MFU (analytic FLOPs per image, ``dynamixer_jax.model.flops``, a training
step counting 3 x forward, x images/s over the ``peak`` setting's FLOP/s), compile seconds, XLA's
temp bytes per image (activations, mostly), the device's peak memory, the kernel's share of the
CPU time and page faults per step. Beside any CPU figure: the CPU and its vector extensions.
``--trace DIR`` also writes a ``jax.profiler`` trace of each JAX setting's steps (after timing).
Records go to ``--json`` (default ``$OUT/throughput.json``) after every batch. No timed
assertions anywhere; read the figures on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benchlib import UserError, cpu_description, short_error, write_json
from benchlib.models import DROP_PATH_RATE, DTYPES, NUM_CLASSES, architecture, create, model_name

XLA_OPTIONS = {"jax-cublas": "--xla_gpu_enable_triton_gemm=false"}
JAX_KINDS = ("jax", "jax-scan", "jax-default-scheduler", *XLA_OPTIONS)
TORCH_COMPILE = {"torch": None, "torch-compile": "model", "torch-compile-layers": "layers"}
BARRIER_DIR, BARRIER_COUNT, BARRIER_DEADLINE = (
    "STEP_BARRIER_DIR",
    "STEP_BARRIER_COUNT",
    "STEP_BARRIER_DEADLINE",
)
TIMING_LOCK = "STEP_TIMING_LOCK"


def parse_setting(setting: str, default_model: str) -> tuple[str, str]:
    """(name, model) of ``NAME[@MODEL]``; a name it does not know is a UserError."""
    name, _, model = setting.partition("@")
    kind, _, remat = name.partition(":")
    known = name == "peak" or name in TORCH_COMPILE or (kind in JAX_KINDS and remat)
    if not known:
        raise UserError(
            f"unknown setting {setting!r}; use e.g. jax:minimal, jax-scan:none, torch, "
            "torch-compile, peak (with @S, @M, @L or @tiny for another model)"
        )
    return name, model_name(model) if model else default_model


def compiled_and_ready() -> dict:
    """Tell the other ``--concurrent`` settings that this one has compiled, and wait until all
    have (or the barrier's deadline has passed). Does nothing outside ``--concurrent``."""
    folder = os.environ.get(BARRIER_DIR)
    if not folder:
        return {}
    ready_at = time.time()
    with open(os.path.join(folder, f"ready-{os.getpid()}"), "w"):
        pass
    count, deadline = int(os.environ[BARRIER_COUNT]), float(os.environ[BARRIER_DEADLINE])
    while len(os.listdir(folder)) < count and time.time() < deadline:
        time.sleep(0.2)
    # True: some setting was still compiling (or starting) when this one was timed.
    return {"barrier_ran_out": len(os.listdir(folder)) < count, "ready_at": ready_at}


@contextlib.contextmanager
def device_turn():
    """Hold the device alone while timing (a file lock shared by ``--concurrent`` settings)."""
    path = os.environ.get(TIMING_LOCK)
    if not path:
        yield
        return
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def timed_rounds(step, batch: int, args) -> dict:
    """One untimed step, ``--warmup`` more, then ``--inner-rounds`` rounds of ``--steps`` steps
    (``step(i)`` runs step i and returns a function that waits for it); images/s per round, their
    median, the kernel's share of this process's CPU time and page faults per timed step."""
    wait = step(0)
    for i in range(args.warmup):
        wait = step(1 + i)
    wait()
    rates = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    timed_from = time.time()
    for r in range(args.inner_rounds):
        start = time.perf_counter()
        for i in range(args.steps):
            wait = step(1 + args.warmup + r * args.steps + i)
        wait()
        rates.append(args.steps * batch / (time.perf_counter() - start))
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    img_s = statistics.median(rates)
    return {
        "img_s": img_s,
        "step_ms": 1e3 * batch / img_s,
        "rounds_img_s": rates,
        "timed_window": [timed_from, time.time()],  # wall clock, to check turns never overlap
        "sys_share": system / max(user + system, 1e-9),
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / (args.steps * args.inner_rounds),
    }


def flops_per_image(model: str, mode: str, image_size: int) -> float:
    """Matmul and convolution FLOPs per image of a step (training: 3 x forward)."""
    from dynamixer_jax.model import flops

    forward = flops.forward_flops(create(model, image_size=image_size))
    return 3.0 * forward if mode == "train" else float(forward)


def run_jax(name: str, model: str, batch: int, mode: str, args) -> dict:
    """Compile and time jitted steps of our model in this process."""
    import jax
    import numpy as np

    from benchlib.adamw import make_adamw_step
    from benchlib.timing import compile_timed
    from benchlib.xla_stats import bytes_fields, costs
    from dynamixer_jax import init_variables

    kind, remat = name.split(":")
    device = jax.devices(args.device)[0] if args.device else jax.devices()[0]
    jax.config.update("jax_default_device", device)  # --device cpu --in-process on a GPU machine
    net = create(
        model,
        image_size=args.image_size,
        num_classes=NUM_CLASSES,
        drop_path_rate=DROP_PATH_RATE if mode == "train" else 0.0,
        remat=remat,
        scan_layers=kind == "jax-scan",
        dtype=DTYPES[args.dtype],
    )
    rng = np.random.default_rng(0)
    shape = (batch, args.image_size, args.image_size, 3)
    images = [jax.device_put(rng.standard_normal(shape, np.float32)) for _ in range(2)]
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
    state = {"params": init_variables(net, 0)["params"]}
    if mode == "train":
        fn, tx = make_adamw_step(net)
        state["opt"] = tx.init(state["params"])
        example = (state["params"], state["opt"], images[0], labels, jax.random.key(0))
    else:
        fn = jax.jit(lambda params, x: net.apply({"params": params}, x, train=False))
        example = (state["params"], images[0])
    compiled, compile_s = compile_timed(fn, *example)
    memory, cost = bytes_fields(compiled), costs(compiled)
    barrier = compiled_and_ready()

    def one_step(i):
        if mode == "train":
            state["params"], state["opt"], out = compiled(
                state["params"], state["opt"], images[i % 2], labels, jax.random.key(i)
            )
        else:
            out = compiled(state["params"], images[i % 2])
        return lambda: jax.block_until_ready(out)

    with device_turn():
        timing = timed_rounds(one_step, batch, args)
        stats = device.memory_stats() or {}
    if args.trace:
        folder = os.path.join(args.trace, f"{name.replace(':', '_')}_{model}_{mode}_b{batch}")
        with jax.profiler.trace(folder):
            for i in range(args.steps):
                with jax.profiler.StepTraceAnnotation(mode, step_num=i):
                    wait = one_step(i)
            wait()
    temp = memory["temp_bytes"]
    return {
        **timing,
        **barrier,
        "compile_s": compile_s,
        "memory": memory,
        "temp_mb_per_image": temp / batch / 1e6 if temp is not None else None,
        "xla_gflops_per_image": cost["flops"] / batch / 1e9 if cost["flops"] else None,
        "peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9 or None,
        "device": device.device_kind,
        "platform": device.platform,
        "flops_per_image": flops_per_image(model, mode, args.image_size),
    }


def run_torch(name: str, model: str, batch: int, mode: str, args) -> dict:
    """Time PyTorch steps of our twin of the authors' model, eager or compiled, on CUDA where
    PyTorch sees a GPU (unless ``--device cpu``)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import dynamixer_torch
    from benchlib.adamw import LEARNING_RATE, WEIGHT_DECAY

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32, like XLA's default on NVIDIA GPUs
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = dynamixer_torch.TorchDynaMixer(
        **architecture(model),
        num_classes=NUM_CLASSES,
        image_size=args.image_size,
        drop_path_rate=DROP_PATH_RATE,
    )
    net = net.train(mode == "train").to(device)
    runner, compile_mode = net, TORCH_COMPILE[name]
    if compile_mode == "model":
        runner = torch.compile(net)
    elif compile_mode == "layers":
        # Each layer's own drop-path rate is a constant to Dynamo: a recompile per rate.
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        for layer in net.modules():
            if isinstance(layer, dynamixer_torch.TorchMixerLayer):
                layer.compile()
    fused = {"fused": True} if cuda else {}
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **fused
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    rng = np.random.default_rng(0)
    shape = (batch, 3, args.image_size, args.image_size)
    images = [torch.from_numpy(rng.standard_normal(shape, np.float32)).to(device) for _ in "ab"]
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device)
    sync = torch.cuda.synchronize if cuda else lambda: None

    def one_step(i):
        if mode == "train":
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(runner(images[i % 2]).float(), labels)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast:
                runner(images[i % 2])
        return sync

    compile_s = None
    if compile_mode:  # compiling happens in the first step; off the device turn
        start = time.perf_counter()
        one_step(0)()
        compile_s = time.perf_counter() - start
    barrier = compiled_and_ready()
    with device_turn():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        timing = timed_rounds(one_step, batch, args)
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    return {
        **timing,
        **barrier,
        "compile_s": compile_s,
        "peak_gb": peak,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "platform": device.type,
        "torch": torch.__version__,
        "flops_per_image": flops_per_image(model, mode, args.image_size),
    }


def run_peak(args) -> dict:
    """Median FLOP/s of one large matmul in the compute dtype on JAX's device."""
    import jax

    from benchlib.timing import measure_peak_jax

    device = jax.devices(args.device)[0] if args.device else jax.devices()[0]
    jax.config.update("jax_default_device", device)
    size = args.peak_size or (2048 if device.platform == "cpu" else 8192)
    barrier = compiled_and_ready()
    with device_turn():
        peak = measure_peak_jax(args.dtype, size, 20)
    return {**peak, **barrier, "device": device.device_kind, "platform": device.platform}


def run_setting(setting: str, batch: int, mode: str, args) -> dict:
    """Measure one setting here (see the module docstring)."""
    name, model = parse_setting(setting, args.model)
    if name == "peak":
        return run_peak(args)
    if name in TORCH_COMPILE:
        return run_torch(name, model, batch, mode, args)
    return run_jax(name, model, batch, mode, args)


def setting_env(setting: str, concurrent: bool, device: str | None) -> dict:
    """The environment of one setting's process."""
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1", DYNAMIXER_NO_REEXEC="1")
    name = setting.partition("@")[0]
    kind = name.split(":")[0]
    if kind == "jax-default-scheduler":
        env["DYNAMIXER_KEEP_XLA_FLAGS"] = "1"
    if kind in XLA_OPTIONS:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_OPTIONS[kind]}".strip()
    if name in TORCH_COMPILE or device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"  # torch: jax is imported for the FLOP count only
    elif concurrent:  # several JAX processes share the device: take memory as it is needed
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def start_setting(setting: str, batch: int, mode: str, args) -> subprocess.Popen:
    """Start ``run_setting`` in a fresh interpreter; its JSON is the last line of its stdout."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import argparse, json, sys; sys.path.insert(0, {here!r}); "
        "from throughput import run_setting; "
        f"args = argparse.Namespace(**{vars(args)!r}); "
        f"print(json.dumps(run_setting({setting!r}, {batch}, {mode!r}, args)))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=setting_env(setting, args.concurrent, args.device),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(setting: str, process: subprocess.Popen, timeout: float | None) -> dict:
    """The result of a started setting, or an 'error' entry for a failure or a timeout."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": "timed out"}
    if process.returncode:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        print(f"{setting} failed:\n{stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"error": lines[-1][:300] if lines else f"exit code {process.returncode}"}
    return json.loads(stdout.strip().splitlines()[-1])


def measure_round(args, batch: int, mode: str) -> dict[str, dict]:
    """Every setting once: in this process, in a process each one after the other, or (with
    ``--concurrent``) in a process each side by side."""
    if args.in_process:
        out = {}
        for setting in args.settings:
            try:
                out[setting] = run_setting(setting, batch, mode, args)
            except Exception as exc:  # one failing setting must not end the run
                out[setting] = {"error": short_error(exc)}
        return out
    if not args.concurrent:
        return {
            s: finish(s, start_setting(s, batch, mode, args), args.setting_timeout_s)
            for s in args.settings
        }
    with tempfile.TemporaryDirectory(prefix="step_barrier_") as scratch:
        folder = os.path.join(scratch, "ready")
        os.mkdir(folder)
        shared_lock = os.environ.get(TIMING_LOCK)  # e.g. also held by a correctness check
        barrier = {
            BARRIER_DIR: folder,
            BARRIER_COUNT: str(len(args.settings)),
            BARRIER_DEADLINE: str(time.time() + args.barrier_s),
            TIMING_LOCK: shared_lock or os.path.join(scratch, "device.lock"),
        }
        saved = dict(os.environ)
        os.environ.update(barrier)
        try:
            processes = {s: start_setting(s, batch, mode, args) for s in args.settings}
        finally:
            os.environ.clear()
            os.environ.update(saved)
        results: dict[str, dict] = {}
        deadline = time.monotonic() + (args.setting_timeout_s or 1e9)
        while len(results) < len(processes):
            for setting, process in processes.items():
                if setting not in results and process.poll() is not None:
                    results[setting] = finish(setting, process, None)
                    # a failed setting must not hold the others at the barrier
                    with open(os.path.join(folder, f"ready-gone-{process.pid}"), "w"):
                        pass
            if time.monotonic() > deadline:
                for setting, process in processes.items():
                    if setting not in results:
                        results[setting] = finish(setting, process, 0.1)
            time.sleep(0.2)
        return {s: results[s] for s in args.settings}


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def report_rows(batch: int, mode: str, runs: dict[str, list[dict]], args) -> list[dict]:
    """One row per setting: median images/s, its ratio to PyTorch eager of the same model, and
    model FLOP utilisation where a ``peak`` setting ran."""
    peak = median_of(runs.get("peak", []), "flops_per_s")
    eager = {}
    for setting, results in runs.items():
        name, model = parse_setting(setting, args.model)
        if name == "torch" and median_of(results, "img_s"):
            eager[model] = median_of(results, "img_s")
    rows = []
    for setting, results in runs.items():
        name, model = parse_setting(setting, args.model)
        row = {"batch": batch, "mode": mode, "setting": setting, "model": model, "runs": results}
        rate = median_of(results, "img_s")
        if name == "peak":
            row["peak_tflops"] = peak / 1e12 if peak else None
        elif rate:
            flops = median_of(results, "flops_per_image")
            row.update(
                img_s=rate,
                vs_torch=rate / eager[model] if model in eager else None,
                mfu=rate * flops / peak if peak and flops else None,
            )
        rows.append(row)
    return rows


def fmt(value, spec: str, width: int) -> str:
    return f"{'-' if value is None else format(value, spec):>{width}}"


HEADER = (
    f"{'batch':>5} {'mode':>5} {'setting':>28} {'img/s':>8} {'/torch':>7} {'MFU':>6} "
    f"{'compile s':>9} {'MB/img':>7} {'peak GB':>7} {'sys%':>5} {'faults/step':>12}"
)


def row_line(row: dict) -> str:
    """One line of the table."""
    head = f"{row['batch']:>5} {row.get('mode', 'train'):>5} {row['setting']:>28}"
    runs = row["runs"]
    if row["setting"].startswith("peak"):
        return f"{head} matmul {fmt(row.get('peak_tflops'), '.2f', 0)} TFLOP/s"
    if "img_s" not in row:
        return f"{head} failed: " + "; ".join(r.get("error", "?") for r in runs)
    late = " (timed while others still compiled)" if median_of(runs, "barrier_ran_out") else ""
    sys_share = median_of(runs, "sys_share")
    return (
        f"{head} {row['img_s']:>8.1f} {fmt(row.get('vs_torch'), '.2f', 7)} "
        f"{fmt(row.get('mfu'), '.1%', 6)} "
        f"{fmt(median_of(runs, 'compile_s'), '.1f', 9)} "
        f"{fmt(median_of(runs, 'temp_mb_per_image'), '.0f', 7)} "
        f"{fmt(median_of(runs, 'peak_gb'), '.1f', 7)} "
        f"{fmt(sys_share and 100 * sys_share, '.0f', 5)} "
        f"{fmt(median_of(runs, 'faults_per_step'), '.0f', 12)}{late}"
    )


def table(report: dict) -> list[str]:
    """The table of a report, with the CPU and its vector extensions where a figure is a CPU's."""
    rows = report["results"]
    lines = [HEADER, *map(row_line, rows)]
    on_cpu = any(r.get("platform") == "cpu" for row in rows for r in row["runs"])
    cpu = report.get("cpu")
    if on_cpu and cpu:
        extensions = " ".join(cpu["vector_extensions"]) or "none found"
        lines.append(f"CPU: {cpu['name']}, {cpu['cores']} cores; vector extensions: {extensions}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="S, M, L, tiny or a full name (default S)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 8 16")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--modes", nargs="+", choices=["train", "infer"], default=["train"])
    parser.add_argument("--image-size", type=int, default=None, help="default 224")
    parser.add_argument(
        "--settings", nargs="+", default=None, help="default: torch jax:minimal (--quick: peak too)"
    )
    parser.add_argument("--device", choices=["cpu"], default=None, help="both on the CPU")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps after the first")
    parser.add_argument("--inner-rounds", type=int, default=1, help="timed rounds per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting")
    parser.add_argument("--in-process", action="store_true", help="every setting in this process")
    parser.add_argument("--concurrent", action="store_true", help="compile side by side")
    parser.add_argument(
        "--barrier-s", type=float, default=300.0, help="--concurrent: the longest wait for all"
    )
    parser.add_argument(
        "--setting-timeout-s", type=float, default=None, help="give up on a process after this"
    )
    parser.add_argument("--peak-size", type=int, default=0, help="8192 (2048 on a CPU)")
    parser.add_argument("--trace", metavar="DIR", help="a jax.profiler trace of each JAX setting")
    parser.add_argument("--json", help="output file (default $OUT/throughput.json)")
    parser.add_argument("--summarize", metavar="JSON", help="only print the table of this file")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model at 56x56, batch 2, 2 steps"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.model = model_name(args.model or ("tiny" if quick else "S"))
    args.batches = args.batches or ([2] if quick else [8, 16])
    args.image_size = args.image_size or (56 if quick else 224)
    if args.settings is None:
        args.settings = (["peak"] if quick else []) + ["torch", "jax:minimal"]
        if os.environ.get("DYNAMIXER_NO_TORCH") == "1" or not importlib.util.find_spec("torch"):
            args.settings.remove("torch")  # no PyTorch here: JAX alone
    if quick:
        args.steps, args.rounds, args.peak_size = 2, 1, args.peak_size or 256
    for setting in args.settings:
        name, _ = parse_setting(setting, args.model)
        if args.in_process and name.split(":")[0] in ("jax-default-scheduler", *XLA_OPTIONS):
            raise UserError(f"{setting} sets XLA flags for its own process: not --in-process")
    if min(args.batches) < 1:
        raise UserError("batch sizes must be positive")
    if args.json is None and os.environ.get("OUT"):
        args.json = os.path.join(os.environ["OUT"], "throughput.json")
    return args


def run(argv: Sequence[str] | None = None) -> dict:
    """The whole benchmark; returns the report as written to ``--json``."""
    args = parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            report = json.load(f)
        print("\n".join(table(report)), flush=True)
        return report
    report = {
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "dtype": args.dtype,
        "image_size": args.image_size,
        "cpu": cpu_description(),
        "results": [],
    }
    print(HEADER, flush=True)
    for batch in args.batches:
        for mode in args.modes:
            runs: dict[str, list[dict]] = {setting: [] for setting in args.settings}
            for _ in range(args.rounds):
                for setting, result in measure_round(args, batch, mode).items():
                    runs[setting].append(result)
            for row in report_rows(batch, mode, runs, args):
                report["results"].append(row)
                print(row_line(row), flush=True)
            if args.json:  # after every batch and mode, so a later timeout keeps what was measured
                write_json(args.json, report)
    print("\n".join(table(report)[len(report["results"]) + 1 :]), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run; a command-line mistake is one line on stderr and exit code 2."""
    try:
        run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
