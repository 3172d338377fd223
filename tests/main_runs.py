"""``main.py`` runs as a user starts them, for the end-to-end tests: the quickstart (a small
DynaMixer on the built-in digits) cut to a few dozen steps and to one layer per stage at half the
width, with a loss logged at every step, each a separate process, and readers of what a run
leaves in its workdir.

Every run shares one JAX persistent compilation cache with the whole test session (both pytest
workers): after the first, a run skips compiling its train and eval steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, SMALL_QUICKSTART, shared_once, xla_flags

STEPS = 30
SHORT_RUN = [
    f"--config.num_train_steps={STEPS}",
    # the small quickstart: a run ~6 s shorter for the batch, and a run whose steps come from
    # the cache 22.6 -> 17.2 s for the size (the mean of three each, alternated)
    *(f"--config.{name}={value}" for name, value in SMALL_QUICKSTART.items()),
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=10",
    "--config.eval_every_steps=1000",
]
# Quantities that are a pure function of the state, the batch and the step.
EXACT_FIELDS = (
    "train_loss",
    "learning_rate",
    "grad_norm",
    "eval_top1",
    "eval_loss",
    "ema_eval_top1",
    "ema_eval_loss",
)


def compilation_cache() -> dict:
    """Environment for a process that uses the session's shared compilation cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(shared_once("jax_cache", lambda path: None)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def environment(devices: int, optimised: bool = True) -> dict:
    """A run's environment: CPU only, ``devices`` simulated devices, the shared cache.

    ``optimised``: XLA's full optimisation, as a user runs it (tests/conftest.py turns most of it
    off for the tests' own processes). Right for runs whose steps come from the cache; a run
    that compiles steps no other run shares and runs few of them is quicker without.
    """
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=xla_flags(devices),
        JAX_DISABLE_MOST_OPTIMIZATIONS="0" if optimised else "1",
        **compilation_cache(),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def command(workdir, data_dir, *extra) -> list[str]:
    return [
        sys.executable,
        str(REPO / "main.py"),
        f"--config={REPO / 'configs/quickstart.py'}",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *SHORT_RUN,
        *extra,
    ]


def run(workdir, data_dir, *extra, devices: int = 1, optimised: bool = True, timeout: float = 400):
    """One ``main.py`` run to completion: (return code, stderr)."""
    result = subprocess.run(
        command(workdir, data_dir, *extra),
        env=environment(devices, optimised),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stderr


def run_until(workdir, data_dir, step: int, sig: int, *extra, timeout: float = 400):
    """Start a run, send ``sig`` once metrics.jsonl shows ``step``; (return code, stderr)."""
    process = subprocess.Popen(
        command(workdir, data_dir, *extra),
        env=environment(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while logged_steps(workdir)[-1:] < [step]:
            assert process.poll() is None, f"run ended before step {step}: {process.stderr.read()}"
            assert time.monotonic() < deadline, "run too slow"
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr


def records(workdir) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def logged_steps(workdir) -> list[int]:
    try:
        return [record["step"] for record in records(workdir) if "train_loss" in record]
    except json.JSONDecodeError:  # a line being written
        return []


def by_step(workdir, fields=EXACT_FIELDS) -> dict[int, dict]:
    """The records of metrics.jsonl merged per step: ``fields`` of them (None: all)."""
    merged: dict[int, dict] = {}
    for record in records(workdir):
        merged.setdefault(record["step"], {}).update(
            {
                key: value
                for key, value in record.items()
                if key != "step" and (fields is None or key in fields)
            }
        )
    return merged


def tensorboard_scalars(workdir) -> dict[int, dict[str, float]]:
    """The scalars of a run's TensorBoard event files, by step, read with TensorFlow."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[int, dict[str, float]] = {}
    for path in sorted(Path(workdir).glob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                scalars.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
    return scalars


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(name) for name in os.listdir(Path(workdir) / "checkpoints") if name.isdigit())


def uninterrupted_run(data_dir) -> Path:
    """The reference: STEPS steps in one go on one device (checkpoints 10, 20 and 30), made once
    per test session and only read (tests copy it before they change anything)."""

    def make(workdir):
        code, stderr = run(workdir, data_dir)
        assert code == 0, stderr
        assert checkpoint_steps(workdir) == [10, 20, 30]

    return shared_once("uninterrupted", make)
