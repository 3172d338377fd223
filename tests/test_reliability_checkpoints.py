"""Checkpoints that survive damage, full disks and kills, end to end through ``main.py``.

Each test starts from a copy of one uninterrupted 30-step quickstart run (checkpoints 10, 20,
30), damages or interrupts it as a cluster or a user would, and checks what the user sees (exit
code, one-line messages, no traceback), that the resumed run logs exactly the uninterrupted
run's numbers, and that no file of a checkpoint was deleted.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from conftest import MICRO_ARCH, REPO
from main_runs import STEPS, by_step, checkpoint_steps, command, environment, run

from dynamixer_jax.model.variants import create_model, init_variables
from dynamixer_jax.train import parallel
from dynamixer_jax.train.checkpoints import Checkpoints
from dynamixer_jax.train.state import create_train_state
from dynamixer_jax.train.weights import load_param_sets


def _copy(reference, tmp_path) -> Path:
    workdir = tmp_path / "workdir"
    shutil.copytree(reference, workdir)
    return workdir


def _files(workdir) -> set[str]:
    """Every file under checkpoints/, relative to it."""
    root = Path(workdir) / "checkpoints"
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def _assert_nothing_deleted(before: set[str], workdir) -> None:
    """Every file of ``before`` is still there, in its checkpoint or in the checkpoint's
    ``<step>.unreadable`` directory (where a save of the same step moved a damaged one)."""
    after = _files(workdir)
    for name in before:
        step, _, rest = name.partition("/")
        assert name in after or f"{step}.unreadable/{rest}" in after, name


def _truncate(directory) -> None:
    for path in Path(directory).rglob("*"):
        if path.is_file():
            path.write_bytes(b"")


def _warnings(stderr: str, what: str) -> list[str]:
    return [line for line in stderr.splitlines() if what in line]


def _assert_clean(stderr: str) -> None:
    """No traceback, no runtime warning, nothing from Orbax's or asyncio's internals."""
    for noise in (
        "Traceback",
        "orbax",
        "Event loop is closed",
        "never retrieved",
        "never awaited",
        "RuntimeWarning",
    ):
        assert noise not in stderr, stderr


def _evaluate(workdir, data_dir):
    return run(workdir, data_dir, "--mode=evaluate")


def test_damaged_latest_checkpoint_is_skipped_by_training_and_evaluation(
    uninterrupted, digits_data_dir, tmp_path
):
    workdir = _copy(uninterrupted, tmp_path)
    _truncate(workdir / "checkpoints" / "30")
    before = _files(workdir)

    code, stderr = _evaluate(workdir, digits_data_dir)
    assert code == 0, stderr
    _assert_clean(stderr)
    (warning,) = _warnings(stderr, "cannot be read")
    assert f"checkpoint {workdir}/checkpoints/30 cannot be read (" in warning
    assert "skipped, left in place" in warning
    assert "eval_top1" in stderr

    code, stderr = run(workdir, digits_data_dir)
    assert code == 0, stderr
    _assert_clean(stderr)
    assert len(_warnings(stderr, "cannot be read")) == 1
    assert f"resumed from checkpoint {workdir}/checkpoints/20" in stderr
    assert by_step(workdir) == by_step(uninterrupted)  # exact: steps 21-30 computed again
    assert checkpoint_steps(workdir) == [10, 20, 30]
    _assert_nothing_deleted(before, workdir)


def test_damaged_metrics_of_an_older_checkpoint_block_nothing(
    uninterrupted, digits_data_dir, tmp_path
):
    # Orbax reads every checkpoint's metrics when it starts (best-checkpoint tracking): a damaged
    # file in checkpoint 10 used to make the whole workdir unusable.
    workdir = _copy(uninterrupted, tmp_path)
    (workdir / "checkpoints" / "10" / "metrics" / "metrics").write_text('{"eval_top1": 0.')
    shutil.rmtree(workdir / "checkpoints" / "30")  # so that the run below saves (and prunes)
    before = _files(workdir)

    code, stderr = _evaluate(workdir, digits_data_dir)
    assert code == 0, stderr
    _assert_clean(stderr)
    (warning,) = _warnings(stderr, "cannot be read")
    assert f"{workdir}/checkpoints/10 cannot be read (metrics/metrics: JSONDecodeError" in warning

    # keep_checkpoints=1: saving step 30 prunes step 20 (Orbax's policy, as asked), never the
    # damaged step 10, which Orbax no longer sees.
    code, stderr = run(workdir, digits_data_dir, "--config.keep_checkpoints=1")
    assert code == 0, stderr
    _assert_clean(stderr)
    assert f"resumed from checkpoint {workdir}/checkpoints/20" in stderr
    assert by_step(workdir) == by_step(uninterrupted)
    assert checkpoint_steps(workdir) == [10, 30]
    _assert_nothing_deleted({name for name in before if not name.startswith("20/")}, workdir)


def test_every_checkpoint_damaged(uninterrupted, digits_data_dir, tmp_path):
    workdir = _copy(uninterrupted, tmp_path)
    for step in (10, 20, 30):
        _truncate(workdir / "checkpoints" / str(step) / "state")
    before = _files(workdir)

    code, stderr = _evaluate(workdir, digits_data_dir)
    assert code == 2, stderr
    _assert_clean(stderr)
    assert len(_warnings(stderr, "cannot be read")) == 3
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: no checkpoint in {workdir}/checkpoints can be read (steps 10, 20, 30 are "
        "damaged); train again or give other weights"
    ]

    code, stderr = run(workdir, digits_data_dir)
    assert code == 0, stderr
    _assert_clean(stderr)
    assert len(_warnings(stderr, "cannot be read")) == 3
    assert "training starts from scratch" in stderr
    assert by_step(workdir) == by_step(uninterrupted)
    # each new save took the name of a damaged checkpoint: that one was moved aside, whole
    assert len(_warnings(stderr, "moved unreadable checkpoint")) == 3
    assert checkpoint_steps(workdir) == [10, 20, 30]
    _assert_nothing_deleted(before, workdir)


# Writes beyond this many bytes fail (RLIMIT_FSIZE, EFBIG: "File too large"), as on a full disk,
# so the save of checkpoint 30 fails every time: at one of the array files, or else at its
# _METADATA (~104 KiB, fixed by the state's tree), written after them. Orbax spreads the ~1.1 MB
# of arrays over a number of files that depends on timing (4-5 of up to 600 KB here, but once,
# on a slow machine, all under 256 KiB, the limit before, and that save succeeded).
# metrics.jsonl and the TensorBoard file (a few KB) are written; the compiled steps come from
# the cache, which is only read.
FILE_SIZE_LIMIT = 96 << 10

# The limit is set by a fresh, single-threaded interpreter that then becomes the run (exec keeps
# resource limits; Python ignores SIGXFSZ, so an oversized write fails instead of killing it). A
# ``preexec_fn`` would run Python in a fork of this multithreaded JAX process, where it can
# deadlock.
_WITH_FILE_SIZE_LIMIT = [
    sys.executable,
    "-c",
    "import os, resource, sys; "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(
    uninterrupted, digits_data_dir, tmp_path
):
    workdir = _copy(uninterrupted, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "30")  # the run resumes at 20 and saves 30
    before = _files(workdir)
    result = subprocess.run(
        [*_WITH_FILE_SIZE_LIMIT, *command(workdir, digits_data_dir)],
        env=environment(1),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 2, result.stderr
    _assert_clean(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (
        f"error: saving checkpoint 30 in {workdir}/checkpoints failed (File too large); the "
        f"latest intact checkpoint is {workdir}/checkpoints/20; free space (or fix the cause) "
        "and run the same command to resume from it"
    )
    assert checkpoint_steps(workdir) == [10, 20]
    _assert_nothing_deleted(before, workdir)

    code, stderr = run(workdir, digits_data_dir)  # the same command, with space again
    assert code == 0, stderr
    assert f"resumed from checkpoint {workdir}/checkpoints/20" in stderr
    assert by_step(workdir) == by_step(uninterrupted)
    assert checkpoint_steps(workdir) == [10, 20, 30]


# ---- SIGKILL at random steps


KILL_SEED = 20261126
SAVE_EVERY = 5  # more saves than the reference's (which does not change the numbers)


def _start(workdir, data_dir) -> subprocess.Popen:
    return subprocess.Popen(
        command(workdir, data_dir, f"--config.checkpoint_every_steps={SAVE_EVERY}"),
        env=environment(1),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_step(process: subprocess.Popen, step: int) -> None:
    """SIGKILL once the run's progress line for ``step`` is out (each step logs one)."""
    for line in process.stderr:
        if f" step {step}/{STEPS} " in line:
            process.kill()
            process.wait(timeout=60)
            return
    raise AssertionError(f"the run ended before step {step} (exit {process.wait()})")


def _kill_during_save(process: subprocess.Popen, workdir) -> int:
    """SIGKILL while an asynchronous save is being written (its temporary directory exists);
    returns that save's step."""
    # From the first step on: Orbax has removed the temporary directory of a save killed before.
    for line in process.stderr:
        if f"/{STEPS} " in line:
            break
    checkpoints = Path(workdir) / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        saving = [name for name in os.listdir(checkpoints) if ".orbax-checkpoint-tmp" in name]
        if saving:
            process.kill()
            process.wait(timeout=60)
            return int(saving[0].split(".")[0])
        assert process.poll() is None, "the run ended without a save in flight"
        time.sleep(0.002)
    raise AssertionError("no save started")


def test_sigkill_at_random_steps_and_during_a_save_then_restart_logs_exactly_the_same_losses(
    uninterrupted, digits_data_dir, tmp_path
):
    reference = by_step(uninterrupted)
    rng = np.random.default_rng(KILL_SEED)
    workdir = tmp_path / "killed"
    killed_during_save = None
    # Three kills: at a random step, during a save, at a random step again (each restart is
    # a whole main.py run; five kills took 63 s of the suite, every one proving the same thing).
    for kill in range(3):
        resumed = max(checkpoint_steps(workdir), default=0) if workdir.exists() else 0
        process = _start(workdir, digits_data_dir)
        try:
            if kill == 1:  # while the next checkpoint is being written
                killed_during_save = _kill_during_save(process, workdir)
                assert killed_during_save > resumed
                assert killed_during_save not in checkpoint_steps(workdir)  # never half there
            else:
                _kill_after_step(process, int(rng.integers(resumed + 1, STEPS)))
        finally:
            if process.poll() is None:
                process.kill()
            process.stderr.close()
        assert process.returncode == -signal.SIGKILL
        # Every step this run (resumed from its checkpoint) logged: the uninterrupted numbers.
        for step, values in by_step(workdir).items():
            assert values == {key: reference[step][key] for key in values}, step
    assert killed_during_save is not None
    code, stderr = run(workdir, digits_data_dir, f"--config.checkpoint_every_steps={SAVE_EVERY}")
    assert code == 0, stderr
    _assert_clean(stderr)
    assert "resumed from checkpoint" in stderr
    # float equality: every step, whichever run logged it, has the never-killed run's numbers
    assert by_step(workdir) == reference


# ---- evaluation reads a checkpoint once


def test_evaluation_restores_params_and_ema_once_without_the_optimizer_state(tmp_path, monkeypatch):
    model = create_model("dynamixer_s", num_classes=7, image_size=16, **MICRO_ARCH)
    params = jax.device_get(init_variables(model, jax.random.key(3))["params"])
    state = create_train_state(params, optax.adamw(1e-3), seed=0, use_ema=True)
    state = state.replace(ema_params=jax.tree_util.tree_map(lambda x: x + 1, params))
    with Checkpoints(str(tmp_path / "checkpoints"), asynchronous=False) as checkpoints:
        checkpoints.save(5, state, {"seed": 0})
    restored_parts = []
    restore = ocp.CheckpointManager.restore

    def counting_restore(self, step, *args, **kwargs):
        restored_parts.append(sorted(kwargs["args"]["state"].item))
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", counting_restore)
    sets = load_param_sets(str(tmp_path), parallel.make_mesh())  # what evaluate() calls
    assert restored_parts == [["ema_params", "params"]]  # one restore, no optimizer state
    assert sorted(sets) == ["ema", "raw"]
    for name, want in (("raw", state.params), ("ema", state.ema_params)):
        for got_leaf, want_leaf in zip(
            jax.tree_util.tree_leaves(sets[name]), jax.tree_util.tree_leaves(want), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(want_leaf))
