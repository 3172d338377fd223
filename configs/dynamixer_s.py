"""DynaMixer-S on ImageNet-1K with the authors' recipe (SPEC section 6). Target: 82.7% top-1.

    python main.py --config=configs/dynamixer_s.py --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR

Meant for 8 GPUs of 40 GB or more (the authors' setup) or a TPU v3-8 / v4-8: global batch 2048,
256 per device, bfloat16, ``remat="minimal"``. Memory per device (``benchmarks/memory_fit.py``):
on an H200 the step took 55.6 MB per image (about 15 GB at 256), so 40 GB GPUs fit; XLA:CPU's
upper bound is 102 MB per image (26 GB). On a TPU v3 (16 GB per core) add
``--config.remat=full`` (45 MB per image by the CPU bound, 12 GB at 256) or
``--config.grad_accum_steps=2``. 310 epochs (300 cosine + 10 cooldown) of 1,281,167
images; EMA decay 0.99996 evaluated beside the raw weights; eval at 224 with crop fraction 0.9.
ImageNet must be prepared once: ``tfds build imagenet2012`` with the two ILSVRC2012 tar files in
``$TFDS_DATA_DIR/downloads/manual`` (the run tells you if it is not).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "dynamixer_s"
    config.batch_size = 2048
    config.drop_path_rate = 0.1
    config.crop_fraction = 0.9
    config.half_precision = True
    return config
