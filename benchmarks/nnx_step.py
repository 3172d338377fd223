"""The NNX training step (``nnx_bridge.make_nnx_train_step``) against the same step in Linen.

Both do the same thing to the same model and batch: forward with stochastic depth, softmax
cross-entropy, AdamW. The Linen step is ``jax.jit`` over ``(params, opt_state)``; the NNX step is
``nnx.jit`` over the module and an ``nnx.Optimizer``, called plainly and through
``nnx.cached_partial`` (which skips re-walking the module graph on every call). Steps are timed
in alternating rounds, each ending when its last step has finished on the device.

    python benchmarks/nnx_step.py [--model dynamixer_s] [--image-size 224] [--batch 8]
        [--steps 5] [--rounds 3]

Imports only jax, flax, optax, numpy and this package.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dynamixer_jax import create_model, init_variables
from dynamixer_jax.model.nnx_bridge import make_nnx_train_step, to_nnx


def linen_runner(model, variables, tx, images, labels):
    """``run(n)``: n Linen steps; the state lives in the closure."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, key):
        def loss_fn(params):
            logits = model.apply(
                {"params": params}, images, train=True, rngs={"dropout": key}
            ).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree_util.tree_map(jnp.array, variables["params"])
    state = {"params": params, "opt_state": tx.init(params), "key": jax.random.key(1)}

    def run(steps: int) -> None:
        loss = None
        for _ in range(steps):
            state["key"], key = jax.random.split(state["key"])
            state["params"], state["opt_state"], loss = step(
                state["params"], state["opt_state"], key
            )
        jax.block_until_ready(loss)

    return run


def nnx_runner(model, variables, tx, images, labels, *, cached: bool):
    """``run(n)``: n NNX steps on an ``nnx.Module`` and ``nnx.Optimizer``."""
    module = to_nnx(model, variables, rngs=nnx.Rngs(0, dropout=1))
    optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)
    step = make_nnx_train_step()
    if cached:
        step = nnx.cached_partial(step, module, optimizer)

    def run(steps: int) -> None:
        loss = None
        for _ in range(steps):
            loss = step(images, labels) if cached else step(module, optimizer, images, labels)
        jax.block_until_ready(loss)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dynamixer_s")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model = create_model(args.model, image_size=args.image_size, drop_path_rate=0.1)
    variables = init_variables(model, 0)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=model.input_shape(args.batch)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, model.num_classes, args.batch))
    tx = optax.adamw(1e-3, weight_decay=0.05)
    runners = {
        "linen jax.jit": linen_runner(model, variables, tx, images, labels),
        "nnx.jit": nnx_runner(model, variables, tx, images, labels, cached=False),
        "nnx.jit + cached_partial": nnx_runner(model, variables, tx, images, labels, cached=True),
    }
    for name, run in runners.items():  # compile and warm up
        started = time.perf_counter()
        run(1)
        print(f"{name}: first step (compile) {time.perf_counter() - started:.1f} s")
    times = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            run(args.steps)
            times[name].append((time.perf_counter() - started) / args.steps)
    baseline = statistics.median(times["linen jax.jit"])
    print(
        f"\n{args.model} at {args.image_size}, batch {args.batch}, {jax.devices()[0].platform}: "
        f"median of {args.rounds} rounds of {args.steps} steps"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:26s} {1e3 * median:9.1f} ms/step  {median / baseline:5.2f}x Linen")


if __name__ == "__main__":
    main()
