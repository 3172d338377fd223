"""Run by tests/test_sharding.py on 8 simulated CPU devices (XLA_FLAGS set by the caller):
prints one JSON line of what it measured."""

import json
import sys

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import MICRO_ARCH

from dynamixer_jax import create_model, init_variables
from dynamixer_jax.model.init import abstract_variables
from dynamixer_jax.sharding import param_shardings, shard_params
from dynamixer_jax.train import parallel
from dynamixer_jax.train.mixup import MixupConfig
from dynamixer_jax.train.optimizer import make_optimizer
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.steps import make_train_step


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

# Inference: weights over the "model" axis of a 2 x 4 mesh, batch over "data".
mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
sharded = shard_params(variables, mesh, "model", min_size=64)
batch = jax.device_put(images, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
out["inference_split"] = fraction_split(sharded)
out["inference_error"] = float(np.abs(jax.jit(model.apply)(sharded, batch) - want).max())

# init_variables placed sharded: the same numbers.
shardings = param_shardings(abstract_variables(model)["params"], mesh, "model", min_size=64)
placed = init_variables(model, 0, out_sharding=shardings)
out["init_split"] = fraction_split(placed)
out["init_equal"] = all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(variables))
)

# An explicit-axes mesh is refused in one line.
explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
try:
    shard_params(variables, explicit, "model")
    out["explicit_error"] = ""
except ValueError as error:
    out["explicit_error"] = str(error)

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
for mode in parallel.STATE_SHARDINGS:
    create = lambda params: create_train_state(params, tx, seed=1, use_ema=True)  # noqa: E731
    abstract = jax.eval_shape(create, variables["params"])
    layout = parallel.state_shardings(abstract, data_mesh, mode, min_size=64)
    state = jax.jit(create, out_shardings=layout)(variables["params"])
    step = make_train_step(
        model,
        tx,
        schedule,
        data_mesh,
        num_classes=10,
        mixup=MixupConfig(0.0, 0.0),
        ema_decay=0.9,
        state_sharding=layout,
    )
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.global_batch(batch, data_mesh))
        losses.append(float(metrics["train_loss"]))
    out[mode] = {
        "losses": losses,
        "params_split": fraction_split(state.params),
        "opt_split": fraction_split(state.opt_state),
        "ema_split": fraction_split(state.ema_params),
        "params": [
            np.asarray(leaf).ravel()[:8].tolist()
            for leaf in jax.tree_util.tree_leaves(state.params)
        ],
    }
print(json.dumps(out))
