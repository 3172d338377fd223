"""What each mixer layer keeps for the backward pass: the ``remat`` choices of ``create_model``.

Without rematerialisation XLA keeps every intermediate the backward pass reads, several of them
more than once: an exact GELU leaves four arrays of the MLP's hidden size, a LayerNorm four of
the token grid's, stochastic depth a full-size mask. The choices, from most memory to least:

``"none"``
    No rematerialisation: everything XLA keeps (the largest activation memory).
``"minimal"`` (default)
    Keep the output of every matrix product (and each layer's input); recompute the cheap
    element-wise work (LayerNorms, softmaxes, GELU, reweighting, stochastic depth) in the
    backward pass. No matrix product runs twice, so the extra work is a few element-wise passes;
    activation memory falls to what the matmuls' weight gradients need anyway. With the
    ``"vector"`` mixing (a TPU's; see ``remat_policy``) it keeps the mixed tokens instead of
    the ``out`` product they come from, and recomputes the mixing matrices from the small
    ``compress`` output instead of keeping their logits.
``"full"``
    Keep only each layer's input and recompute the whole layer in the backward pass: about one
    more forward pass of compute (training FLOPs x4/3) for the smallest memory, one layer's
    intermediates at a time. For batches that do not fit otherwise.

The forward and backward values are the same with every choice, up to float rounding.

With ``"full"`` on the CPU, each layer runs as one unit under a gradient (``call_layer``):
XLA:CPU's memory scheduler orders the whole step depth-first and otherwise leaves each layer's
parameter-gradient reductions until the backward pass has reached the first layer (every layer's
MLP cotangent stays alive) or runs a layer's recomputation during the forward pass; the unit
cuts ``"full"``'s memory by more than two thirds (figures: docs/studies.md, "Figures behind
code decisions"). The unit is a conditional, which costs about 30% more compile time on the CPU, so the default
``"minimal"`` does without it; and a GPU conditional reads its predicate back to the host, a
round trip per layer per step, so accelerators do without it too.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dynamixer_jax.model.layers import resolve_mixing

REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def call_layer(module: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    """``module(x, train)`` as one conditional, so that XLA schedules the layer's forward, its
    recomputation, its backward and its parameter gradients each as one step.

    Both branches are the same layer, so the predicate (a comparison XLA cannot fold away) never
    changes the result; random draws are the layer's own, as without the conditional.
    """

    def run(layer: nn.Module, y: jax.Array) -> jax.Array:
        return layer(y, train)

    corner = x[(0,) * x.ndim]
    return nn.cond(corner == corner, run, run, module, x)


# "minimal" for the "vector" mixing: every plain matrix product's output, and the mixed tokens
# (named in layers.py) instead of the ``out`` product they come from.
_VECTOR_MINIMAL = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names("mixed_tokens"),
)


def remat_policy(remat: str, mixing: str):
    """The ``jax.checkpoint`` policy of ``remat`` for a layer that mixes with ``mixing``.

    ``"minimal"`` with the ``"vector"`` mixing (a TPU's) differs from the table in two ways,
    both measured with the TPU compiler (docs/memory_traffic.md). It keeps the mixed tokens, in
    the grid's layout, rather than the ``out`` product (the same bytes), so the backward pass
    does not redo the bias and the move back into the grid. And it keeps no mixing matrices:
    their logits (``generate``, the one product batched over segments) are recomputed in the
    backward pass from the ``compress`` output, 32x smaller at S's first stage, for about 2%
    more FLOPs. The ``"dot"`` layout keeps exactly what ``dots_saveable`` keeps, as measured on
    the H100 and the CPUs.
    """
    if remat == "minimal" and resolve_mixing(mixing) in ("vector", "pallas"):
        return _VECTOR_MINIMAL
    return REMAT_POLICIES[remat]


def remat_layer(layer_cls: type[nn.Module], remat: str, mixing: str = "dot") -> type[nn.Module]:
    """``layer_cls`` wrapped to keep what ``remat`` says for a layer that mixes with ``mixing``;
    it must be called as ``layer(x, train)``."""
    policy = remat_policy(remat, mixing)
    if policy is None:
        return layer_cls
    # static_argnums counts the module as argument 0: ``train`` (a Python bool) is argument 2.
    return nn.remat(layer_cls, policy=policy, static_argnums=(2,))
