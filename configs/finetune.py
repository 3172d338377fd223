"""Fine-tune a trained DynaMixer on another dataset and image size, with a new classifier head.

    python main.py --config=configs/finetune.py --workdir=$WORKDIR \
        --config.init_from=dynamixer_s.pth.tar            # an authors' checkpoint, or
        --config.init_from=$IMAGENET_WORKDIR              # one of our workdirs / checkpoints

Meant for one GPU of 16 GB or more, or a TPU v3-8 (global batch 512, bfloat16). The default
target is CIFAR-10 (TFDS ``cifar10``, its 32x32 images upscaled to the pretraining size 224);
``--config.dataset=cifar100`` works the same way (the authors fine-tune on both). The paper reports
transfer results but not the recipe, so this one is ours: the ImageNet recipe at a tenth of the
learning rate, 100 epochs, 5 warmup, EMA off, drop path 0.1. Every parameter whose name and shape
match is loaded; the head (``reset_head``) and, when ``image_size`` differs from the source
model's, the token-grid-dependent ``generate`` layers start fresh (the log names them).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = "dynamixer_s"
    config.init_from_required = True  # --config.init_from=PATH: see the docstring
    config.init_from_ema = False
    config.reset_head = True

    config.dataset = "cifar10"
    config.train_split = "train"
    config.eval_split = "test"
    config.image_size = 224
    config.crop_fraction = 1.0  # CIFAR images are whole objects: no centre crop at eval
    config.augment.scale = (0.08, 1.0)

    config.batch_size = 512
    config.num_epochs = 100
    config.cooldown_epochs = 0
    config.warmup_epochs = 5
    config.learning_rate = 2e-4
    config.drop_path_rate = 0.1
    config.ema_decay = 0.0
    config.half_precision = True
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    return config
