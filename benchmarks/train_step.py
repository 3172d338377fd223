"""Training-step throughput on the CPU, each setting in its own fresh process: ours against PyTorch.

Every setting (our step with each ``remat`` choice, our step on XLA's default CPU scheduler, and
our PyTorch twin of the authors' model with ``torch.optim.AdamW``) runs in a fresh interpreter
started with glibc's huge-page malloc, one after the other, for ``--rounds`` rounds, so that no
framework warms the allocator or the caches for the other. The median images/s of each setting
and its ratio to PyTorch in the same run are printed, with the kernel share of CPU time and the
page faults per step (see ``dynamixer_jax/train/hugepages.py``).

    python benchmarks/train_step.py [--batches 8 16] [--rounds 2] [--model dynamixer_s]
        [--settings jax:minimal jax:none torch] [--json out.json]

Settings: ``jax:<remat>`` (``none``, ``minimal``, ``full``), ``jax-scan:<remat>`` (the same with
``scan_layers=True``), ``jax-default-scheduler:<remat>``
(XLA:CPU's own concurrency-optimised scheduler, which defeats rematerialisation; see
``dynamixer_jax/xla_cpu.py``), ``torch``. Read the figures
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

NUM_CLASSES, DROP_PATH = 1000, 0.1


def _rusage_delta(before, after, steps):
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "sys_share": system / max(user + system, 1e-9),
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
    }


def run_jax(model_name: str, batch: int, steps: int, remat: str, scan_layers: bool = False) -> dict:
    """Time ``steps`` jitted AdamW steps of our model in this process (after one compiling step)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchlib.adamw import make_adamw_step
    from benchlib.timing import compile_timed
    from dynamixer_jax import create_model, init_variables

    model = create_model(model_name, drop_path_rate=DROP_PATH, remat=remat, scan_layers=scan_layers)
    params = init_variables(model, 0)["params"]
    step, tx = make_adamw_step(model)
    rng = np.random.default_rng(0)
    batches = [
        jnp.asarray(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32)) for _ in range(3)
    ]
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
    opt_state = tx.init(params)
    compiled, compile_s = compile_timed(
        step, params, opt_state, batches[0], labels, jax.random.key(0)
    )
    temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", 0)
    params, opt_state, loss = compiled(params, opt_state, batches[0], labels, jax.random.key(0))
    jax.block_until_ready(loss)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = compiled(
            params, opt_state, batches[i % 3], labels, jax.random.key(i)
        )
    jax.block_until_ready(loss)
    wall = time.perf_counter() - start
    return {
        "img_s": steps * batch / wall,
        "compile_s": compile_s,
        "temp_mb_per_image": temp / batch / 1e6,
        **_rusage_delta(before, resource.getrusage(resource.RUSAGE_SELF), steps),
    }


def run_torch(model_name: str, batch: int, steps: int) -> dict:
    """Time ``steps`` PyTorch train steps (train mode, AdamW) of our twin of the authors' model."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from benchlib.adamw import LEARNING_RATE, WEIGHT_DECAY
    from benchlib.models import architecture, torch_reference

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = (
        torch_reference()
        .TorchDynaMixer(
            **architecture(model_name),
            num_classes=NUM_CLASSES,
            image_size=224,
            drop_path_rate=DROP_PATH,
        )
        .train()
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)
    batches = [
        torch.from_numpy(rng.standard_normal((batch, 3, 224, 224), dtype=np.float32))
        for _ in range(3)
    ]
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))

    def step(images):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step(batches[0])
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(steps):
        step(batches[i % 3])
    wall = time.perf_counter() - start
    return {
        "img_s": steps * batch / wall,
        **_rusage_delta(before, resource.getrusage(resource.RUSAGE_SELF), steps),
    }


def run_setting(setting: str, model_name: str, batch: int, steps: int) -> dict:
    """Run one setting (``jax:<remat>``, ``jax-scan:<remat>``, ``jax-default-scheduler:<remat>``,
    ``torch``) here."""
    if setting == "torch":
        return run_torch(model_name, batch, steps)
    kind, remat = setting.split(":")
    return run_jax(model_name, batch, steps, remat, scan_layers=kind == "jax-scan")


def measure_in_subprocess(setting: str, model_name: str, batch: int, steps: int) -> dict:
    """run_setting in a fresh interpreter with glibc's huge-page malloc."""
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1", DYNAMIXER_NO_REEXEC="1")
    if setting.startswith("jax-default-scheduler:"):
        env["DYNAMIXER_KEEP_XLA_FLAGS"] = "1"
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); "
        f"from train_step import run_setting; "
        f"print(json.dumps(run_setting({setting!r}, {model_name!r}, {batch}, {steps})))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["torch", "jax:minimal", "jax:none", "jax-default-scheduler:none"],
    )
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    print(
        f"{'batch':>5} {'setting':>28} {'img/s':>7} {'/torch':>7} {'compile s':>9} "
        f"{'MB/img':>7} {'sys%':>5} {'faults/step':>12}",
        flush=True,
    )
    report = []
    for batch in args.batches:
        runs = {setting: [] for setting in args.settings}
        for _ in range(args.rounds):
            for setting in args.settings:
                runs[setting].append(measure_in_subprocess(setting, args.model, batch, args.steps))
        baseline = statistics.median(r["img_s"] for r in runs["torch"]) if "torch" in runs else None
        for setting, results in runs.items():
            rate = statistics.median(r["img_s"] for r in results)
            row = {
                "batch": batch,
                "setting": setting,
                "img_s": rate,
                "vs_torch": rate / baseline if baseline else None,
                "runs": results,
            }
            report.append(row)

            def median(key, results=results):
                return statistics.median(r.get(key, float("nan")) for r in results)

            ratio = f"{rate / baseline:7.2f}" if baseline else f"{'':>7}"
            print(
                f"{batch:>5} {setting:>28} {rate:>7.2f} {ratio} {median('compile_s'):>9.1f} "
                f"{median('temp_mb_per_image'):>7.0f} {100 * median('sys_share'):>5.0f} "
                f"{median('faults_per_step'):>12.0f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "model": args.model,
                    "rounds": args.rounds,
                    "steps": args.steps,
                    "results": report,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
