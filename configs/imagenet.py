"""A published DynaMixer on ImageNet-1K with the authors' recipe, one variant per argument.

    python main.py --config=configs/imagenet.py:dynamixer_s --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR          # or :dynamixer_m, :dynamixer_l

Each variant's global batch size, stochastic depth and eval crop fraction come from
``dynamixer_jax.model.variants.PUBLISHED``; the rest is ``default.py`` (the authors' recipe):
310 epochs (300 cosine + 10 cooldown) of 1,281,167 images, AdamW at 2e-3, EMA decay 0.99996
evaluated beside the raw weights, eval at 224, bfloat16, ``remat="minimal"``. Targets (top-1):
S 82.7%, M 83.7%, L 84.3%.

Hardware: each variant names the smallest slice its published global batch fits with the
default ``remat="minimal"`` (on a TPU ``mixing="auto"`` runs the ``"vector"`` layout). The TPU
figures are libtpu 0.0.42.1's compiler estimates, per device at the published per-device batch,
fitted through batches 8 and 16 (``python benchmarks/memory.py --tpu GEN --models VARIANT
--batches 8 16``; dated table in the README, "On a TPU"). The GPU figures are the H100
measurements of ``python benchmarks/accelerator_check.py`` (batch 128, bf16; README).

* ``dynamixer_s``: batch 2048, 256 per device. **TPU v5e-8**: 13.4 GiB of 14.9 per chip
  (52 MB per image); **TPU v4-8** (8 TensorCores of 16 GiB): 12.8 GiB per core (49 MB per
  image); **TPU v3-8**: 13.1 GiB per core (51 MB per image). **8 GPUs of 40 GB**: 56 MB per image on the H100, about 14 GB at 256
  (``--config.remat=none``, 118 MB per image, is 15% faster where 30 GB per device are free).
* ``dynamixer_m``: batch 1024, 128 per device. **TPU v5e-8**: 10.2 GiB per chip (72 MB per
  image); **TPU v4-8**: 11.1 GiB per core (81 MB per image); **TPU v3-8**: 10.2 GiB per core
  (75 MB per image). **8 GPUs of 40 GB**: 99 MB per
  image on the H100, 13 GB per device.
* ``dynamixer_l``: batch 512, 64 per device, stochastic depth 0.3, crop fraction 0.875.
  **TPU v5e-8**: 8.4 GiB per chip (103 MB per image); **TPU v4-8**: 9.1 GiB per core (115 MB
  per image); **TPU v3-8**: 8.3 GiB per core (109 MB per image). **8 GPUs of 40 GB**: 142 MB per image on the H100, 9 GB per device.

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
