"""Training and evaluation library (jit over a device mesh, Orbax checkpoints, tf.data input).

    from dynamixer_jax.train import load_config, train_and_evaluate, evaluate
    config = load_config("configs/quickstart.py")       # or "configs/imagenet.py:dynamixer_m"
    train_and_evaluate(config, "/tmp/quickstart")      # resumes if the workdir has checkpoints
    evaluate(config, "/tmp/quickstart")                # or an authors' .pth file

Importing this package imports neither TensorFlow nor torch; the input pipeline (TensorFlow) is
imported when a run starts.
"""

from dynamixer_jax.errors import TrainingDiverged
from dynamixer_jax.train.config_files import load_config
from dynamixer_jax.train.evaluation import evaluate
from dynamixer_jax.train.loop import train_and_evaluate
from dynamixer_jax.train.parallel import initialize_distributed

__all__ = [
    "TrainingDiverged",
    "evaluate",
    "initialize_distributed",
    "load_config",
    "train_and_evaluate",
]
