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

This file is the command line; the measurements live in ``benchmarks/benchlib/`` (``sweep``:
the order of the run; ``jax_side`` and ``torch_side``: one measurement each; ``max_batch``;
``records``: the JSON file and the table; ``timing``, ``xla_stats``, ``models``, ``adamw``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax

from benchlib import UserError
from benchlib.max_batch import run_max_batch
from benchlib.models import DTYPES, build_model, model_name
from benchlib.records import Recorder, summary_lines
from benchlib.sweep import environment, measure_peaks, run_plan
from benchlib.torch_side import import_torch, torch_device
from dynamixer_jax.model import flops as flop_count


def parse_batches(items: Sequence[str], models: Sequence[str]) -> dict[str, list[int]]:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with --quick's and the defaults' values filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="S, M, L, tiny or full names (default: S M L; --quick: tiny)",
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument(
        "--batches",
        nargs="+",
        default=None,
        help="batch sizes for all models, or per model as S:64,128,256 "
        "(default: 32 64 128; --quick: 2)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="default 224; --quick: 56")
    parser.add_argument(
        "--frameworks", nargs="+", default=["jax", "torch"], choices=["jax", "torch"]
    )
    parser.add_argument(
        "--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"]
    )
    parser.add_argument(
        "--no-twin-weights",
        action="store_true",
        help="JAX weights from init_variables instead of the torch twin's",
    )
    parser.add_argument(
        "--max-batch-dtypes",
        nargs="+",
        default=None,
        choices=sorted(DTYPES),
        help="dtypes of the max-batch search (default: --dtypes)",
    )
    parser.add_argument(
        "--remat",
        nargs="+",
        default=["minimal"],
        help="remat values for create_model (none, minimal, full); the first is "
        "used everywhere, the others for training, first dtype, first batch",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument(
        "--round-seconds", type=float, default=0.5, help="target length of one timed round"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=float("inf"),
        help="start no new measurement after this many seconds",
    )
    parser.add_argument(
        "--max-batch",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="search the largest training batch for these models (GPU/TPU; on "
        "CPU with --memory-limit-gb); no value: the first model",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="memory limit for --max-batch (default: the device's bytes_limit)",
    )
    parser.add_argument(
        "--no-torch-compile",
        dest="torch_compile",
        action="store_false",
        help="skip torch.compile on CUDA",
    )
    parser.add_argument(
        "--torch-compile-for",
        nargs="*",
        default=None,
        metavar="MODEL:DTYPE:BATCH",
        help="configurations that also run torch.compile (default: the first "
        "model, dtype and batch)",
    )
    parser.add_argument(
        "--compile-reserve-s",
        type=float,
        default=60.0,
        help="start torch.compile only with this much budget left",
    )
    parser.add_argument(
        "--torch-fp32-precision",
        default="high",
        choices=["high", "highest"],
        help="torch.set_float32_matmul_precision on CUDA: high = TF32 (like "
        "XLA's default on recent NVIDIA GPUs), highest = full float32",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=0,
        help="matmul size for the peak FLOP/s (default 8192; 2048 on CPU)",
    )
    parser.add_argument("--peak-repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="output file (default $OUT/throughput.json)")
    parser.add_argument("--append", action="store_true", help="add to the records of --json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny model at 56x56, batch 2, 2 short rounds",
    )
    parser.add_argument(
        "--summarize", nargs="+", metavar="JSON", help="only print the table of these result files"
    )
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
            raise UserError(
                f"bad --torch-compile-for entry {item!r}; use e.g. S:bf16:128"
            ) from None
    return out


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole benchmark; returns {'runs': [...], 'records': [...]} as written to --json."""
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
    print(
        f"[throughput] jax {jax.__version__} on {device.platform} ({device.device_kind}); "
        f"models {args.models}, dtypes {args.dtypes}, batches {batches}",
        flush=True,
    )
    peaks = measure_peaks(args, torch_mod)
    flops_per_image = {
        m: flop_count.summary(build_model(m, args.image_size, "fp32", args.remat[0], False))
        for m in args.models
    }
    meta = dict(
        environment(args, torch_mod),
        peak_flops=peaks,
        flops_per_image=flops_per_image,
        training_flops_convention="3 x forward matmul/conv FLOPs (dynamixer_jax.model.flops)",
    )
    recorder = Recorder(args.json, meta, args.append)
    recorder.write()
    run_plan(recorder, args, batches, peaks, torch_mod, deadline)
    if args.max_batch and "jax" in args.frameworks:
        run_max_batch(recorder, args, batches, peaks, deadline)
    recorder.meta["elapsed_s"] = time.monotonic() - started
    recorder.write()
    print("\n".join(summary_lines(recorder.records)), flush=True)
    if args.json:
        print(f"[throughput] wrote {args.json}", flush=True)
    return {"runs": recorder.runs, "records": recorder.records}


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
