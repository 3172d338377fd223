"""The JAX side of ``throughput.py``: parameters, input batches, and one compiled and timed
training or inference step with XLA's memory and FLOP figures."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchlib.adamw import make_adamw_step, make_optimizer
from benchlib.models import NUM_CLASSES, NUM_INPUT_BATCHES
from benchlib.timing import compile_timed, time_rounds
from benchlib.xla_stats import bytes_fields, required_bytes, xla_flops
from dynamixer_jax.convert import torch_to_flax
from dynamixer_jax.model.init import init_variables
from dynamixer_jax.model.network import as_hw


def make_jax_infer(model):
    """(params, images) -> logits, jit, train=False."""
    return jax.jit(lambda params, images: model.apply({"params": params}, images, train=False))


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
        out.append(
            (
                jnp.asarray(images, model.dtype or jnp.float32),
                jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32),
                jax.random.key(seed * 1000 + i),
            )
        )
    return out


def jax_measure(
    model,
    params,
    batch: int,
    mode: str,
    args,
    deadline: float,
    precompiled: tuple[Any, float] | None = None,
    free_bytes: int | None = None,
) -> dict[str, Any]:
    """Compile and time one JAX step; returns the measured fields of a record.

    ``precompiled``: (executable, compile seconds) of this very step, to skip compiling.
    ``free_bytes``: device memory available; a step whose compile-only memory analysis needs
    more is not run (an 'error' record with the figures) rather than failing out of memory."""
    batches = input_batches(model, batch, seed=batch)
    if mode == "train":
        fn, tx = make_adamw_step(model, make_optimizer(mask_decay=True))
        own = jax.tree_util.tree_map(jnp.copy, params)  # the caller's params survive donation
        state = {"params": own, "opt": tx.init(own)}
        images, labels, key = batches[0]
        example = (state["params"], state["opt"], images, labels, key)
    else:
        fn, example = make_jax_infer(model), (params, batches[0][0])
    compiled, compile_s = precompiled or compile_timed(fn, *example)
    need = required_bytes(bytes_fields(compiled))
    if free_bytes and need and need > free_bytes:
        return {
            "status": "error",
            "compile_s": compile_s,
            "memory": bytes_fields(compiled),
            "error": f"does not fit: needs {need / 2**30:.1f} GiB, "
            f"{free_bytes / 2**30:.1f} GiB free (compile-only memory analysis)",
        }

    def run(steps: int):
        out = None
        for i in range(steps):
            images, labels, key = batches[i % NUM_INPUT_BATCHES]
            if mode == "train":
                state["params"], state["opt"], out = compiled(
                    state["params"], state["opt"], images, labels, key
                )
            else:
                out = compiled(params, images)
        jax.block_until_ready(out)

    timing = time_rounds(run, batch, args.rounds, args.warmup, args.round_seconds, deadline)
    memory = bytes_fields(compiled)
    flops_xla = xla_flops(compiled)
    if mode == "train":
        del state
    return {
        **timing,
        "compile_s": compile_s,
        "memory": memory,
        "activation_bytes_per_image": (
            memory["temp_bytes"] / batch if memory["temp_bytes"] is not None else None
        ),
        "xla_flops_per_image": flops_xla / batch if flops_xla else None,
    }


def jax_params_for(model, torch_model) -> Any:
    """JAX parameters: converted from the torch twin when there is one, else our own init."""
    if torch_model is not None:
        return jax.device_put(torch_to_flax(torch_model.state_dict(), model)["params"])
    return init_variables(model, jax.random.key(0))["params"]
