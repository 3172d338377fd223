"""Run by tests/test_sharding.py on 8 simulated CPU devices (XLA_FLAGS set by the caller):
prints one JSON line of what it measured."""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import MICRO_ARCH

from dynamixer_jax import create_model, init_variables
from dynamixer_jax.data.device_augment import DeviceAugment
from dynamixer_jax.data.mixup import MixupConfig
from dynamixer_jax.model.pallas_mixing import mix_on_context_mesh, reference_mixing
from dynamixer_jax.model.variants import abstract_variables
from dynamixer_jax.sharding import automatic_axes, param_shardings, shard_params
from dynamixer_jax.train import parallel
from dynamixer_jax.train.optimizer import make_optimizer
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_eval_step, make_train_step


def split(leaf) -> bool:
    """Whether each device holds only part of ``leaf``."""
    return leaf.addressable_shards[0].data.shape != leaf.shape


def fraction_split(tree) -> float:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if leaf.ndim]
    return sum(map(split, leaves)) / len(leaves)


assert jax.device_count() == 8
out = {}
model = create_model("dynamixer_s", num_classes=10, image_size=16, **MICRO_ARCH)
images = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
variables = init_variables(model, 0)
want = np.asarray(jax.jit(model.apply)(variables, images))

# Inference: weights over the "model" axis of a 2 x 4 mesh, batch over "data"; the mesh's axes
# automatic (jax.sharding.Mesh) or explicit (jax.make_mesh's default in recent JAX).
meshes = {
    "auto": Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model")),
    "explicit": jax.make_mesh((2, 4), ("data", "model")),
}
assert all("Explicit" in str(kind) for kind in meshes["explicit"].axis_types)
for name, mesh in meshes.items():
    sharded = shard_params(variables, mesh, "model", min_size=64)
    batch = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    logits = jax.jit(model.apply)(sharded, batch)
    # init_variables placed sharded: the same numbers.
    shardings = param_shardings(abstract_variables(model)["params"], mesh, "model", min_size=64)
    placed = init_variables(model, 0, out_sharding=shardings)
    out[name] = {
        "inference_split": fraction_split(sharded),
        "inference_error": float(np.abs(np.asarray(logits) - want).max()),
        "logits_type": str(jax.typeof(logits)),
        "init_split": fraction_split(placed),
        "init_equal": all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(variables))
        ),
    }


# A DynaMixer backbone inside a module of one's own, on explicit axes: that module's apply is
# wrapped in automatic_axes, as the README says.
class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5)(model.backbone(name="backbone")(x)[-1])


dense = Dense()
composed = jax.jit(dense.init)(jax.random.key(0), images)
want_dense = np.asarray(jax.jit(dense.apply)(composed, images))
composed = shard_params(composed, meshes["explicit"], "model", min_size=64)
batch = jax.device_put(images, NamedSharding(meshes["explicit"], PartitionSpec("data")))
got_dense = jax.jit(automatic_axes(dense.apply, PartitionSpec("data")))(composed, batch)
out["composed_error"] = float(np.abs(np.asarray(got_dense) - want_dense).max())
out["composed_type"] = str(jax.typeof(got_dense))

# Training on the 8-device data mesh: the same losses whichever way the state is laid out.
data_mesh = parallel.make_mesh()
schedule = optax.constant_schedule(1e-3)
tx = make_optimizer(schedule, weight_decay=0.05, eps=1e-3)
rng = np.random.default_rng(1)
batches = [
    {
        "image": rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
        "label": rng.integers(0, 10, size=16).astype(np.int32),
        "mask": np.ones(16, bool),
    }
    for _ in range(2)
]
# Random erasing is on: it is the part of the step that explicit axes would refuse (a vmap over
# the batch with replicated keys) if the step did not run on automatic axes.
augment = DeviceAugment(erase_prob=0.5, erase_count=2)
runs = [(mode, data_mesh, mode) for mode in parallel.STATE_SHARDINGS]
# FSDP on the explicit 2 x 4 mesh: batch, parameters and optimiser state over its "data" axis.
runs.append(("explicit_fsdp", meshes["explicit"], "fsdp"))
for name, mesh, mode in runs:
    create = lambda params: create_train_state(params, tx, seed=1, use_ema=True)  # noqa: E731
    abstract = jax.eval_shape(create, variables["params"])
    layout = parallel.state_shardings(abstract, mesh, mode, min_size=64)
    state = jax.jit(create, out_shardings=layout)(variables["params"])
    step = make_train_step(
        model,
        tx,
        schedule,
        mesh,
        num_classes=10,
        mixup=MixupConfig(0.0, 0.0),
        augment=augment,
        ema_decay=0.9,
        state_sharding=layout,
    )
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, mesh))
        losses.append(float(metrics["train_loss"]))
    out[name] = {
        "losses": losses,
        "params_split": fraction_split(state.params),
        "opt_split": fraction_split(state.opt_state),
        "ema_split": fraction_split(state.ema_params),
        "params": [
            np.asarray(leaf).ravel()[:8].tolist()
            for leaf in jax.tree_util.tree_leaves(state.params)
        ],
    }
    if mode == "fsdp":  # evaluation of the trained weights, gathered as the loop gathers them
        params = jax.device_put(state.params, parallel.replicated(mesh))
        sums = make_eval_step(model, mesh)({"raw": params}, parallel.global_batch(batches[0], mesh))
        out[name]["eval_loss"] = float(sums["raw"]["loss"])
# The Pallas mixing kernel (interpreted on a CPU) split over the 8 devices of the context mesh,
# as the train and eval steps set it: a shard_map (a TPU cannot compile it otherwise), with the
# values and gradients (generate's summed over the devices) of the same mixing in jax.numpy,
# unsplit (tests/test_pallas_mixing.py holds the unsplit kernel to it; compiling the interpreted
# kernel a second time here would cost this test ~15 s).
keys = jax.random.split(jax.random.key(3), 5)
length, segments, reduced, channels, sequences = 4, 2, 2, 3, 16
mixing_args = (
    jax.random.normal(keys[0], (segments, length * reduced, sequences)),
    0.3 * jax.random.normal(keys[1], (length * length, length * reduced)),
    0.1 * jax.random.normal(keys[2], (length * length,)),
    jax.random.normal(keys[3], (length, segments, channels, sequences)),
)
cotangent = jax.random.normal(keys[4], mixing_args[3].shape)


def mixing_loss(mix):
    def loss(*args):
        with jax.sharding.use_abstract_mesh(data_mesh.abstract_mesh):
            return jnp.sum(mix(*args) * cotangent)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))


by_sequence = [NamedSharding(data_mesh, PartitionSpec(*[None] * (n - 1), "data")) for n in (3, 4)]
split_args = (
    jax.device_put(mixing_args[0], by_sequence[0]),
    *mixing_args[1:3],
    jax.device_put(mixing_args[3], by_sequence[1]),
)
mixed_split = jax.jit(mixing_loss(mix_on_context_mesh))(*split_args)
whole = jax.jit(mixing_loss(reference_mixing))(*mixing_args)
out["pallas_split"] = "shard_map" in str(
    jax.make_jaxpr(mixing_loss(mix_on_context_mesh))(*split_args)
)
out["pallas_error"] = max(
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax.tree_util.tree_leaves(mixed_split), jax.tree_util.tree_leaves(whole))
)
out["pallas_scale"] = max(
    float(np.abs(np.asarray(b)).max()) for b in jax.tree_util.tree_leaves(whole)
)
print(json.dumps(out))
