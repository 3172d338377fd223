"""One stage of DynaMixer: a run of mixer layers on one token grid, and its stochastic depth.

The layers run unrolled (each wrapped to keep what ``remat`` says) or, with ``scan_layers``, as
one ``lax.scan`` over their stacked parameters; both give the same parameter tree and values.
``every_layer=True`` also returns the token grid after each layer (``forward_intermediates``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynamixer_jax.model.layers import Dtype, MixerLayer
from dynamixer_jax.model.remat import call_layer, remat_layer, remat_policy


def drop_path_rates(layers: Sequence[int], drop_path_rate: float) -> tuple[tuple[float, ...], ...]:
    """Per-stage, per-layer stochastic depth rates: drop_path_rate * i / (total - 1), i over all layers."""
    total = sum(layers)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for count in layers:
        out.append(tuple(rates[start : start + count]))
        start += count
    return tuple(out)


class Stage(nn.Module):
    """A run of mixer layers on one token grid.

    With ``scan_layers`` the layers run as one ``lax.scan`` over their stacked parameters (XLA
    compiles the layer once instead of once per layer); the parameters stay one subtree per
    layer (``layers_{j}``). Initialisation and runs that collect ``intermediates`` (the mixing
    matrices) unroll the layers.
    """

    height: int
    width: int
    num_segments: int
    reduced_dim: int
    mlp_ratio: float
    drop_path_rates: tuple[float, ...]
    drop_rate: float = 0.0
    skip_lam: float = 1.0
    remat: str = "minimal"
    scan_layers: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    mixing: str = "auto"

    def _layer_fields(self) -> dict:
        return dict(
            height=self.height,
            width=self.width,
            num_segments=self.num_segments,
            reduced_dim=self.reduced_dim,
            mlp_ratio=self.mlp_ratio,
            drop_rate=self.drop_rate,
            skip_lam=self.skip_lam,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            mixing=self.mixing,
        )

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, every_layer: bool = False
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """The stage's output grid; with ``every_layer``, ``(output, (grid after each layer,
        ...))``."""
        count = len(self.drop_path_rates)
        if (
            self.scan_layers
            and count > 1
            and not self.is_initializing()
            and not self.is_mutable_collection("intermediates")
        ):
            return self._scan(x, train, every_layer)
        layer = remat_layer(MixerLayer, self.remat, self.mixing)
        # With remat="full" on the CPU, one unit per layer when training (see model/remat.py).
        as_unit = (
            train
            and self.remat == "full"
            and jax.default_backend() == "cpu"
            and not self.is_initializing()
            and not self.is_mutable_collection("intermediates")
        )
        outputs = []
        for j, rate in enumerate(self.drop_path_rates):
            module = layer(drop_path_rate=rate, name=f"layers_{j}", **self._layer_fields())
            x = call_layer(module, x, train) if as_unit else module(x, train)
            outputs.append(x)
        return (x, tuple(outputs)) if every_layer else x

    def _scan(self, x: jax.Array, train: bool, every_layer: bool):
        count = len(self.drop_path_rates)
        params = self.variables["params"]
        stacked = jax.tree_util.tree_map(
            lambda *leaves: jnp.stack(leaves), *[params[f"layers_{j}"] for j in range(count)]
        )
        rates = jnp.asarray(self.drop_path_rates, jnp.float32)
        stochastic = train and (any(self.drop_path_rates) or self.drop_rate > 0)
        keys = (
            jax.random.split(self.make_rng("dropout"), count) if stochastic else jnp.zeros((count,))
        )
        template = MixerLayer(parent=None, **self._layer_fields())

        def body(carry, inputs):
            layer_params, rate, key = inputs
            if not stochastic:  # every rate is 0: no random draw, no key needed
                out = template.apply({"params": layer_params}, carry, train)
            else:
                out = template.apply(
                    {"params": layer_params}, carry, train, rate, rngs={"dropout": key}
                )
            return out, (out if every_layer else None)

        policy = remat_policy(self.remat, self.mixing)
        if policy is not None:
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        x, stacked_outputs = jax.lax.scan(body, x, (stacked, rates, keys))
        if every_layer:
            return x, tuple(stacked_outputs[j] for j in range(count))
        return x
