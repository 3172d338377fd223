"""Whole training runs through ``main.py``, as a user starts them: exact resume after SIGKILL,
SIGTERM preemption, 1 vs 8 devices (checkpoints crossing between them), and the NaN guard
(a checkpoint whose parameters diverge is set aside).

Every run is the quickstart (a small DynaMixer on the built-in digits) cut to a few dozen
steps with a loss logged at every step; each is a separate process, as on a real machine.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from main_runs import (
    STEPS,
    by_step,
    checkpoint_steps,
    command,
    environment,
    logged_steps,
    run,
    run_until,
    tensorboard_scalars,
)


def test_reference_run_logs_every_step_and_evaluates(uninterrupted):
    metrics = by_step(
        uninterrupted,
        fields=(
            "train_loss",
            "learning_rate",
            "eval_top1",
            "eval_top5",
            "eval_loss",
            "ema_eval_top1",
        ),
    )
    assert sorted(metrics) == list(range(1, STEPS + 1))
    assert all(np.isfinite(metrics[step]["train_loss"]) for step in metrics)
    final = metrics[STEPS]
    assert {"eval_top1", "eval_top5", "eval_loss", "ema_eval_top1"} <= set(final)
    assert 0.0 <= final["eval_top1"] <= final["eval_top5"] <= 1.0
    assert checkpoint_steps(uninterrupted) == [10, 20, 30]
    # TensorBoard has every scalar of metrics.jsonl, as float32 (its summaries' precision).
    logged = by_step(uninterrupted, fields=None)
    assert tensorboard_scalars(uninterrupted) == {
        step: {name: float(np.float32(value)) for name, value in values.items()}
        for step, values in logged.items()
    }
    assert (
        json.loads((Path(uninterrupted) / "config.json").read_text())["dataset"] == "sklearn_digits"
    )


# SIGKILL and restart: tests/test_reliability_checkpoints.py kills one run three times.


@pytest.mark.parametrize(
    "sig, says", [(signal.SIGTERM, "preempted"), (signal.SIGINT, "interrupted")]
)
def test_sigterm_or_ctrl_c_saves_the_current_step_and_exits_zero(
    sig, says, uninterrupted, digits_data_dir, tmp_path
):
    code, stderr = run_until(tmp_path, digits_data_dir, 6, sig)
    assert code == 0, stderr
    assert f"{says}: saved checkpoint" in stderr and "Traceback" not in stderr
    stopped = checkpoint_steps(tmp_path)
    # the step it stopped at (not a periodic one), with everything logged up to it; resuming
    # from a checkpoint is exact (the SIGKILL test above)
    assert len(stopped) == 1 and 6 <= stopped[0] < 10
    assert logged_steps(tmp_path) == list(range(1, stopped[0] + 1))
    assert by_step(tmp_path) == {
        step: values for step, values in by_step(uninterrupted).items() if step <= stopped[0]
    }


def test_ctrl_c_while_the_step_compiles_stops_cleanly(digits_data_dir, tmp_path):
    """Ctrl-C after the start line (data opening, state creation, compiling): one line, exit 0,
    no traceback; a second run starts normally."""
    env = environment(1)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # compile for real: the signal lands during it
    process = subprocess.Popen(
        command(tmp_path, digits_data_dir),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if " on sklearn_digits: " in line:  # the start line; then the state and the step
                process.send_signal(signal.SIGINT)
                break
        stderr = "".join(lines) + process.communicate(timeout=300)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupted before the first step: nothing new to save" in stderr or (
        "interrupted: saved checkpoint" in stderr  # the signal came after the first step
    ), stderr
    assert logged_steps(tmp_path)[:1] in ([], [1])


# 1 vs 8 devices: the same global batch, split 8 ways, reduced in another order. float32 sums
# in another order differ by a few ulps (~1e-7 relative) per step, and 30 steps of Adam do not
# amplify that much: the losses were seen to agree to 2.1e-7 relative (8 devices vs 1, and
# across a checkpoint moved between them). 2e-5 leaves a 100x margin and is still far below
# what a real difference (another batch, key or learning rate) makes: ~1e-2.
DEVICE_RTOL = 2e-5


def _assert_close_losses(workdir, reference, steps):
    got, want = by_step(workdir), by_step(reference)
    for step in steps:
        np.testing.assert_allclose(
            got[step]["train_loss"],
            want[step]["train_loss"],
            rtol=DEVICE_RTOL,
            err_msg=f"step {step}",
        )
        assert got[step]["learning_rate"] == pytest.approx(want[step]["learning_rate"], rel=1e-6)


def test_eight_devices_match_one_and_checkpoints_cross_device_counts(
    uninterrupted, digits_data_dir, tmp_path
):
    # The 1-device run's step-10 checkpoint, continued on 8 devices: steps 11-30 split 8 ways,
    # saving 8-device checkpoints at 20 and 30. (A start from scratch on several devices is
    # test_two_processes_train_like_one's; the same initial weights on 8 devices,
    # tests/test_sharding.py's.)
    eight = tmp_path / "one_then_eight"
    shutil.copytree(uninterrupted, eight)
    for step in (20, 30):
        shutil.rmtree(eight / "checkpoints" / str(step))
    # Steps of its own to compile (8 devices) and 20 to run: without most of XLA's
    # optimisations (51 -> 46 s alone; the losses still agree to 1.1e-7 relative).
    code, stderr = run(eight, digits_data_dir, devices=8, optimised=False)
    assert code == 0, stderr
    assert f"resumed from checkpoint {eight / 'checkpoints'}/10" in stderr
    assert "8 cpu devices" in stderr
    assert checkpoint_steps(eight) == [10, 20, 30]
    _assert_close_losses(eight, uninterrupted, range(11, STEPS + 1))

    # The other way: the 8-device step-20 checkpoint, continued on 1 device.
    crossed = tmp_path / "eight_then_one"
    shutil.copytree(eight, crossed)
    shutil.rmtree(crossed / "checkpoints" / "30")
    code, stderr = run(crossed, digits_data_dir, devices=1)
    assert code == 0, stderr
    assert f"resumed from checkpoint {crossed / 'checkpoints'}/20" in stderr
    assert "1 cpu device " in stderr
    _assert_close_losses(crossed, eight, range(21, STEPS + 1))
    _assert_close_losses(crossed, uninterrupted, range(21, STEPS + 1))


def test_divergence_sets_aside_the_checkpoint_that_diverges_and_a_rerun_resumes(
    uninterrupted, digits_data_dir, tmp_path
):
    """Issue 11's case: with a checkpoint at every step, the last one saved before the NaN holds
    parameters whose loss is the NaN. It must not be named as good nor resumed from."""
    workdir = tmp_path / "diverging"
    shutil.copytree(uninterrupted, workdir)
    code, stderr = run(
        workdir,
        digits_data_dir,
        "--config.num_train_steps=40",
        "--config.checkpoint_every_steps=1",
        "--config.learning_rate=1e30",
        "--config.warmup_epochs=0",
        optimised=False,  # another schedule: steps of its own to compile, and a few to run
    )
    assert code == 3, stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr
    assert "Traceback" not in stderr
    message = error_lines[0]
    match = re.search(r"training loss is (\S+) .* at step (\d+);", message)
    assert match, message
    assert match.group(1) in ("nan", "inf", "-inf")
    failed = int(match.group(2))
    assert STEPS + 1 < failed <= 40  # step 31 starts from the good step-30 parameters
    # Step `failed`'s loss came from the parameters of step `failed - 1`: that checkpoint moved.
    assert f"checkpoint {failed - 1}, whose parameters gave that, was moved" in message
    assert f"the last good checkpoint, step {failed - 2}, is kept" in message
    assert sorted(os.listdir(workdir / "diverged")) == [str(failed - 1)]
    assert max(checkpoint_steps(workdir)) == failed - 2
    # The advice does not loop: a re-run with the sane learning rate resumes from the kept
    # checkpoint, whose parameters gave a finite loss, and trains on.
    code, stderr = run(
        workdir, digits_data_dir, f"--config.num_train_steps={failed + 1}", optimised=False
    )
    assert code == 0, stderr
    assert f"resumed from checkpoint {workdir / 'checkpoints'}/{failed - 2}" in stderr
    resumed = by_step(workdir)
    assert all(np.isfinite(resumed[step]["train_loss"]) for step in range(failed - 1, failed + 2))


# (tests/test_train_lib.py checks every such message in-process; these check the command line)
@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.image_size=30", "image_size 30"),
        ("--config.batch_size=60", "batch_size 60 is not divisible by the 8 devices"),
    ],
)
def test_user_errors_are_one_line_before_compiling(override, expected, digits_data_dir, tmp_path):
    started = time.monotonic()
    code, stderr = run(tmp_path, digits_data_dir, override, devices=8, timeout=120)
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "checkpoints").exists()
    assert time.monotonic() - started < 60


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """The digits as an ImageNet-style folder of PNGs (train/<class>, val/<class>): folder
    datasets give every process count the same global batches (TFDS splits are read per process,
    so there the batches depend on how many processes read them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits_folder")
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = "val" if index % 5 == 0 else "train"
        pixels = np.repeat((image / 16 * 255).astype(np.uint8)[..., None], 3, axis=-1)
        (root / split / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((32, 32), Image.BICUBIC).save(
            root / split / str(label) / f"{index}.png"
        )
    return root


def test_two_processes_train_like_one(digits_folder, digits_data_dir, tmp_path):
    # 2 processes x 2 devices (jax.distributed over gloo, each process reading its half of
    # every batch) against 1 process x 4 devices: the same 4-device mesh, the same numbers
    # (seen: 2.1e-7 relative; the tolerance is the one of the device test above). Each of the
    # three processes compiles steps of its own and runs 8 of them: without most of XLA's
    # optimisations, which changes no value.
    steps = [
        "--config.num_train_steps=8",
        f"--config.dataset={digits_folder}",
        "--config.eval_split=validation",
    ]
    single = tmp_path / "single"
    code, stderr = run(single, digits_data_dir, *steps, devices=4, optimised=False)
    assert code == 0, stderr
    shared = tmp_path / "two"
    processes = [
        subprocess.Popen(
            command(
                shared,
                digits_data_dir,
                *steps,
                f"--coordinator_address=127.0.0.1:{29000 + os.getpid() % 1000}",
                "--num_processes=2",
                f"--process_id={index}",
            ),
            env=environment(2, optimised=False),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    outputs = [process.communicate(timeout=400)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "4 cpu devices (cpu) in 2 processes" in outputs[0]
    got, want = by_step(shared), by_step(single)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step in want:
        for key in ("train_loss", "eval_loss", "ema_eval_loss"):
            if key in want[step]:
                np.testing.assert_allclose(
                    got[step][key],
                    want[step][key],
                    rtol=DEVICE_RTOL,
                    err_msg=f"{key} at step {step}",
                )
    assert got[8]["eval_top1"] == want[8]["eval_top1"]
