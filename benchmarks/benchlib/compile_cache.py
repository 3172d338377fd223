"""One JSON file per compile of the TPU lab, named by everything that changes the answer.

A compile for a TPU takes minutes on a CPU, so each result is kept in
``benchmarks/results/tpu-compile/`` and a rerun compiles only what is missing. The key holds the
jax and libtpu versions, the generation, the variant, the per-device batch, ``remat``, the compute
dtype, ``grad_accum_steps`` and the model's ``mixing`` layout (no suffix: ``"dot"``, the layout
every model had before ``"vector"`` existed).
"""

from __future__ import annotations

import json
import os
from typing import Any

RESULTS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "tpu-compile"
)


def key(
    versions: dict[str, str],
    generation: str,
    variant: str,
    batch: int,
    remat: str,
    dtype: str = "bf16",
    grad_accum_steps: int = 1,
    mixing: str = "dot",
) -> str:
    """The file name (without directory) of one compile's record."""
    accum = f"_accum{grad_accum_steps}" if grad_accum_steps != 1 else ""
    layout = f"_{mixing}" if mixing != "dot" else ""
    return (
        f"jax{versions['jax']}_libtpu{versions['libtpu']}_{generation}_{variant}"
        f"_b{batch}_{remat}_{dtype}{accum}{layout}.json"
    )


def load(name: str, directory: str = RESULTS) -> dict[str, Any] | None:
    """The cached record ``name``, or None."""
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def save(name: str, record: dict[str, Any], directory: str = RESULTS) -> str:
    """Write ``record`` as ``name`` (atomically: a killed compile leaves no half file)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path
