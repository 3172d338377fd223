"""Train or evaluate DynaMixer.

    python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
    python main.py --config=configs/imagenet.py:dynamixer_s --workdir=$WORKDIR \
        --config.batch_size=1024
    python main.py --config=configs/imagenet.py:dynamixer_s --mode=evaluate \
        --weights=dynamixer_s.pth.tar

Running the same command again with a workdir that holds checkpoints resumes from the latest;
a workdir trains one run at a time (a second run on it stops, naming the one that holds it).
Several processes (one per host): give every one ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``; Cloud TPU pods and SLURM jobs are detected without them.
Everything here is a call into ``dynamixer_jax.train`` that a notebook can make too.
"""

import os
import re
import sys

# Before anything imports TensorFlow (the input pipeline): its C++ start-up lines (INFO notices,
# the CPU-instruction notice) stay quiet, and so does the oneDNN notice, which only
# TF_ENABLE_ONEDNN_OPTS=0 silences (the input pipeline runs no op oneDNN speeds up: decoding,
# crops, resizes and RandAugment's integer image operations). Either can be set otherwise.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (see configs/): FILE.py, or FILE.py:ARGUMENT for get_config(ARGUMENT). Any "
    "field can be set with --config.FIELD=VALUE after it, e.g. --config.batch_size=256, "
    "--config.mixup.cutmix_alpha=0, --config.model_overrides.layers='(2, 2)', "
    "--config.half_precision (true), --config.num_train_steps=None (unset).",
    lock_config=True,
)
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
flags.DEFINE_integer(
    "join_timeout",
    120,  # parallel.JOIN_TIMEOUT (not imported here: it would import JAX before the re-exec)
    "Multi-process: seconds to wait for every process to join; past it, this one stops with a "
    "line saying so. A process that fails on its flags tells the others, who stop at once.",
)


def _usage_error(args) -> str | None:
    """What is wrong with the flags (beyond what absl and ``cli.parse_flags`` check), or None."""
    if len(args) > 1:  # e.g. "--config.half_precision true": bare, a bool flag is true
        before = sys.argv[sys.argv.index(args[1]) - 1] if args[1] in sys.argv else ""
        hint = (
            f"; a value follows '=': {before}={args[1]}"
            if re.fullmatch(r"--?\w[^=]*", before)
            else ""
        )
        return f"unexpected arguments: {' '.join(args[1:])} (flags start with --{hint})"
    if FLAGS.mode == "train" and not FLAGS.workdir:
        return "--workdir is required for training (where checkpoints and metrics go)"
    if FLAGS.mode == "evaluate" and not (FLAGS.weights or FLAGS.workdir):
        return "--mode=evaluate needs --weights=PATH (or --workdir=WORKDIR)"
    if FLAGS.coordinator_address is not None:
        count, index = FLAGS.num_processes, FLAGS.process_id
        if count is None or index is None:
            return "--coordinator_address needs --num_processes=N and --process_id=I too"
        if not 0 <= index < count:
            return f"--process_id={index} must be from 0 to --num_processes={count} less one"
    return None


def main(args):
    from dynamixer_jax.train import process  # noqa: PLC0415 (after the huge-page re-exec)

    problem = _usage_error(args)
    if problem is None:
        process.setup_logging()
    # With several processes, all join here, failed or not, and stop together if one failed.
    code = process.start_together(
        problem,
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        FLAGS.join_timeout,
    )
    return code or process.run_reporting_errors(lambda: _run(CONFIG.value))


def _run(config):
    """The run the flags ask for, once the config is read and every process has joined."""
    from dynamixer_jax.train import evaluate, train_and_evaluate  # noqa: PLC0415

    if FLAGS.mode == "train":
        return train_and_evaluate(config, FLAGS.workdir)
    return evaluate(config, FLAGS.weights or FLAGS.workdir)


def _hugepages():
    """``dynamixer_jax/train/hugepages.py`` by its path: importing it as a module of the package
    would import JAX (~1 s) in the process that the re-exec replaces."""
    import importlib.util  # noqa: PLC0415

    package = importlib.util.find_spec("dynamixer_jax").submodule_search_locations[0]
    path = os.path.join(package, "train", "hugepages.py")
    spec = importlib.util.spec_from_file_location("_dynamixer_hugepages", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_FINISHED = []  # set once main has returned 0: the run's work is done and closed


def _main_ending_on_error(args):
    """``main``, and on an error nothing after its line: the process ends at once."""
    from dynamixer_jax.train import process  # noqa: PLC0415

    code = main(args)
    if code:
        process.exit_at_once(code)
    _FINISHED.append(True)
    return code


def _end_without_finalising():
    """The last exit handler of a run that finished: every library's own exit handler has run
    (JAX's, a multi-process run's leaving, TensorFlow's temporary files); what is left is the
    interpreter's finalisation of TensorFlow and JAX, ~2 s of a CPU for nothing. A run that
    stopped on an exception is finalised as usual."""
    if _FINISHED:
        from dynamixer_jax.train import process  # noqa: PLC0415

        process.exit_at_once(0)


if __name__ == "__main__":
    import atexit

    atexit.register(_end_without_finalising)  # the first registered: it runs last
    flags.mark_flags_as_required(["config"])
    _hugepages().ensure_hugepage_malloc()  # CPU training steps ~1.3-1.6x faster; a no-op elsewhere
    from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

    prefer_memory_saving_scheduler()  # before any JAX computation; read by XLA:CPU alone
    # Keras stays out of this process: `import tensorflow` loads Keras (and scikit-learn with
    # it) for SavedModel registrations unless it cannot be imported, and nothing a run does
    # needs it (tf.data, tf.summary, TFDS): every start, and each resume, ~1.1 s sooner.
    sys.modules.setdefault("keras", None)
    from dynamixer_jax.train.cli import parse_flags

    app.run(_main_ending_on_error, flags_parser=parse_flags)
