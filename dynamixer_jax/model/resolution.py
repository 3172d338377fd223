"""Moving trained weights to another image size: the ``generate`` layers resampled.

Everything in DynaMixer but the ``generate`` layers is independent of the token grid. A
``generate`` layer of a row (or column) of L tokens maps the compressed tokens ``z`` (L tokens x
r reduced dims) to the logits of an L x L mixing matrix::

    logit(i, k) = sum_j sum_d z(j, d) K(j, d, i, k) + b(i, k)      i: output, k, j: input tokens

Read the token indices as positions along the row (token centres at ``(t + 1/2) / L``) and the
sum over ``j`` as a Riemann sum of an integral over the row: ``K`` and ``b`` are samples of
functions of positions. At L' tokens the same functions are sampled at the new centres (linear
interpolation along each of the three token axes of ``K`` and both of ``b``, without smoothing
when L' < L: on the quickstart at 24x24 this kept more top-1 than area-averaging, cubic or
nearest sampling did) and ``K`` is scaled by L / L' so that the sum over L' input tokens approximates the same integral. The softmax over input tokens ``k`` then spreads the same mass over L' tokens: an
image upsampled 2x, whose tokens come in near-equal pairs, gets about the original logits and
mixes about as the original did. Layout of the stored kernel: rows ``(j, d)``, ``j`` major;
columns ``(k, i)``, input token major (the authors' order).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynamixer_jax import trees
from dynamixer_jax.convert.architecture import architecture_from_params
from dynamixer_jax.model.network import DynaMixer
from dynamixer_jax.model.variants import abstract_variables


def _resample(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation at the new sample centres of ``shape``, in float32."""
    if tuple(array.shape) == tuple(shape):
        return np.asarray(array, np.float32)
    resized = jax.image.resize(jnp.asarray(array, jnp.float32), shape, "linear", antialias=False)
    return np.asarray(resized)


def generate_kernel_to(kernel: np.ndarray, length: int) -> np.ndarray:
    """A ``generate`` kernel (L*r, L*L) for rows of ``length`` tokens (see the module docstring)."""
    old = math.isqrt(kernel.shape[1])
    reduced = kernel.shape[0] // old
    grid = np.asarray(kernel).reshape(old, reduced, old, old)
    resized = _resample(grid, (length, reduced, length, length)) * (old / length)
    return resized.reshape(length * reduced, length * length).astype(kernel.dtype)


def generate_bias_to(bias: np.ndarray, length: int) -> np.ndarray:
    """A ``generate`` bias (L*L,) for rows of ``length`` tokens."""
    old = math.isqrt(bias.shape[0])
    resized = _resample(np.asarray(bias).reshape(old, old), (length, length))
    return resized.reshape(length * length).astype(bias.dtype)


def _length(path: str, leaf: Any) -> int:
    shape = trees.shape_of(leaf)
    columns = shape[-1]
    length = math.isqrt(columns)
    if length * length != columns:
        raise ValueError(f"{path}: {shape} is not a generate layer's shape")
    return length


def is_generate(path: str) -> bool:
    """Whether an 'a/b/c' parameter path is a ``generate`` layer's kernel or bias."""
    parts = path.split(trees.SEP)
    return len(parts) >= 2 and parts[-2] == "generate"


def transfer_params(params: Any, target: Any) -> tuple[Any, list[str]]:
    """``params`` with every ``generate`` leaf resampled to the shape it has in ``target``
    (another image size's parameters, or their ``jax.ShapeDtypeStruct`` tree); every other leaf
    as it is. Returns ``(params, resampled paths)``; trees that differ elsewhere are the caller's
    to check (``trees.check``)."""
    wanted = trees.flatten(target)
    resampled = []

    def visit(path: tuple, leaf: Any) -> Any:
        name = trees.path_name(path)
        goal = wanted.get(name)
        if goal is None or not is_generate(name):
            return leaf
        if trees.shape_of(goal) == trees.shape_of(leaf):
            return leaf
        length = _length(name, goal)
        resampled.append(name)
        value = np.asarray(leaf)
        if value.ndim == 2:
            return generate_kernel_to(value, length)
        return generate_bias_to(value, length)

    return jax.tree_util.tree_map_with_path(visit, params), resampled


def _resize_matrix(old: int, new: int) -> np.ndarray:
    """(new*new, old*old): bilinear resizing of an old x old patch to new x new, as a matrix."""
    basis = jnp.eye(old * old, dtype=jnp.float32).reshape(old * old, old, old)
    resized = jax.vmap(lambda patch: jax.image.resize(patch, (new, new), "bilinear"))(basis)
    return np.asarray(resized, np.float64).reshape(old * old, new * new).T


def patch_kernel_to(kernel: np.ndarray, patch_size: int) -> np.ndarray:
    """A patch-embedding kernel (p, p, in, out) for ``patch_size`` x ``patch_size`` patches, by
    FlexiViT's pseudo-inverse resize (Beyer et al., 2023): the kernel ``w'`` for which a patch
    resized to the new size gives the same embedding as the original patch did with ``w``,
    ``<resize(x), w'> = <x, w>`` (exact when enlarging; least squares when shrinking)."""
    old = kernel.shape[0]
    if old == patch_size:
        return kernel
    resize = _resize_matrix(old, patch_size)
    flat = np.asarray(kernel, np.float64).reshape(old * old, -1)
    new = np.linalg.pinv(resize.T) @ flat
    return new.reshape(patch_size, patch_size, *kernel.shape[2:]).astype(kernel.dtype)


def resample_params(
    params: Any, image_size: int | tuple[int, int], *, patch_size: int | None = None
) -> Any:
    """Trained DynaMixer weights moved to ``image_size`` (an int or ``(H, W)``): every
    ``generate`` layer resampled to the new token grid (see the module docstring), every other
    leaf as it is. ``patch_size`` other than the trained one resizes the patch embedding instead
    (:func:`patch_kernel_to`, FlexiViT): e.g. weights trained at 32 with patches of 4 run at 24
    with patches of 3 on the same 8x8 token grid, their ``generate`` layers unchanged.
    ``params`` is ``{'params': tree}`` or the bare tree, and the result has the same form; the
    architecture is read off the shapes. Unchanged at the size they were trained at; ValueError
    (one line) for a size the architecture cannot take."""
    wrapped = hasattr(params, "get") and "params" in params
    tree = params["params"] if wrapped else params
    size = image_size if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    arch = architecture_from_params(tree)
    if patch_size is not None and patch_size != arch["patch_size"]:
        embed = dict(tree["patch_embed"])
        embed["kernel"] = patch_kernel_to(np.asarray(embed["kernel"]), patch_size)
        tree = {**tree, "patch_embed": embed}
        arch["patch_size"] = patch_size
    target = DynaMixer(**{**arch, "image_size": size})
    moved, _ = transfer_params(tree, abstract_variables(target)["params"])
    return {**params, "params": moved} if wrapped else moved
