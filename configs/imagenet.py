"""A published DynaMixer on ImageNet-1K with the authors' recipe, one variant per argument.

    python main.py --config=configs/imagenet.py:dynamixer_s --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR          # or :dynamixer_m, :dynamixer_l

Each variant's global batch size, stochastic depth and eval crop fraction come from
``dynamixer_jax.model.variants.PUBLISHED``; the rest is ``default.py`` (the authors' recipe):
310 epochs (300 cosine + 10 cooldown) of 1,281,167 images, AdamW at 2e-3, EMA decay 0.99996
evaluated beside the raw weights, eval at 224, bfloat16, ``remat="minimal"``. Targets (top-1):
S 82.7%, M 83.7%, L 84.3%.

Hardware, per variant: all three are meant for 8 GPUs of 40 GB or more (the authors' setup) or
a TPU v3-8 / v4-8. Memory per device:

* ``dynamixer_s``: batch 2048, 256 per device. On an H100 the bf16 step took 56 MB per image
  with ``remat="minimal"`` (about 14 GB at 256), so 40 GB GPUs fit; there ``--config.remat=none``
  (118 MB per image, about 30 GB at 256) is 15% faster. XLA:CPU's upper bound is 102 MB per
  image (26 GB). On a TPU v3 (16 GB per core) add ``--config.remat=full`` (16 MB per image on
  the H100, 45 by the CPU bound) or ``--config.grad_accum_steps=2``.
* ``dynamixer_m``: batch 1024, 128 per device; 99 MB per image on the H100 (13 GB per device),
  XLA:CPU's upper bound 210 (27 GB): fits 40 GB GPUs. On a TPU v3 add ``--config.remat=full``
  (79 MB per image by the CPU bound, 10 GB) or ``--config.grad_accum_steps=2``.
* ``dynamixer_l``: batch 512, 64 per device, stochastic depth 0.3, crop fraction 0.875; 142 MB
  per image on the H100 (9 GB per device), XLA:CPU's upper bound 294 (19 GB): fits 40 GB GPUs.
  On a TPU v3 add ``--config.remat=full`` (110 MB per image by the CPU bound, 7 GB).

Figures: ``bash benchmarks/accelerator_check.sh`` (H100, batch 128, bf16) and
``python benchmarks/memory_fit.py`` (the CPU bound).

ImageNet must be prepared once: ``tfds build imagenet2012`` with the two ILSVRC2012 tar files in
``$TFDS_DATA_DIR/downloads/manual`` (the run tells you if it is not).
"""

from configs import default
from dynamixer_jax.errors import ConfigError
from dynamixer_jax.model.variants import PUBLISHED


def get_config(variant: str = "dynamixer_s"):
    if variant not in PUBLISHED:
        raise ConfigError(
            f"configs/imagenet.py:{variant}: no such variant; use one of "
            f"{', '.join(sorted(PUBLISHED))}"
        )
    published = PUBLISHED[variant]
    config = default.get_config()
    config.model = variant
    config.batch_size = published["batch_size"]
    config.drop_path_rate = published["drop_path_rate"]
    config.crop_fraction = published["crop_fraction"]
    config.half_precision = True
    return config
