"""Every configuration field, its default and its meaning; the other configs start from this one.

    python main.py --config=configs/default.py --workdir=/tmp/run [--config.FIELD=VALUE ...]

The defaults are the authors' ImageNet-1K recipe for DynaMixer-S; see ``imagenet.py`` for the
published runs (``--config=configs/imagenet.py:dynamixer_m``), ``quickstart.py`` for a
five-minute CPU run and ``finetune.py`` for transfer learning. Any field can be set from the
command line, e.g. ``--config.batch_size=1024`` or
``--config.model_overrides.layers="(2, 2, 4, 2)"``; from Python, ``load_config(path,
batch_size=1024, **{"mixup.cutmix_alpha": 0.0})``. An unset field is None (its default here;
leave it off the command line). ``dynamixer_jax/train/plan.py`` reads and checks them all.
"""

import ml_collections
from ml_collections import config_dict

from dynamixer_jax.data import recipe
from dynamixer_jax.data.device_augment import IMAGENET_MEAN, IMAGENET_STD


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # ---- model
    config.model = "dynamixer_s"  # dynamixer_s | dynamixer_m | dynamixer_l
    # Architecture fields that replace the variant's (None keeps the variant's value).
    config.model_overrides = ml_collections.ConfigDict(
        {
            "layers": config_dict.placeholder(tuple),  # layers per stage, e.g. (4, 3, 8, 3)
            "embed_dims": config_dict.placeholder(tuple),  # channels per stage
            "transitions": config_dict.placeholder(tuple),  # stride-2 downsampling after a stage
            "num_segments": config_dict.placeholder(tuple),  # segments S per stage
            "reduced_dims": config_dict.placeholder(tuple),  # reduced dimension r per stage
            "mlp_ratios": config_dict.placeholder(tuple),  # MLP hidden width / channels
            "patch_size": config_dict.placeholder(int),  # patch embedding kernel = stride (7)
        }
    )
    config.image_size = 224  # input side; the token grid is image_size / patch_size
    config.num_classes = config_dict.placeholder(int)  # None: the dataset's number of classes
    config.drop_path_rate = 0.1  # stochastic depth, growing linearly to this over all layers
    config.drop_rate = 0.0  # dropout in the MLPs and after the token mixer's projection
    config.half_precision = False  # bfloat16 computation (parameters, softmaxes, norms in fp32)
    # What each mixer layer keeps for the backward pass (dynamixer_jax/model/remat.py): "minimal" keeps
    # matmul outputs and recomputes element-wise work; "full" keeps only layer inputs (about
    # 2.2x less activation memory than "minimal", ~25% more compute); "none" keeps everything.
    config.remat = "minimal"
    # How the tokens are mixed (dynamixer_jax/model/layers.py, resolve_mixing): "auto" is "vector"
    # on a TPU (a lane-dense layout: 0.58x the bytes of "dot" per S training step, by the TPU
    # compiler; docs/memory_traffic.md) and "dot" elsewhere (the layout measured on GPUs and CPUs).
    # "pallas" fuses logits, softmax and mixing in one TPU kernel (0.82x "vector"'s bytes by the
    # TPU compiler; not yet run on a TPU, so "auto" does not choose it).
    config.mixing = "auto"
    # Run each stage's layers as one lax.scan: S compiles ~25% faster and holds ~15% less
    # activation memory on the CPU, same values; not yet timed on a GPU, hence off.
    config.scan_layers = False

    # ---- data (tf.data on the host; see dynamixer_jax/data)
    config.dataset = "imagenet2012"  # a TFDS name, or a folder ROOT/{train,val}/<class>/<image>
    config.data_dir = config_dict.placeholder(str)  # TFDS data dir (local or gs://); None: TFDS's
    config.train_split = "train"
    config.eval_split = "validation"  # folder datasets: validation finds val/
    config.image_key = "image"  # TFDS feature names
    config.label_key = "label"
    config.shuffle_buffer_size = 16_384  # TFDS only; folders use an exact permutation
    config.data_threads = config_dict.placeholder(int)  # tf.data threads; None: all cores
    config.prefetch_batches = 2  # host batches prepared ahead of the step

    # ---- per-image training augmentation (tf.data; random erasing on device, in the train
    # step): every field, its default and meaning in dynamixer_jax/data/recipe.py
    config.augment = ml_collections.ConfigDict(recipe.config_fields())
    config.mean = IMAGENET_MEAN  # normalisation (on device, train and eval steps), 0-1 scale
    config.std = IMAGENET_STD
    config.crop_fraction = 0.9  # eval: resize the short side to image_size / crop_fraction, crop

    # ---- on-device batch mixing and targets (in the jitted train step)
    config.mixup = ml_collections.ConfigDict(
        {
            "mixup_alpha": 0.8,  # 0 turns Mixup off
            "cutmix_alpha": 1.0,  # 0 turns CutMix off
            "switch_prob": 0.5,  # chance of CutMix when both are on
            "prob": 1.0,  # chance that a batch is mixed at all
        }
    )
    config.label_smoothing = 0.1

    # ---- optimisation: AdamW, warmup + cosine (warmup inside it) + cooldown, per step
    config.batch_size = 2048  # global, over all devices and processes
    config.eval_batch_size = config_dict.placeholder(int)  # global; None: batch_size
    config.num_epochs = 300  # epochs of warmup + cosine
    config.cooldown_epochs = 10  # epochs at min_learning_rate after the cosine
    # None: (num_epochs + cooldown_epochs) epochs; else this many steps
    config.num_train_steps = config_dict.placeholder(int)
    config.warmup_epochs = 20
    config.learning_rate = 2e-3  # peak; not scaled with the batch size
    config.warmup_learning_rate = 1e-6
    config.min_learning_rate = 1e-5  # cosine floor and cooldown value
    config.weight_decay = 0.05  # decoupled, on weights with 2+ axes only
    config.adam_b1 = 0.9
    config.adam_b2 = 0.999
    config.adam_eps = 1e-8
    config.grad_clip_norm = 0.0  # clip the global gradient norm; 0 off (the authors: off)
    config.grad_accum_steps = 1  # micro-batches per step (same update, less memory)
    config.ema_decay = 0.99996  # EMA of the parameters, evaluated beside them; 0 off
    # Training state over the devices: "replicated"; "zero1": optimizer state and EMA split over
    # the devices; "fsdp": the parameters too (less memory per device, the same losses)
    config.state_sharding = "replicated"

    # ---- fine-tuning
    config.init_from = config_dict.placeholder(str)  # workdir, checkpoint, .msgpack or .pth
    config.init_from_ema = False  # take the EMA weights of init_from
    config.reset_head = True  # a new classifier head
    # At another image_size than init_from's: resample its generate layers to the new token grid
    # (dynamixer_jax/model/resolution.py); False: initialise them afresh
    config.resample_generate = True
    config.init_from_required = False  # True: refuse to start without init_from (finetune.py)

    # ---- bookkeeping
    config.seed = 42  # parameters, data order, augmentation and step randomness
    config.log_every_steps = 100
    config.eval_every_steps = config_dict.placeholder(int)  # None: once per epoch (and at the end)
    config.checkpoint_every_steps = 1000  # also after every evaluation
    config.keep_checkpoints = 3  # the latest ones; the best by eval_top1 is kept as well
    config.async_checkpointing = True
    # jax.profiler trace of steps profile_first_step.. (+profile_num_steps) into WORKDIR for
    # TensorBoard's Profile tab; None: no trace
    config.profile_first_step = config_dict.placeholder(int)
    config.profile_num_steps = 5

    return config
