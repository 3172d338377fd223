"""Training-step and inference images/s of DynaMixer against our PyTorch twin of the authors'
model, on whatever device JAX and PyTorch find, the baseline measured in the same run.

Commands, the settings, how each runs, the step and the table's columns: README, "Benchmarks on
any device".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import benchlib
from benchlib import DROP_PATH_RATE, DTYPES, NUM_CLASSES, UserError, create, model_name
from benchlib.steps import LEARNING_RATE, WEIGHT_DECAY, make_adamw_step
from benchlib.xla_stats import bytes_fields, costs
from dynamixer_jax import init_variables
from dynamixer_jax.model import flops


def parse_setting(setting: str, default_model: str) -> tuple[str, str]:
    """(name, model) of ``NAME[@MODEL]``; a name it does not know is a UserError."""
    name, _, model = setting.partition("@")
    kind, _, option = name.partition(":")
    known = name in ("peak", "torch", "torch-compile") or (kind in ("jax", "jax-scan") and option)
    if not known:
        raise UserError(
            f"unknown setting {setting!r}; use e.g. jax:minimal, jax-scan:none, torch, "
            "torch-compile, peak; @S, @M, @L or @tiny for a model"
        )
    return name, model_name(model) if model else default_model


def timed_steps(step, batch: int, args) -> dict:
    """One untimed step, ``--warmup`` more, then ``--steps`` timed steps (``step(i)`` runs step i
    and returns a function that waits for it): images/s and milliseconds per step."""
    for i in range(1 + args.warmup):
        wait = step(i)
    wait()
    start = time.perf_counter()
    for i in range(args.steps):
        wait = step(1 + args.warmup + i)
    wait()
    img_s = args.steps * batch / (time.perf_counter() - start)
    return {"img_s": img_s, "step_ms": 1e3 * batch / img_s}


def run_jax(name: str, model: str, batch: int, mode: str, args) -> dict:
    """Compile and time jitted steps of our model in this process."""
    kind, remat = name.split(":")
    device, train, size = jax.devices()[0], mode == "train", args.image_size
    net = create(
        model,
        args.dtype,
        image_size=size,
        remat=remat,
        scan_layers=kind == "jax-scan",
        drop_path_rate=DROP_PATH_RATE if train else 0.0,
    )
    rng = np.random.default_rng(0)
    shape = (batch, size, size, 3)
    images = [jax.device_put(rng.standard_normal(shape, np.float32)) for _ in range(2)]
    labels = jax.device_put(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
    params = init_variables(net, 0)["params"]
    if train:
        fn, tx = make_adamw_step(net)
        state, rest = [params, tx.init(params)], lambda i: (labels, jax.random.key(i))
    else:
        fn = jax.jit(lambda params, x: net.apply({"params": params}, x, train=False))
        state, rest = [params], lambda i: ()
    start = time.perf_counter()
    compiled = fn.lower(*state, images[0], *rest(0)).compile()
    compile_s = time.perf_counter() - start
    memory, cost = bytes_fields(compiled), costs(compiled)

    def one_step(i):
        out = compiled(*state, images[i % 2], *rest(i))
        if train:
            state[:], out = out[:2], out[2]  # the parameters and optimizer state, the loss
        return lambda: jax.block_until_ready(out)

    timing = timed_steps(one_step, batch, args)
    stats, temp = device.memory_stats() or {}, memory["temp_bytes"]
    return {
        **timing,
        "compile_s": compile_s,
        "memory": memory,
        "temp_mb_per_image": temp / batch / 1e6 if temp is not None else None,
        "xla_gflops_per_image": cost["flops"] / batch / 1e9 if cost["flops"] else None,
        "peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9 or None,
        "device": device.device_kind,
        "platform": device.platform,
    }


def run_torch(name: str, model: str, batch: int, mode: str, args) -> dict:
    """Time PyTorch steps of our twin, eager or compiled, on CUDA where PyTorch sees a GPU."""
    import torch
    import torch.nn.functional as F

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # TF32, like XLA's default on NVIDIA GPUs
    torch.set_num_threads(os.cpu_count() or 1)
    net = benchlib.torch_twin(model, args.image_size, drop_path_rate=DROP_PATH_RATE)
    net = net.train(mode == "train").to(device)
    compiled = name == "torch-compile"
    runner = torch.compile(net) if compiled else net
    hyper = dict(lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True if cuda else None)
    optimizer = torch.optim.AdamW(net.parameters(), **hyper)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    rng = np.random.default_rng(0)
    shape = (batch, 3, args.image_size, args.image_size)
    images = [torch.from_numpy(rng.standard_normal(shape, np.float32)).to(device) for _ in "ab"]
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device)

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
        return torch.cuda.synchronize if cuda else lambda: None

    compile_s = None
    if compiled:  # compiling happens in the first step
        start = time.perf_counter()
        one_step(0)()
        compile_s = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    return {
        **timed_steps(one_step, batch, args),
        "compile_s": compile_s,
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "platform": device.type,
        "torch": torch.__version__,
    }


def run_peak(args) -> dict:
    """Median FLOP/s of 20 size^3 matmuls in the compute dtype on JAX's device (default
    precision), after one untimed call: 8192^3, 2048^3 on a CPU, 256^3 with ``--quick``."""
    device = jax.devices()[0]
    size = 256 if args.quick else 2048 if device.platform == "cpu" else 8192
    key, dtype = jax.random.key(0), jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    matmul, times = jax.jit(jnp.matmul), []
    jax.block_until_ready(matmul(a, b))
    for _ in range(20):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return {
        "flops_per_s": 2 * size**3 / statistics.median(times),
        "matmul_size": size,
        "device": device.device_kind,
        "platform": device.platform,
    }


def run_setting(setting: str, batch: int, mode: str, args) -> dict:
    """Measure one setting once, in this process: what each fresh process runs."""
    name, model = parse_setting(setting, args.model)
    if name == "peak":
        return run_peak(args)
    result = (run_torch if name.startswith("torch") else run_jax)(name, model, batch, mode, args)
    net = create(model, image_size=args.image_size)  # matmul and convolution FLOPs per image
    per_image = flops.training_flops(net) if mode == "train" else flops.forward_flops(net)
    return {**result, "flops_per_image": float(per_image)}


def run_in_fresh_process(setting: str, batch: int, mode: str, args, timeout_s: float) -> dict:
    """``run_setting`` in a fresh interpreter with huge-page malloc (its JSON is its last line),
    killed after ``timeout_s``; a failure is an 'error' entry: its last line on stderr."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import argparse, json, sys; sys.path.insert(0, {here!r}); "
        "from throughput import run_setting; "
        f"args = argparse.Namespace(**{vars(args)!r}); "
        f"print(json.dumps(run_setting({setting!r}, {batch}, {mode!r}, args)))"
    )
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1", DYNAMIXER_NO_REEXEC="1")
    if setting.startswith("torch"):
        env["JAX_PLATFORMS"] = "cpu"  # torch: jax is imported for the FLOP count only
    command, limit = [sys.executable, "-c", code], timeout_s if math.isfinite(timeout_s) else None
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if done.returncode:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        print(f"{setting} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"error": lines[-1][:300] if lines else f"exit code {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def report_rows(batch: int, mode: str, runs: dict[str, list[dict]], args) -> list[dict]:
    """One row per setting: median images/s, its ratio to PyTorch eager of the same model, and
    model FLOP utilisation where a ``peak`` setting ran."""
    peak = median_of(runs.get("peak", []), "flops_per_s")
    named = {setting: parse_setting(setting, args.model) for setting in runs}
    eager = {m: median_of(runs[s], "img_s") for s, (n, m) in named.items() if n == "torch"}
    rows = []
    for setting, results in runs.items():
        name, model = named[setting]
        row = {"batch": batch, "mode": mode, "setting": setting, "model": model, "runs": results}
        rate, per_image = median_of(results, "img_s"), median_of(results, "flops_per_image")
        if name == "peak":
            row["peak_tflops"] = peak / 1e12 if peak else None
        elif rate:
            row.update(img_s=rate, vs_torch=rate / eager[model] if eager.get(model) else None)
            row["mfu"] = rate * per_image / peak if peak and per_image else None
        rows.append(row)
    return rows


HEADER = ["batch", "mode", "setting", "img/s", "/torch", "MFU", "compile s", "MB/img", "peak GB"]
MEDIANS = {"compile_s": ".1f", "temp_mb_per_image": ".0f", "peak_gb": ".1f"}  # of the runs


def fmt(value, spec: str) -> str | None:
    return None if value is None else format(value, spec)


def row_line(row: dict) -> str:
    """One row of the table."""
    cells, runs = [row["batch"], row["mode"], row["setting"]], row["runs"]
    if row["setting"].startswith("peak"):
        cells.append(f"matmul {fmt(row.get('peak_tflops'), '.2f')} TFLOP/s")
    elif "img_s" not in row:
        cells.append("failed: " + "; ".join(r.get("error", "?") for r in runs))
    else:
        rates = [f"{row['img_s']:.1f}", fmt(row.get("vs_torch"), ".2f"), fmt(row.get("mfu"), ".1%")]
        cells += rates + [fmt(median_of(runs, k), f) for k, f in MEDIANS.items()]
    return benchlib.table_row(cells)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--model", default=None, help="S, M, L, tiny or a full name (default S)")
    add("--batches", type=int, nargs="+", default=None, help="default 8 16")
    add("--dtype", choices=sorted(DTYPES), default="fp32")
    add("--modes", nargs="+", choices=["train", "infer"], default=["train"])
    add("--image-size", type=int, default=None, help="default 224")
    add("--settings", nargs="+", help="default: torch jax:minimal (--quick: peak too)")
    add("--steps", type=int, default=4, help="timed steps per round")
    add("--warmup", type=int, default=0, help="untimed steps after the first")
    add("--rounds", type=int, default=2, help="processes per setting")
    add("--setting-timeout-s", type=float, default=None, help="give up on a process after this")
    add("--budget-s", type=float, default=None, help="start no setting after this, kill one then")
    add("--json", help="output file (default $OUT/throughput.json)")
    add("--quick", action="store_true", help="smoke run: tiny model at 56x56, batch 2, 2 steps")
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
        args.steps, args.rounds = 2, 1
    for setting in args.settings:
        parse_setting(setting, args.model)
    if min(args.batches) < 1:
        raise UserError("batch sizes must be positive")
    if args.json is None and os.environ.get("OUT"):
        args.json = os.path.join(os.environ["OUT"], "throughput.json")
    return args


def run(argv=None, measure=run_in_fresh_process) -> dict:
    """The whole benchmark; returns the report as written to ``--json``. ``measure(setting,
    batch, mode, args, timeout_s)`` measures one setting once (tests: in their own process)."""
    args = parse_args(argv)
    report = {"argv": list(argv if argv is not None else sys.argv[1:]), "model": args.model}
    report.update(dtype=args.dtype, image_size=args.image_size, cpu=benchlib.cpu_description())
    report["results"] = []
    print(benchlib.table_header(HEADER), flush=True)
    deadline = time.monotonic() + (args.budget_s or math.inf)
    for batch in args.batches:
        for mode in args.modes:
            runs: dict[str, list[dict]] = {setting: [] for setting in args.settings}
            for _ in range(args.rounds):
                for setting in args.settings:  # given what is left of its timeout and the budget
                    left = min(args.setting_timeout_s or math.inf, deadline - time.monotonic())
                    result = {"error": "time budget"}
                    if left > 0:
                        result = measure(setting, batch, mode, args, left)
                    runs[setting].append(result)
            for row in report_rows(batch, mode, runs, args):
                report["results"].append(row)
                print(row_line(row), flush=True)
            if args.json:  # after every batch and mode, so a later timeout keeps what was measured
                benchlib.write_json(args.json, report)
    on_cpu = any(r.get("platform") == "cpu" for row in report["results"] for r in row["runs"])
    print(benchlib.cpu_line(report["cpu"]) if on_cpu else "", flush=True)  # names a CPU's figures
    return report


def main(argv=None) -> int:
    return benchlib.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
