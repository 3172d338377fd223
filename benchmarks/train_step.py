"""Training-step throughput, each setting in its own fresh process: ours against PyTorch.

Every setting (our step with each ``remat`` choice, with ``scan_layers``, with other XLA
options, and our PyTorch twin of the authors' model with ``torch.optim.AdamW``, eager or under
``torch.compile``) runs in a fresh interpreter started with glibc's huge-page malloc, so that no
framework warms the allocator or the caches for the other. The median images/s of each setting
and its ratio to PyTorch eager (of the same model) in the same run are printed, with the compile
time, the activation memory, the kernel share of CPU time and the page faults per step (see
``dynamixer_jax/train/hugepages.py``).

    python benchmarks/train_step.py [--batches 8 16] [--rounds 2] [--model dynamixer_s]
        [--settings jax:minimal jax:none torch] [--json out.json]
    python benchmarks/train_step.py --dtype bf16 --batches 128 --concurrent --steps 20 --warmup 3 \\
        --settings peak jax:minimal torch torch-compile jax:minimal@M torch@M    # one GPU

A setting is ``NAME[@MODEL]`` (MODEL: S, M, L, a variant name, or ``tiny`` for smoke runs;
default ``--model``). Names:
``jax:<remat>`` (``none``, ``minimal``, ``full``); ``jax-scan:<remat>`` (``scan_layers=True``);
``jax-cublas:<remat>`` (XLA:GPU's Triton matmul fusions off: every matmul through cuBLAS);
``jax-default-scheduler:<remat>`` (XLA:CPU's own concurrency-optimised scheduler, which defeats
rematerialisation; see ``dynamixer_jax/xla_cpu.py``); ``torch``; ``torch-compile`` (the whole
model under ``torch.compile``); ``torch-compile-layers`` (each mixer layer compiled on its own,
PyTorch's "regional compilation": far shorter compiles); ``peak`` (the median FLOP/s of a large
matmul in the compute dtype, for model FLOP utilisation). On a GPU PyTorch runs on CUDA and
``bf16`` means ``torch.autocast(bfloat16)``; ours computes in bfloat16 with float32 parameters.

``--concurrent`` (for an accelerator, where compiling dominates a short lease) starts every
setting's process at once: they compile side by side (XLA's matmul autotuning then runs beside
other work, which can cost it a better choice), wait until all have compiled (or
``--barrier-s`` has passed), and then take turns on the device, one timed at a time under a
file lock (``$STEP_TIMING_LOCK`` if set, so that other work can hold the device too). Compile
times are then inflated by the contention; read them as upper bounds.
Read the figures on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

NUM_CLASSES, DROP_PATH = 1000, 0.1
ALIASES = {"S": "dynamixer_s", "M": "dynamixer_m", "L": "dynamixer_l"}  # and "tiny" (smoke runs)
XLA_OPTIONS = {"jax-cublas": "--xla_gpu_enable_triton_gemm=false"}
BARRIER_DIR, BARRIER_COUNT, BARRIER_DEADLINE = (
    "STEP_BARRIER_DIR",
    "STEP_BARRIER_COUNT",
    "STEP_BARRIER_DEADLINE",
)
TIMING_LOCK = "STEP_TIMING_LOCK"


def _rusage_delta(before, after, steps):
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "sys_share": system / max(user + system, 1e-9),
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
    }


def parse_setting(setting: str, default_model: str) -> tuple[str, str]:
    """(name, model variant) of ``NAME[@MODEL]``."""
    name, _, model = setting.partition("@")
    return name, ALIASES.get(model, model) if model else default_model


def compiled_and_ready() -> dict:
    """Tell the other concurrent settings that this one has compiled, and wait until all have (or
    the barrier's deadline has passed); says whether the wait ran out. Does nothing outside
    ``--concurrent``."""
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


def timed_rounds(step, batch: int, steps: int, warmup: int, rounds: int) -> dict:
    """Warm up, then ``rounds`` rounds of ``steps`` steps (``step(i)`` runs step i and returns a
    function that waits for it); images/s per round and their median."""
    wait = None
    for i in range(warmup):
        wait = step(i)
    if wait:
        wait()
    rates = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    timed_from = time.time()
    for r in range(rounds):
        start = time.perf_counter()
        for i in range(steps):
            wait = step(warmup + r * steps + i)
        wait()
        rates.append(steps * batch / (time.perf_counter() - start))
    return {
        "img_s": statistics.median(rates),
        "rounds_img_s": rates,
        "timed_window": [timed_from, time.time()],  # wall clock, to check turns never overlap
        **_rusage_delta(before, resource.getrusage(resource.RUSAGE_SELF), steps * rounds),
    }


def train_flops_per_image(model_name: str, image_size: int) -> float:
    """Matmul and convolution FLOPs of one training step per image (3 x forward)."""
    from benchlib.models import create
    from dynamixer_jax.model.flops import forward_flops

    return 3.0 * forward_flops(create(model_name, image_size=image_size))


def run_jax(
    model_name: str,
    batch: int,
    steps: int,
    remat: str,
    scan_layers: bool = False,
    dtype: str = "fp32",
    warmup: int = 0,
    rounds: int = 1,
    image_size: int = 224,
) -> dict:
    """Time jitted AdamW steps of our model in this process (after one compiling step)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchlib.adamw import make_adamw_step
    from benchlib.models import create
    from benchlib.timing import compile_timed
    from dynamixer_jax import init_variables

    model = create(
        model_name,
        image_size=image_size,
        num_classes=NUM_CLASSES,
        drop_path_rate=DROP_PATH,
        remat=remat,
        scan_layers=scan_layers,
        dtype=jnp.bfloat16 if dtype == "bf16" else None,
    )
    params = init_variables(model, 0)["params"]
    step, tx = make_adamw_step(model)
    rng = np.random.default_rng(0)
    batches = [
        jnp.asarray(rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32))
        for _ in range(3)
    ]
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
    opt_state = tx.init(params)
    compiled, compile_s = compile_timed(
        step, params, opt_state, batches[0], labels, jax.random.key(0)
    )
    temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0)
    barrier = compiled_and_ready()
    state = {"params": params, "opt": opt_state}

    def one_step(i):
        state["params"], state["opt"], loss = compiled(
            state["params"], state["opt"], batches[i % 3], labels, jax.random.key(i)
        )
        return lambda: jax.block_until_ready(loss)

    with device_turn():
        one_step(0)()
        timing = timed_rounds(one_step, batch, steps, warmup, rounds)
        stats = jax.devices()[0].memory_stats() or {}
    return {
        **timing,
        **barrier,
        "compile_s": compile_s,
        "temp_mb_per_image": temp / batch / 1e6,
        "peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9 or None,
        "device": jax.devices()[0].device_kind,
        "train_flops_per_image": train_flops_per_image(model_name, image_size),
    }


def run_torch(
    model_name: str,
    batch: int,
    steps: int,
    dtype: str = "fp32",
    compile_mode: str | None = None,
    warmup: int = 0,
    rounds: int = 1,
    image_size: int = 224,
) -> dict:
    """Time PyTorch train steps (train mode, AdamW) of our twin of the authors' model, eager or
    compiled (``compile_mode``: ``model`` or ``layers``), on CUDA where there is a GPU."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from benchlib.adamw import LEARNING_RATE, WEIGHT_DECAY
    from benchlib.models import architecture, torch_reference

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    twin = torch_reference()
    model = (
        twin.TorchDynaMixer(
            **architecture(model_name),
            num_classes=NUM_CLASSES,
            image_size=image_size,
            drop_path_rate=DROP_PATH,
        )
        .train()
        .to(device)
    )
    runner = model
    if compile_mode == "model":
        runner = torch.compile(model)
    elif compile_mode == "layers":
        # Each layer's own drop-path rate is a constant to Dynamo: a recompile per rate.
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        for layer in model.modules():
            if isinstance(layer, twin.TorchMixerLayer):
                layer.compile()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, **fused
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    rng = np.random.default_rng(0)
    batches = [
        torch.from_numpy(
            rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
        ).to(device)
        for _ in range(3)
    ]
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device)

    def one_step(i):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(runner(batches[i % 3]).float(), labels)
        loss.backward()
        optimizer.step()
        return torch.cuda.synchronize if device.type == "cuda" else lambda: None

    compile_s = None
    if compile_mode:  # compiling happens in the first step; off the device turn
        start = time.perf_counter()
        one_step(0)()
        compile_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
    barrier = compiled_and_ready()
    with device_turn():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        one_step(0)()
        timing = timed_rounds(one_step, batch, steps, warmup, rounds)
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    return {
        **timing,
        **barrier,
        "compile_s": compile_s,
        "peak_gb": peak,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "train_flops_per_image": train_flops_per_image(model_name, image_size),
    }


def run_peak(dtype: str) -> dict:
    """Median FLOP/s of one large matmul in ``dtype`` on JAX's default device."""
    import jax

    from benchlib.timing import measure_peak_jax

    size = 2048 if jax.devices()[0].platform == "cpu" else 8192
    barrier = compiled_and_ready()
    with device_turn():
        peak = measure_peak_jax(dtype, size, 20)
    return {**peak, **barrier, "device": jax.devices()[0].device_kind}


def run_setting(
    setting: str,
    model_name: str,
    batch: int,
    steps: int,
    dtype: str = "fp32",
    warmup: int = 0,
    rounds: int = 1,
    image_size: int = 224,
) -> dict:
    """Run one setting (see the module docstring) here."""
    name, model_name = parse_setting(setting, model_name)
    if name == "peak":
        return run_peak(dtype)
    if name.startswith("torch"):
        mode = {"torch": None, "torch-compile": "model", "torch-compile-layers": "layers"}[name]
        return run_torch(model_name, batch, steps, dtype, mode, warmup, rounds, image_size)
    kind, remat = name.split(":")
    return run_jax(
        model_name, batch, steps, remat, kind == "jax-scan", dtype, warmup, rounds, image_size
    )


def setting_env(setting: str, concurrent: bool) -> dict:
    """The environment of one setting's process."""
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1", DYNAMIXER_NO_REEXEC="1")
    name = setting.partition("@")[0]
    if name.startswith("jax-default-scheduler:"):
        env["DYNAMIXER_KEEP_XLA_FLAGS"] = "1"
    kind = name.split(":")[0]
    if kind in XLA_OPTIONS:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_OPTIONS[kind]}".strip()
    if name.startswith("torch"):
        env["JAX_PLATFORMS"] = "cpu"  # jax is imported for the FLOP count only
    elif concurrent:  # several JAX processes share the device: take memory as it is needed
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def start_setting(setting: str, args, batch: int, concurrent: bool) -> subprocess.Popen:
    """Start ``run_setting`` in a fresh interpreter; its JSON is the last line of its stdout."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); "
        f"from train_step import run_setting; "
        f"print(json.dumps(run_setting({setting!r}, {args.model!r}, {batch}, {args.steps}, "
        f"{args.dtype!r}, {args.warmup}, {args.inner_rounds}, {args.image_size})))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=setting_env(setting, concurrent),
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


def measure_round(args, batch: int) -> dict[str, dict]:
    """One process per setting, one after the other (or, with ``--concurrent``, side by side)."""
    if not args.concurrent:
        return {
            s: finish(s, start_setting(s, args, batch, False), args.setting_timeout_s)
            for s in args.settings
        }
    with tempfile.TemporaryDirectory(prefix="step_barrier_") as scratch:
        folder = os.path.join(scratch, "ready")
        os.mkdir(folder)
        os.environ[BARRIER_DIR] = folder
        os.environ[BARRIER_COUNT] = str(len(args.settings))
        os.environ[BARRIER_DEADLINE] = str(time.time() + args.barrier_s)
        shared_lock = os.environ.get(TIMING_LOCK)  # e.g. also held by a correctness check
        os.environ[TIMING_LOCK] = shared_lock or os.path.join(scratch, "device.lock")
        try:
            processes = {s: start_setting(s, args, batch, True) for s in args.settings}
        finally:
            for key in (BARRIER_DIR, BARRIER_COUNT, BARRIER_DEADLINE, TIMING_LOCK):
                os.environ.pop(key)
            if shared_lock:
                os.environ[TIMING_LOCK] = shared_lock
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


def report_rows(batch: int, runs: dict[str, list[dict]], model: str) -> list[dict]:
    """One row per setting: median images/s, its ratio to PyTorch eager of the same model, and
    model FLOP utilisation where a ``peak`` setting ran."""
    peaks = [r["flops_per_s"] for r in runs.get("peak", []) if "flops_per_s" in r]
    peak = statistics.median(peaks) if peaks else None
    rows = []
    for setting, results in runs.items():
        ok = [r for r in results if "img_s" in r]
        row = {"batch": batch, "setting": setting, "runs": results}
        if setting == "peak" or not ok:
            rows.append({**row, "peak_tflops": peak / 1e12 if peak else None})
            continue
        model_name = parse_setting(setting, model)[1]
        baseline_runs = runs.get("torch" if model_name == model else f"torch@{model_name}", [])
        if not baseline_runs:
            baseline_runs = [
                r
                for key, rs in runs.items()
                if key.startswith("torch@") and parse_setting(key, model)[1] == model_name
                for r in rs
            ]
        baseline = [r["img_s"] for r in baseline_runs if "img_s" in r]
        rate = statistics.median(r["img_s"] for r in ok)
        flops = ok[0].get("train_flops_per_image")
        row.update(
            img_s=rate,
            vs_torch=rate / statistics.median(baseline) if baseline else None,
            mfu=rate * flops / peak if peak and flops else None,
        )
        rows.append(row)
    return rows


def print_row(row: dict) -> None:
    """One line of the table."""

    def median(key):
        values = [r[key] for r in row["runs"] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    if row["setting"] == "peak":
        tflops = row.get("peak_tflops")
        print(f"{row['batch']:>5} {'peak':>28} matmul {tflops or float('nan'):.0f} TFLOP/s")
        return
    if "img_s" not in row:
        errors = "; ".join(r.get("error", "?") for r in row["runs"])
        print(f"{row['batch']:>5} {row['setting']:>28} failed: {errors}", flush=True)
        return
    ratio = f"{row['vs_torch']:7.2f}" if row.get("vs_torch") else f"{'':>7}"
    late = " (timed while others still compiled)" if median("barrier_ran_out") else ""
    mfu = f"{100 * row['mfu']:5.1f}%" if row.get("mfu") else f"{'':>6}"
    print(
        f"{row['batch']:>5} {row['setting']:>28} {row['img_s']:>8.1f} {ratio} {mfu} "
        f"{median('compile_s'):>9.1f} {median('temp_mb_per_image'):>7.0f} "
        f"{median('peak_gb'):>7.1f} {100 * median('sys_share'):>5.0f} "
        f"{median('faults_per_step'):>12.0f}{late}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps after the first")
    parser.add_argument("--inner-rounds", type=int, default=1, help="timed rounds per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["torch", "jax:minimal", "jax:none", "jax-default-scheduler:none"],
    )
    parser.add_argument("--concurrent", action="store_true", help="compile side by side")
    parser.add_argument(
        "--barrier-s", type=float, default=300.0, help="--concurrent: the longest wait for all"
    )
    parser.add_argument(
        "--setting-timeout-s", type=float, default=None, help="give up on a process after this"
    )
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--summarize", metavar="JSON", help="only print the table of this file")
    args = parser.parse_args()
    args.model = ALIASES.get(args.model, args.model)
    print(
        f"{'batch':>5} {'setting':>28} {'img/s':>8} {'/torch':>7} {'MFU':>6} {'compile s':>9} "
        f"{'MB/img':>7} {'peak GB':>7} {'sys%':>5} {'faults/step':>12}",
        flush=True,
    )
    if args.summarize:
        with open(args.summarize) as f:
            for row in json.load(f)["results"]:
                print_row(row)
        return
    report = []
    for batch in args.batches:
        runs: dict[str, list[dict]] = {setting: [] for setting in args.settings}
        for _ in range(args.rounds):
            for setting, result in measure_round(args, batch).items():
                runs[setting].append(result)
        for row in report_rows(batch, runs, args.model):
            report.append(row)
            print_row(row)
        if args.json:  # after every batch, so a later timeout keeps what was measured
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "model": args.model,
                        "dtype": args.dtype,
                        "rounds": args.rounds,
                        "steps": args.steps,
                        "concurrent": args.concurrent,
                        "results": report,
                    },
                    f,
                    indent=1,
                )


if __name__ == "__main__":
    main()
