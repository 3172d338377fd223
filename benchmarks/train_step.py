"""Training-step throughput of DynaMixer on the CPU, glibc's default malloc vs huge-page malloc.

Each configuration runs in its own fresh process (glibc reads its tunables at
start-up), alternating, and the ratio to the default-malloc baseline of the
same run is printed. Also reports the kernel (system) CPU share and the page
faults per step, which is what huge pages change (see dynamixer_jax/hugepages.py).

    python benchmarks/train_step.py [--batches 8 16] [--rounds 2] [--model dynamixer_s]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def run_steps(model_name: str, batch: int, steps: int) -> dict:
    """Time ``steps`` jitted AdamW steps in this process (after one compiling step)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from dynamixer_jax import create_model, init_variables

    model = create_model(model_name, drop_path_rate=0.1)
    params = init_variables(model, 0)["params"]
    tx = optax.adamw(1e-3, weight_decay=0.05)

    def step(params, opt_state, images, labels, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32)) for _ in range(3)]
    labels = jnp.zeros((batch,), jnp.int32)
    opt_state = tx.init(params)
    params, opt_state, loss = step(params, opt_state, batches[0], labels, jax.random.key(0))
    jax.block_until_ready(loss)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, batches[i % 3], labels, jax.random.key(i))
    jax.block_until_ready(loss)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"img_s": steps * batch / wall, "sys_share": system / max(user + system, 1e-9),
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps}


def measure_in_subprocess(model_name: str, batch: int, steps: int, hugepages: bool) -> dict:
    """run_steps in a fresh interpreter, with or without glibc's huge-page malloc tunable."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if hugepages:
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"from train_step import run_steps; print(json.dumps(run_steps({model_name!r}, {batch}, {steps})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating processes per configuration")
    args = parser.parse_args()
    print(f"{'batch':>5} {'malloc':>10} {'img/s':>7} {'ratio':>6} {'sys%':>5} {'faults/step':>12}")
    for batch in args.batches:
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for hugepages in (False, True):
                results[hugepages].append(measure_in_subprocess(args.model, batch, args.steps, hugepages))
        baseline = statistics.median(r["img_s"] for r in results[False])
        for hugepages, runs in results.items():
            rate = statistics.median(r["img_s"] for r in runs)
            print(f"{batch:>5} {'huge-page' if hugepages else 'default':>10} {rate:>7.2f} {rate / baseline:>6.2f} "
                  f"{100 * statistics.median(r['sys_share'] for r in runs):>5.0f} "
                  f"{statistics.median(r['faults_per_step'] for r in runs):>12.0f}", flush=True)


if __name__ == "__main__":
    main()
