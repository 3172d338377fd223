"""DynaMixer-M on ImageNet-1K with the authors' recipe (SPEC section 6). Target: 83.7% top-1.

    python main.py --config=configs/dynamixer_m.py --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR

Meant for 8 GPUs of 40 GB or more or a TPU v3-8 / v4-8: global batch 1024, 128 per device,
bfloat16, ``remat="minimal"`` (XLA:CPU's upper bound 210 MB per image, 27 GB per device: fits
40 GB GPUs). On a TPU v3 (16 GB per core) add ``--config.remat=full`` (79 MB per image, 10 GB)
or ``--config.grad_accum_steps=2``. 310 epochs, stochastic
depth 0.1, EMA 0.99996, eval at 224 with crop fraction 0.9.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "dynamixer_m"
    config.batch_size = 1024
    config.drop_path_rate = 0.1
    config.crop_fraction = 0.9
    config.half_precision = True
    return config
