"""DynaMixer-L on ImageNet-1K with the authors' recipe (SPEC section 6). Target: 84.3% top-1.

    python main.py --config=configs/dynamixer_l.py --workdir=$WORKDIR \
        --config.data_dir=$TFDS_DATA_DIR

Meant for 8 GPUs of 40 GB or more or a TPU v3-8 / v4-8: global batch 512, 64 per device,
bfloat16, ``remat="minimal"`` (XLA:CPU's upper bound 294 MB per image, 19 GB per device: fits 40
GB GPUs). On a TPU v3 (16 GB per core) add ``--config.remat=full`` (110 MB per image, 7 GB).
310 epochs, stochastic depth 0.3, EMA 0.99996, eval at 224 with crop fraction 0.875.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "dynamixer_l"
    config.batch_size = 512
    config.drop_path_rate = 0.3
    config.crop_fraction = 0.875
    config.half_precision = True
    return config
