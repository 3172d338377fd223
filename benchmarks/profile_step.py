"""Where a training step's time goes: a ``jax.profiler`` trace of a few steps, summed per operation.

    python benchmarks/profile_step.py --model dynamixer_s --batch 256 --dtype bf16 --out DIR
    python benchmarks/profile_step.py --summarize DIR/step.xplane.pb    # where TensorFlow is

The first form (any backend; imports only jax, flax, optax, numpy and this package) compiles
the AdamW training step, runs two warm-up steps, traces ``--steps`` steps and copies the trace
to ``DIR/step.xplane.pb`` (open the whole trace directory in TensorBoard's profile plugin, or
summarise it). The second form reads an XSpace file with TensorFlow's protobuf classes and
prints the device time of each operation (XLA fusion or kernel) and of each kind of operation,
largest first: the profile that decides what to optimise next.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import tempfile
import time


def trace_steps(
    model_name: str, batch: int, dtype: str, remat: str, steps: int, out: str, image_size: int = 224
) -> str:
    """Trace ``steps`` training steps of a variant or 'tiny'; returns the path of the copied
    ``.xplane.pb`` file."""
    # jax and this package only here: --summarize runs where TensorFlow is, maybe without jax.
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchlib.adamw import make_adamw_step
    from benchlib.models import create
    from dynamixer_jax import init_variables

    model = create(
        model_name,
        image_size=image_size,
        drop_path_rate=0.1,
        remat=remat,
        dtype=jnp.bfloat16 if dtype == "bf16" else None,
    )
    params = init_variables(model, 0)["params"]
    step, tx = make_adamw_step(model)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, image_size, image_size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, model.num_classes, batch).astype(np.int32))
    opt_state = tx.init(params)
    for i in range(2):
        params, opt_state, loss = step(params, opt_state, images, labels, jax.random.key(i))
    jax.block_until_ready(loss)
    trace_dir = tempfile.mkdtemp(prefix="dynamixer_trace_")
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for i in range(steps):
            with jax.profiler.StepTraceAnnotation("train", step_num=i):
                params, opt_state, loss = step(
                    params, opt_state, images, labels, jax.random.key(10 + i)
                )
        jax.block_until_ready(loss)
    seconds = (time.perf_counter() - start) / steps
    print(
        f"[profile] {model_name} {dtype} remat={remat} batch {batch}: {1e3 * seconds:.1f} ms "
        f"per traced step, {batch / seconds:.1f} img/s (tracing on)",
        flush=True,
    )
    found = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, "step.xplane.pb")
    shutil.copy(found[0], target)
    shutil.rmtree(trace_dir, ignore_errors=True)
    return target


def kind_of(name: str) -> str:
    """A coarse kind for an XLA operation or kernel name (``fusion.12`` -> ``fusion``)."""
    return re.sub(r"[._]\d+$", "", re.sub(r"\.\d+", "", name)) or name


def summarize(path: str, top: int = 40) -> None:
    """Print device time per operation and per kind from an XSpace file (needs TensorFlow)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    per_op, per_kind, lines = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/device:"):
            continue
        names = plane.event_metadata
        for line in plane.lines:
            # Streams are numbered ("Stream #13(Compute)"); derived lines ("XLA Ops") are not.
            kind = re.sub(r"#\d+", "#", line.name)
            lines[kind] += sum(e.duration_ps for e in line.events) / 1e9
            if kind in ("XLA Modules", "Steps", "Launch Stats", "Source", "TensorFlow Ops"):
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                per_op[(kind, name)] += event.duration_ps / 1e9
                per_kind[(kind, kind_of(name))] += event.duration_ps / 1e9
    for kind, ms in lines.most_common(12):
        print(f"line {kind}: {ms:.1f} ms")
    for title, counter in (("per kind", per_kind), ("per operation", per_op)):
        total = collections.Counter()
        for (kind, _), ms in counter.items():
            total[kind] += ms
        print(f"\n{title} (ms over the traced steps; share of its line)")
        for (kind, name), ms in counter.most_common(top):
            print(
                f"{ms:10.2f} {100 * ms / max(total[kind], 1e-9):5.1f}%  {kind[:20]:<20} "
                f"{name[:100]}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dynamixer_s", help="a variant's name, or tiny")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--remat", default="minimal")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="a tiny model at 56x56 (smoke run)")
    parser.add_argument("--out", default=os.environ.get("OUT", "profile_out"))
    parser.add_argument("--summarize", metavar="XPLANE_PB", help="summarise a trace instead")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if args.quick:
        args.model, args.image_size, args.batch = "tiny", 56, 2
    print(
        trace_steps(
            args.model, args.batch, args.dtype, args.remat, args.steps, args.out, args.image_size
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
