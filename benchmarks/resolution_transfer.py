"""How much accuracy weights keep at another image size: resampled vs re-initialised generate.

Takes the quickstart trained at 32x32 (trains it into ``--workdir`` first if that holds no
checkpoint), then at each of ``--sizes``:

* evaluates it with the ``generate`` layers resampled (``model/resolution.py``) and with them
  initialised afresh (every other weight loaded), no training;
* fine-tunes each of the two for the same ``--finetune-steps`` and evaluates again;
* as a bound, runs the untouched 32x32 model on the same eval images resized back to 32x32.

    python benchmarks/resolution_transfer.py --workdir /tmp/quickstart [--sizes 48 24]
        [--finetune-steps 44] [--json results.json]

Prints a table (top-1 on the 360 test digits, raw parameters) for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax
import numpy as np

import dynamixer_jax
from dynamixer_jax import trees
from dynamixer_jax.convert.flax_io import save_flax
from dynamixer_jax.data.build import make_eval_data, open_configured_source
from dynamixer_jax.data.device_augment import normalize
from dynamixer_jax.loading import read_params
from dynamixer_jax.model.variants import init_variables
from dynamixer_jax.train import evaluate, load_config, train_and_evaluate
from dynamixer_jax.train.plan import make_plan
from dynamixer_jax.train.weights import GRID_DEPENDENT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


def top1(results: dict) -> float:
    return float(results["eval_top1"])


def reinitialised_generate(workdir: str, image_size: int, path: str) -> str:
    """The workdir's weights with fresh generate layers for ``image_size``, as a .msgpack."""
    model = make_plan(load_config(QUICKSTART, image_size=image_size)).model.build(10)
    fresh = jax.device_get(init_variables(model, jax.random.key(1))["params"])
    loaded = read_params(workdir)
    params, _ = trees.merge(fresh, loaded, reinit=GRID_DEPENDENT)
    save_flax({"params": params}, path)
    return path


def source_on_resized_images(workdir: str, image_size: int) -> float:
    """Top-1 of the untouched 32x32 model on the eval images at ``image_size`` resized back to
    32x32: whether the smaller (larger) images still hold what the model needs."""
    plan32 = make_plan(load_config(QUICKSTART))
    plan = make_plan(load_config(QUICKSTART, image_size=image_size))
    model = plan32.model.build(10, train=False)
    params = read_params(workdir)
    apply = jax.jit(lambda images: model.apply({"params": params}, images))
    hits = count = 0
    for batch in make_eval_data(plan.data, open_configured_source(plan.data)).batches():
        images = normalize(batch["image"], plan.data.mean, plan.data.std)
        images = jax.image.resize(images, (images.shape[0], 32, 32, 3), "bilinear")
        predicted = np.asarray(apply(images)).argmax(-1)
        hits += int(((predicted == batch["label"]) & batch["mask"]).sum())
        count += int(batch["mask"].sum())
    return hits / count


def on_eval_images(workdir: str, image_size: int, **load_kwargs) -> float:
    """Top-1 at ``image_size`` of ``dynamixer_jax.load(workdir, image_size=..., **load_kwargs)``
    (raw parameters), on the eval images prepared at that size."""
    plan = make_plan(load_config(QUICKSTART, image_size=image_size))
    model, variables = dynamixer_jax.load(workdir, image_size=image_size, **load_kwargs)
    apply = jax.jit(lambda images: model.apply(variables, images))
    hits = count = 0
    for batch in make_eval_data(plan.data, open_configured_source(plan.data)).batches():
        images = normalize(batch["image"], plan.data.mean, plan.data.std)
        predicted = np.asarray(apply(images)).argmax(-1)
        hits += int(((predicted == batch["label"]) & batch["mask"]).sum())
        count += int(batch["mask"].sum())
    return hits / count


def finetune(init_from: str, image_size: int, steps: int, resample: bool, workdir: str) -> float:
    config = load_config(
        QUICKSTART,
        image_size=image_size,
        init_from=init_from,
        reset_head=False,
        resample_generate=resample,
        num_train_steps=steps,
        warmup_epochs=0,
        learning_rate=5e-4,
        ema_decay=0.0,
        log_every_steps=steps,
        eval_every_steps=steps,
        checkpoint_every_steps=steps,
    )
    return top1(train_and_evaluate(config, workdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the quickstart trained at 32x32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 24])
    parser.add_argument("--finetune-steps", type=int, default=44)
    parser.add_argument("--json")
    args = parser.parse_args()

    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        train_and_evaluate(load_config(QUICKSTART), args.workdir)
    rows = {32: {"source": top1(evaluate(load_config(QUICKSTART), args.workdir))}}
    scratch = tempfile.mkdtemp(prefix="resolution_")
    for size in args.sizes:
        config = load_config(QUICKSTART, image_size=size)
        fresh = reinitialised_generate(args.workdir, size, f"{scratch}/reinit_{size}.msgpack")
        rows[size] = {
            "source_resized_to_32": source_on_resized_images(args.workdir, size),
            "resampled": top1(evaluate(config, args.workdir)),
            # FlexiViT: patches of 4 * size / 32 keep the 8x8 grid; the patch kernel resized.
            "patch_resized": on_eval_images(args.workdir, size, patch_size=4 * size // 32),
            "reinitialised": top1(evaluate(config, fresh)),
            "resampled_finetuned": finetune(
                args.workdir, size, args.finetune_steps, True, f"{scratch}/ft_resampled_{size}"
            ),
            "reinitialised_finetuned": finetune(
                args.workdir, size, args.finetune_steps, False, f"{scratch}/ft_reinit_{size}"
            ),
        }
        print(f"{size}x{size}: {rows[size]}", flush=True)
    source = rows[32]["source"]
    print(f"\nquickstart trained at 32x32: top-1 {source:.1%}; fine-tuning: {args.finetune_steps}")
    print(
        "| image size | resampled | re-initialised | resampled + fine-tune | re-init + fine-tune "
        "| source model, images resized to 32 | patch kernel resized (FlexiViT), no training |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        row = rows[size]
        print(
            f"| {size}x{size} | {row['resampled']:.1%} ({row['resampled'] / source:.0%} of "
            f"source) | {row['reinitialised']:.1%} | {row['resampled_finetuned']:.1%} | "
            f"{row['reinitialised_finetuned']:.1%} | {row['source_resized_to_32']:.1%} | "
            f"{row['patch_resized']:.1%} |"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({str(k): v for k, v in rows.items()}, file, indent=1)


if __name__ == "__main__":
    main()
