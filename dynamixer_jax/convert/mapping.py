"""Key names and layouts between the authors' PyTorch state_dict and our Flax parameters.

Pure numpy: nothing here imports torch.

PyTorch                                   Flax (params/...)
patch_embed.proj.weight (O, I, kh, kw)    patch_embed/kernel (kh, kw, I, O)
network.{k}.{j}.<module>.weight (O, I)    stages_{i}/layers_{j}/<module>/kernel (I, O)
network.{k}.{j}.norm1.weight              stages_{i}/layers_{j}/norm1/scale
network.{k}.proj.weight                   downsamples_{i}/kernel   (the entry after stage i)
norm.weight|bias, head.weight|bias        norm/scale|bias, head/kernel|bias

``network`` is one flat list (stage 0, [downsample 0], stage 1, ...), so the
index k of an entry depends on which downsamples exist; the mapping walks the
entries in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

FlaxPath = tuple[str, ...]

# Every parameter of one mixer layer, by its key inside the layer.
LAYER_KEYS = tuple(
    [f"norm1.{p}" for p in ("weight", "bias")]
    + [
        f"attn.{op}.{lin}.{p}"
        for op in ("mix_h", "mix_w")
        for lin in ("compress", "generate", "out")
        for p in ("weight", "bias")
    ]
    + ["attn.mlp_c.weight"]
    + [f"attn.reweight.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")]
    + [f"attn.proj.{p}" for p in ("weight", "bias")]
    + [f"norm2.{p}" for p in ("weight", "bias")]
    + [f"mlp.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")]
)

_LAYER_RE = re.compile(r"^network\.(\d+)\.(\d+)\.(.+)$")
_DOWNSAMPLE_RE = re.compile(r"^network\.(\d+)\.proj\.(weight|bias)$")


def strip_prefix(state_dict: Mapping[str, object], prefix: str = "module.") -> dict[str, object]:
    """Remove the ``module.`` prefix DistributedDataParallel adds, when every key has it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def network_entries(keys) -> dict[int, tuple[str, int, int]]:
    """Each ``network.{k}`` entry of an authors' state_dict: k -> (kind, stage number, number of layers).

    kind is 'stage' or 'downsample'; a downsample gets the number of the stage
    before it (``downsamples_{i}`` follows ``stages_{i}``).
    """
    layer_counts: dict[int, int] = {}
    downsample_ks = set()
    for key in keys:
        if m := _DOWNSAMPLE_RE.match(key):
            downsample_ks.add(int(m.group(1)))
        elif m := _LAYER_RE.match(key):
            k, j = int(m.group(1)), int(m.group(2))
            layer_counts[k] = max(layer_counts.get(k, 0), j + 1)
    entries, stage = {}, -1
    for k in sorted(set(layer_counts) | downsample_ks):
        if k in layer_counts:
            stage += 1
            entries[k] = ("stage", stage, layer_counts[k])
        else:
            entries[k] = ("downsample", stage, 0)
    return entries


def torch_to_flax_layout(value: np.ndarray) -> np.ndarray:
    """Linear (O, I) -> (I, O); Conv (O, I, kh, kw) -> (kh, kw, I, O); vectors unchanged."""
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value


def flax_to_torch_layout(value: np.ndarray) -> np.ndarray:
    """Inverse of torch_to_flax_layout."""
    if value.ndim == 2:
        return value.T
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value


def flax_to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The authors' shape of a Flax parameter of ``shape`` (no array is allocated)."""
    return tuple(flax_to_torch_layout(np.broadcast_to(np.empty((), np.bool_), shape)).shape)


def _flax_leaf_to_torch(path: FlaxPath) -> str:
    """('attn', 'mix_h', 'out', 'kernel') -> 'attn.mix_h.out.weight'."""
    *modules, leaf = path
    return ".".join(modules + ["weight" if leaf in ("kernel", "scale") else leaf])


def flax_paths_to_torch_keys(paths: list[FlaxPath]) -> dict[FlaxPath, str]:
    """Authors' key of every Flax parameter path, numbering network entries as the authors' code does."""
    stages = sorted({int(p[0].split("_")[1]) for p in paths if p[0].startswith("stages_")})
    downsamples = {int(p[0].split("_")[1]) for p in paths if p[0].startswith("downsamples_")}
    index, k = {}, 0
    for i in stages:
        index[("stages", i)] = k
        k += 1
        if i in downsamples:
            index[("downsamples", i)] = k
            k += 1
    out = {}
    for path in paths:
        top = path[0]
        if top.startswith("stages_"):
            k = index[("stages", int(top.split("_")[1]))]
            j = int(path[1].split("_")[1])
            out[path] = f"network.{k}.{j}." + _flax_leaf_to_torch(path[2:])
        elif top.startswith("downsamples_"):
            k = index[("downsamples", int(top.split("_")[1]))]
            out[path] = f"network.{k}.proj." + ("weight" if path[1] == "kernel" else "bias")
        elif top == "patch_embed":
            out[path] = "patch_embed.proj." + ("weight" if path[1] == "kernel" else "bias")
        else:
            out[path] = _flax_leaf_to_torch(path)
    return out


def torch_sort_key(key: str):
    """Order keys as the authors' modules register them: patch_embed, network (by index), norm, head; weight first."""
    top = {"patch_embed": 0, "network": 1, "norm": 2, "head": 3}
    parts = key.split(".")
    numbers = [int(p) for p in parts[1:3] if p.isdigit()]
    suffix = ".".join(parts[1 + len(numbers) :])
    layer_order = LAYER_KEYS.index(suffix) if suffix in LAYER_KEYS else -1
    return (
        top.get(parts[0], len(top)),
        numbers,
        layer_order,
        ".".join(parts[:-1]),
        parts[-1] != "weight",
        key,
    )
