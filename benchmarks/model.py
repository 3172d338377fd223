"""JAX/Flax vs PyTorch (CPU) speed of one DynaMixer variant, same weights, measured in one process.

Measures, for DynaMixer-S at 224x224 by default:
  * init time of ``dynamixer_jax.model.init.init_variables`` and compile time of the jitted
    inference function and of the jitted train step (per batch size);
  * inference images/s (jitted ``apply(train=False)`` vs ``torch.no_grad()`` + ``eval()``);
  * training-step images/s: forward with dropout/stochastic depth (drop_path_rate=0.1),
    integer-label cross-entropy, backward and AdamW(1e-3, weight_decay=0.05) update.
The two frameworks are timed in alternating rounds (K JAX steps, then K torch steps, the
order swapped each round) and the median images/s of each is reported with the ratio.

Run (from the repository root):
    python benchmarks/model.py [--quick] [--json out.json] [--no-hugepages]
(in the environment of ``bash scripts/test.sh``: ``.venv/bin/python benchmarks/model.py``)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchlib.adamw import LEARNING_RATE, WEIGHT_DECAY, make_adamw_step
from benchlib.jax_side import jax_params_for, make_jax_infer
from benchlib.models import NUM_CLASSES, torch_reference
from benchlib.timing import compile_timed
from dynamixer_jax.model.init import init_variables
from dynamixer_jax.model.variants import VARIANTS, create_model
from dynamixer_jax.train.hugepages import ensure_hugepage_malloc, hugepage_malloc_active

NUM_BATCHES = 4


def build_models(name, image_size, drop_path_rate):
    """(flax_model, flax_params, torch_model) sharing the torch model's random weights."""
    torch.manual_seed(0)
    torch_model = torch_reference().TorchDynaMixer(
        **VARIANTS[name],
        num_classes=NUM_CLASSES,
        image_size=image_size,
        drop_path_rate=drop_path_rate,
    )
    model = create_model(
        name, num_classes=NUM_CLASSES, image_size=image_size, drop_path_rate=drop_path_rate
    )
    return model, jax_params_for(model, torch_model), torch_model


def time_init(model):
    """Seconds for a cold ``init_variables`` call, including block_until_ready."""
    start = time.perf_counter()
    jax.block_until_ready(init_variables(model, jax.random.key(0)))
    return time.perf_counter() - start


def make_batches(batch, image_size, seed):
    """NUM_BATCHES (jax_images NHWC, torch_images NCHW, jax_labels, torch_labels, dropout key)
    tuples."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(NUM_BATCHES):
        images = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
        labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
        nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        out.append(
            (
                jax.device_put(images),
                nchw,
                jax.device_put(labels),
                torch.from_numpy(labels.astype(np.int64)),
                jax.random.key(seed * 100 + i),
            )
        )
    return out


def jax_infer_runner(model, params, batches, compile_times, batch):
    """A function running k jitted inference steps (blocking at the end)."""
    compiled, compile_times[f"infer b={batch}"] = compile_timed(
        make_jax_infer(model), params, batches[0][0]
    )

    def run(k, start=0):
        outs = [compiled(params, batches[(start + i) % NUM_BATCHES][0]) for i in range(k)]
        jax.block_until_ready(outs)

    return run


def torch_infer_runner(torch_model, batches):
    """A function running k torch inference steps under no_grad in eval mode."""

    def run(k, start=0):
        torch_model.eval()
        with torch.no_grad():
            for i in range(k):
                torch_model(batches[(start + i) % NUM_BATCHES][1])

    return run


def jax_train_runner(model, params, batches, compile_times, batch):
    """A function running k donated, jitted AdamW train steps on its own copy of the params."""
    step, tx = make_adamw_step(model)
    # The inference params must survive donation.
    own_params = jax.tree_util.tree_map(jnp.copy, params)
    state = {"params": own_params, "opt": tx.init(own_params)}
    images, _, labels, _, key = batches[0]
    compiled, compile_times[f"train b={batch}"] = compile_timed(
        step, state["params"], state["opt"], images, labels, key
    )

    def run(k, start=0):
        for i in range(k):
            images, _, labels, _, key = batches[(start + i) % NUM_BATCHES]
            state["params"], state["opt"], loss = compiled(
                state["params"], state["opt"], images, labels, key
            )
        jax.block_until_ready((state["params"], loss))

    return run


def torch_train_runner(torch_model, batches):
    """A function running k torch train steps (train mode, AdamW)."""
    optimizer = torch.optim.AdamW(
        torch_model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
    )

    def run(k, start=0):
        torch_model.train()
        for i in range(k):
            _, images, _, labels, _ = batches[(start + i) % NUM_BATCHES]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(torch_model(images), labels).backward()
            optimizer.step()

    return run


def busy_cpu_seconds():
    """(CPU-seconds all processes have been busy, CPU-seconds of this process), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def timed(fn, *args):
    """(wall, user CPU, system CPU) seconds of this process while running fn(*args)."""
    wall, cpu = time.perf_counter(), os.times()
    fn(*args)
    end = os.times()
    return time.perf_counter() - wall, end.user - cpu.user, end.system - cpu.system


def measure(jax_run, torch_run, batch, rounds, steps, warmup, round_seconds):
    """Alternating rounds; returns median images/s of each framework, their ratio, raw rounds
    and diagnostics.

    ``*_sys_frac`` is the share of this process's CPU time spent in the kernel (e.g. page faults);
    ``other_load`` the number of cores other processes kept busy meanwhile.
    """
    for _ in range(max(1, warmup)):
        t_jax, t_torch = timed(jax_run, 1)[0], timed(torch_run, 1)[0]
    k = steps or max(1, round(round_seconds / (t_jax + t_torch)))
    rates, cpu = {"jax": [], "torch": []}, {"jax": [0.0, 0.0], "torch": [0.0, 0.0]}
    (busy0, own0), wall0 = busy_cpu_seconds(), time.perf_counter()
    for r in range(rounds):
        order = [("jax", jax_run), ("torch", torch_run)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            wall, user, system = timed(run, k, r * k)
            rates[name].append(k * batch / wall)
            cpu[name][0] += user
            cpu[name][1] += system
    (busy1, own1), wall1 = busy_cpu_seconds(), time.perf_counter()
    jax_ips, torch_ips = statistics.median(rates["jax"]), statistics.median(rates["torch"])
    return {
        "batch": batch,
        "steps_per_round": k,
        "jax_img_s": jax_ips,
        "torch_img_s": torch_ips,
        "ratio": jax_ips / torch_ips,
        "rounds": rates,
        **{
            f"{name}_sys_frac": system / max(user + system, 1e-9)
            for name, (user, system) in cpu.items()
        },
        "other_load": max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0),
    }


def parity(model, params, torch_model, image_size):
    """Max |logit difference| between the two models in inference mode on one random image."""
    images = np.random.default_rng(123).standard_normal(
        (1, image_size, image_size, 3), dtype=np.float32
    )
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    return float(np.abs(np.asarray(model.apply({"params": params}, images)) - expected).max())


def print_report(info, compile_times, results):
    """The init/compile timings and one table row per setting."""
    print(
        f"{info['model']} {info['image_size']}x{info['image_size']}  "
        f"jax {info['jax']} ({info['device']})  "
        f"torch {info['torch']} ({info['torch_threads']} threads)  rounds={info['rounds']}  "
        f"huge-page malloc: {'on' if info['hugepage_malloc'] else 'off'}"
    )
    print(
        f"init_variables (cold): {info['init_s']:.2f} s   "
        f"parity max|dlogit|: {info['parity_max_abs_logit_diff']:.1e}"
    )
    print("compile: " + "  ".join(f"{name} {sec:.1f}s" for name, sec in compile_times.items()))
    print(
        f"{'setting':<13}{'jax img/s':>10}{'torch img/s':>13}{'jax/torch':>11}{'k':>4}"
        f"{'jax sys%':>10}{'torch sys%':>12}{'other load':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<13}{r['jax_img_s']:>10.2f}{r['torch_img_s']:>13.2f}{r['ratio']:>11.2f}{r['steps_per_round']:>4}"
            f"{100 * r['jax_sys_frac']:>10.0f}{100 * r['torch_sys_frac']:>12.0f}"
            f"{r['other_load']:>12.2f}"
        )
    print(
        "k = steps per round; sys% = share of the process's CPU time spent in the kernel; "
        "other load = cores busy with other processes."
    )
    if max(r["other_load"] for r in results.values()) > 0.2:
        print(
            "WARNING: other processes used the CPU while timing; torch's OpenMP threads "
            "suffer far more "
            "from that than XLA's, so the ratios are not trustworthy."
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s", choices=sorted(VARIANTS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--infer-batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--train-batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, default=0, help="steps per round per framework (0: auto, ~1.5 s/round)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps per framework before timing"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds of 1 step, 1 warm-up step"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    parser.add_argument(
        "--no-hugepages",
        action="store_true",
        help="keep glibc's default malloc (see dynamixer_jax/train/hugepages.py)",
    )
    args = parser.parse_args()
    if not args.no_hugepages:
        ensure_hugepage_malloc()  # re-executes this command once, before any timing
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
    torch.set_num_threads(2)

    model, params, torch_model = build_models(args.model, args.image_size, drop_path_rate=0.1)
    info = {
        "model": args.model,
        "image_size": args.image_size,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "device": str(jax.devices()[0]),
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "hugepage_malloc": hugepage_malloc_active(),
    }
    info["init_s"] = time_init(model)
    info["parity_max_abs_logit_diff"] = parity(model, params, torch_model, args.image_size)
    compile_times, results = {}, {}
    settings = [("infer", b) for b in args.infer_batches] + [
        ("train", b) for b in args.train_batches
    ]
    for seed, (kind, batch) in enumerate(settings):
        batches = make_batches(batch, args.image_size, seed)
        if kind == "infer":
            runners = (
                jax_infer_runner(model, params, batches, compile_times, batch),
                torch_infer_runner(torch_model, batches),
            )
        else:
            runners = (
                jax_train_runner(model, params, batches, compile_times, batch),
                torch_train_runner(torch_model, batches),
            )
        results[f"{kind} b={batch}"] = measure(
            *runners, batch, args.rounds, args.steps, args.warmup, 1.5
        )
        print(f"  done {kind} b={batch}", file=sys.stderr, flush=True)

    print_report(info, compile_times, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "compile_s": compile_times, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
