"""What the benchmark scripts share: one-line command-line errors, JSON records, Markdown tables,
the CPU's description and the models they build. Importing it puts the repository root on
``sys.path``, so that ``python benchmarks/NAME.py`` uses this checkout's packages."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

prefer_memory_saving_scheduler()  # as main.py: before any JAX computation of a benchmark

import jax.numpy as jnp

from dynamixer_jax.model.variants import VARIANTS, create_model

ALIASES = {"S": "dynamixer_s", "M": "dynamixer_m", "L": "dynamixer_l", "tiny": "tiny"}
# A small custom architecture with every kind of part, for smoke runs and tests.
TINY = dict(
    VARIANTS["dynamixer_s"],
    layers=(1, 1, 1, 1),
    embed_dims=(32, 64, 64, 64),
    num_segments=(4, 8, 8, 8),
)
DTYPES = {"fp32": None, "bf16": jnp.bfloat16}  # compute dtypes; parameters stay float32
NUM_CLASSES, DROP_PATH_RATE = 1000, 0.1  # NUM_CLASSES is the models' default too
# The vector extensions worth naming beside a CPU figure (x86 flags, Arm features); the names
# only whole ("smep" is an x86 security flag).
VECTOR_PREFIXES = ("sse4", "avx", "fma", "amx", "asimd", "sve", "sme2")
VECTOR_NAMES = ("sme", "i8mm", "bf16")


class UserError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


def run_cli(run: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None) -> int:
    """``run(argv)`` as a script's ``main``: a :class:`UserError` is one line on stderr, exit 2."""
    try:
        run(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def write_json(path: str, content: Any, sort_keys: bool = False) -> None:
    """Write ``content`` to ``path`` atomically (a killed run leaves the previous file whole)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(content, f, indent=1, default=str, sort_keys=sort_keys)
        f.write("\n")
    os.replace(path + ".tmp", path)


def table_row(cells: Sequence[Any]) -> str:
    """One row of a Markdown table, as the README quotes them; a ``None`` cell is ``-``."""
    return "| " + " | ".join("-" if cell is None else str(cell) for cell in cells) + " |"


def table_header(names: Sequence[str]) -> str:
    """A Markdown table's header row and the rule under it."""
    return f"{table_row(names)}\n{table_row(['---'] * len(names))}"


def cpu_description() -> dict:
    """The CPU's model name, core count and vector extensions (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and value.strip():
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(VECTOR_PREFIXES) or f in VECTOR_NAMES)
    return {"name": name, "cores": os.cpu_count(), "vector_extensions": vector}


def cpu_line(cpu: dict) -> str:
    """``CPU: NAME, N cores; vector extensions: ...``, to print under a CPU's figures."""
    extensions = " ".join(cpu["vector_extensions"]) or "none found"
    return f"CPU: {cpu['name']}, {cpu['cores']} cores; vector extensions: {extensions}"


def model_name(alias: str) -> str:
    """Full variant name for an alias (S, M, L, tiny) or a full name."""
    name = ALIASES.get(alias, alias)
    if name != "tiny" and name not in VARIANTS:
        raise UserError(f"unknown model {alias!r}; use S, M, L, tiny or one of {sorted(VARIANTS)}")
    return name


def create(name: str, dtype: str = "fp32", **kwargs):
    """``create_model`` for a variant or 'tiny' (S's settings, TINY's shape), ``dtype`` by name."""
    if name == "tiny":
        name, kwargs = "dynamixer_s", {**TINY, **kwargs}
    return create_model(name, dtype=DTYPES[dtype], **kwargs)


def torch_twin(name: str, image_size: int, **kwargs):
    """Our PyTorch twin of a variant or 'tiny', its weights drawn after ``torch.manual_seed(0)``."""
    import torch

    import dynamixer_torch

    torch.manual_seed(0)
    arch = TINY if name == "tiny" else VARIANTS[name]
    return dynamixer_torch.TorchDynaMixer(**arch, image_size=image_size, **kwargs)
