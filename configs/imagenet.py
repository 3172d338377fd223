"""A published DynaMixer on ImageNet-1K with the authors' recipe, one variant per argument.

    python main.py --config=configs/imagenet.py:dynamixer_s --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR          # or :dynamixer_m, :dynamixer_l

Each variant's global batch size, stochastic depth and eval crop fraction come from
``dynamixer_jax.model.variants.PUBLISHED``; the rest is ``default.py`` (the authors' recipe):
310 epochs (300 cosine + 10 cooldown) of 1,281,167 images, AdamW at 2e-3, EMA decay 0.99996
evaluated beside the raw weights, eval at 224, bfloat16, ``remat="minimal"``. Targets (top-1):
S 82.7%, M 83.7%, L 84.3%.

Hardware, per variant: all three are meant for 8 GPUs of 40 GB or more (the authors' setup).
On a TPU ``mixing="auto"`` runs the ``"vector"`` layout; with it all three published batches fit
a **TPU v5e-8** (S: 256 per chip: 13.4 GiB of 14.9, 52 MB per image; compiler estimates of ``python
benchmarks/tpu_compile.py --variants dynamixer_s --generations v5e --batches 8 16``, libtpu
0.0.42.1, fitted through batches 8 and 16; README "On a TPU"). S's also fits a **TPU v4-8**
(256 per TensorCore: 12.8 GiB of 16, 49 MB per image, ``--generations v4``). The figures below
for v3/v4 are the older ``"dot"`` layout (what GPUs and CPUs run) and overstate a TPU's need: a v3-8 is 8
TensorCores of 16 GiB, a v4-8 is 4 chips of 32 GiB with two TensorCores each, so both hold an
eighth of the batch in 16 GiB. Memory per device:

* ``dynamixer_s``: batch 2048, 256 per device. On an H100 the bf16 step took 56 MB per image
  with ``remat="minimal"`` (about 14 GB at 256), so 40 GB GPUs fit; there ``--config.remat=none``
  (118 MB per image, about 30 GB at 256) is 15% faster. XLA:CPU's upper bound is 102 MB per
  image (26 GB). For a TPU v4 TensorCore libtpu's compiler needs 0.98 GB + 137 MB per image:
  33.5 GiB at 256, 17.5 GiB over its 16 (at most 118 per core fit; a fit through batches 2 and
  8, which on a v5e overstated the memory at 16 by 7%; v5e, fitted through 8 and 16: 108 MB per
  image, 26.8 GiB at 256, at most 137 per chip). What fits a v4-8: ``--config.grad_accum_steps=4`` (about 9.2 GiB per core,
  estimated from the same fit plus the gradient accumulator), or a v4-32 (32 cores, 64 per
  core; a v4-16's 128 per core is over the 118) at the same global batch. ``--config.remat=full`` (16 MB per image on the H100) has
  not been compiled for a TPU. A v3 core has the same 16 GiB and has not been compiled either.
* ``dynamixer_m``: batch 1024, 128 per device; 99 MB per image on the H100 (13 GB per device),
  XLA:CPU's upper bound 210 (27 GB): fits 40 GB GPUs. Fits a **TPU v5e-8** with the ``"vector"``
  layout: 72 MB per image, 10.2 GiB of 14.9 at 128 per chip (compiler estimate, fitted through
  8 and 16: ``python benchmarks/tpu_compile.py --variants dynamixer_m --generations v5e
  --batches 8 16``); and a **TPU v4-8**: 81 MB per image, 11.1 GiB of 16 at 128 per TensorCore.
* ``dynamixer_l``: batch 512, 64 per device, stochastic depth 0.3, crop fraction 0.875; 142 MB
  per image on the H100 (9 GB per device), XLA:CPU's upper bound 294 (19 GB): fits 40 GB GPUs.
  Fits a **TPU v5e-8** with the ``"vector"`` layout: 103 MB per image, 8.4 GiB of 14.9 at 64 per
  chip (compiler estimate, fitted through 8 and 16: ``python benchmarks/tpu_compile.py
  --variants dynamixer_l --generations v5e --batches 8 16``). Not compiled for v3/v4.

Figures: ``bash benchmarks/accelerator_check.sh`` (H100, batch 128, bf16),
``python benchmarks/memory.py`` (the CPU bound) and ``python benchmarks/tpu_compile.py``
(TPU, libtpu 0.0.42.1's compiler; batches 2 and 8 compiled, larger ones extrapolated).

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
