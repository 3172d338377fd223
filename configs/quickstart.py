"""A small DynaMixer on the built-in handwritten digits: the five-minute CPU run.

    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart

Meant for any machine, a 2-core CPU included (no accelerator, no download: the digits ship with
scikit-learn and are prepared into the TFDS data dir on first use). Target: at least 95% top-1 on
the 360 test digits in under 5 minutes on a 2-core CPU. The model keeps DynaMixer's structure
with 4x4 patches on 32x32 images (an 8x8 then 4x4 token grid) and two narrow stages; the recipe is
the ImageNet one scaled down, without flips (digits are not mirror-symmetric).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "dynamixer_s"
    config.model_overrides.layers = (2, 2)
    config.model_overrides.embed_dims = (64, 128)
    config.model_overrides.transitions = (True, False)
    config.model_overrides.num_segments = (4, 8)
    config.model_overrides.reduced_dims = (2, 2)
    config.model_overrides.mlp_ratios = (3, 3)
    config.model_overrides.patch_size = 4
    config.image_size = 32
    config.drop_path_rate = 0.05

    config.dataset = "sklearn_digits"
    config.train_split = "train"
    config.eval_split = "test"
    config.crop_fraction = 1.0
    config.augment.scale = (0.5, 1.0)
    config.augment.hflip = 0.0
    config.augment.rand_augment = "rand-m5-mstd0.5-inc1"
    config.augment.random_erase_prob = 0.1
    config.mixup.mixup_alpha = 0.2
    config.mixup.cutmix_alpha = 0.0

    config.batch_size = 64
    config.num_epochs = 30
    config.cooldown_epochs = 0
    config.warmup_epochs = 2
    config.learning_rate = 2e-3
    config.ema_decay = 0.99
    config.log_every_steps = 22
    config.eval_every_steps = 220
    config.checkpoint_every_steps = 220
    return config
