"""Train or evaluate DynaMixer.

    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
    python main.py --config=configs/imagenet.py:dynamixer_s --workdir=$WORKDIR \
        --config.batch_size=1024
    python main.py --config=configs/imagenet.py:dynamixer_s --mode=evaluate \
        --weights=dynamixer_s.pth.tar

Running the same command again with a workdir that holds checkpoints resumes from the latest.
Several processes (one per host): give every one ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``; Cloud TPU pods and SLURM jobs are detected without them.
Everything here is a call into ``dynamixer_jax.train`` that a notebook can make too.
"""

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (see configs/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard events go here.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "Train (and evaluate), or only evaluate.")
flags.DEFINE_string(
    "weights",
    None,
    "evaluate: a workdir, checkpoint, .msgpack or authors' .pth file (default: --workdir).",
)
flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # After flag parsing and the huge-page re-exec below: --help and bad flags answer at once.
    from dynamixer_jax.train import cli, evaluate, initialize_distributed, train_and_evaluate  # noqa: PLC0415

    cli.setup_logging()
    initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    if FLAGS.mode == "train":
        if not FLAGS.workdir:
            raise app.UsageError("--workdir is required for training")
        return cli.run_reporting_errors(lambda: train_and_evaluate(config, FLAGS.workdir))
    weights = FLAGS.weights or FLAGS.workdir
    if not weights:
        raise app.UsageError("--mode=evaluate needs --weights (or --workdir)")
    return cli.run_reporting_errors(lambda: evaluate(config, weights))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    from dynamixer_jax.train.hugepages import ensure_hugepage_malloc

    ensure_hugepage_malloc()  # CPU training steps ~1.3-1.6x faster; a no-op elsewhere
    app.run(main)
