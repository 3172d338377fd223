"""What DynaMixer's dynamic mixing did on an image: its mixing matrices and branch weights.

Every layer's token mixer generates, from the image itself, one mixing matrix per channel
segment for every column (mixing the column's tokens top to bottom) and every row (left to
right), and per-channel weights that blend the column, row and channel branches. The model sows
them into the ``intermediates`` collection; :func:`collect_mixing` reads them back per layer in
the orientation of ``y = M @ x`` (each matrix row is an output token; rows sum to 1).
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

BRANCHES = ("column", "row", "channel")


@dataclasses.dataclass(frozen=True)
class LayerMixing:
    """One layer's dynamic mixing for one image.

    ``columns``: (W, S, H, H), for column ``w`` and segment ``s`` the matrix that mixes the H
    tokens of that column (``[out, in]``, rows sum to 1). ``rows``: (H, S, W, W), the same for
    rows. ``branch_weights``: (C, 3), per channel the weights of the column, row and channel
    branches (sum to 1).
    """

    name: str
    columns: np.ndarray
    rows: np.ndarray
    branch_weights: np.ndarray

    @property
    def num_segments(self) -> int:
        return self.columns.shape[1]


def collect_mixing(model, variables, image) -> list[LayerMixing]:
    """The mixing matrices and branch weights of every layer for one image (H, W, 3), in
    network order; ``model`` is a DynaMixer and ``variables`` its ``{"params": ...}``."""
    image = jnp.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"collect_mixing takes one image (H, W, 3), not shape {image.shape}")
    _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
        {"params": variables["params"]}, image[None].astype(jnp.float32)
    )
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(state["intermediates"]))
    layers: dict[tuple, dict] = {}
    for path, (value,) in flat.items():
        # ('stages_0', 'layers_1', 'attn', 'mix_h', 'mixing') or (..., 'attn', 'branch_weights')
        attn = path.index("attn")
        entry = layers.setdefault(path[:attn], {})
        key = path[attn + 1] if path[-1] == "mixing" else "branch_weights"
        entry[key] = np.asarray(jax.device_get(value[0]), np.float32)

    def order(prefix):
        return tuple(int(part.rsplit("_", 1)[1]) for part in prefix)

    return [
        LayerMixing(
            name="/".join(prefix),
            columns=np.swapaxes(entry["mix_h"], -1, -2),  # sown as [in, out]
            rows=np.swapaxes(entry["mix_w"], -1, -2),
            branch_weights=entry["branch_weights"],
        )
        for prefix, entry in sorted(layers.items(), key=lambda item: order(item[0]))
    ]
