"""What a user sees at the command line when they get something wrong (issue 11): one line,
``error: ...``, exit 2, before TensorFlow is imported; and the workdir lock, end to end through
``main.py`` as separate processes.

The bad-input cases run ``main.py``'s own entry (``cli.parse_flags``, then the function
``app.run`` calls) one after another in one fresh process of their own (:func:`bad_inputs`):
each its stderr, its exit code (what ``process.exit_at_once`` was asked to end the process with)
and whether TensorFlow had been imported by then (the config is read and checked before the
input pipeline, and so TensorFlow, is imported). Three cases also run as processes of their
own, to see the real process end: exit 2 with its one line. The lock test starts a real run,
kills it, and starts another to show that a killed run's lock does not block (and that
TensorFlow's C++ start-up lines stay off the screen).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
from absl import flags
from conftest import MICRO_ARCH, REPO
from ml_collections import config_flags

from dynamixer_jax.errors import CheckpointError, ConfigError
from dynamixer_jax.train import cli, process
from dynamixer_jax.train.workdir_lock import WorkdirLock

QUICKSTART = f"--config={REPO / 'configs' / 'quickstart.py'}"
# Runs main.py as __main__ (the huge-page re-exec included: it re-runs this same command) and
# says on stdout, at exit, whether TensorFlow (and Keras) was imported: at a normal exit, and at the
# immediate one (os._exit) that ends a run after its error line.
TRACE_TENSORFLOW = (
    "import atexit, os, runpy, sys\n"
    "def report():\n"
    "    print('tensorflow imported:', 'tensorflow' in sys.modules, flush=True)\n"
    "    print('keras imported:', sys.modules.get('keras') is not None, flush=True)\n"
    "atexit.register(report)\n"
    "exit_now = os._exit\n"
    "os._exit = lambda code: (report(), exit_now(code))\n"
    f"sys.argv = [{str(REPO / 'main.py')!r}, *sys.argv[1:]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
# TensorFlow's (and absl's C++) log lines: "I0000 00:00:... port.cc:153] ...", and the notices.
CXX_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|oneDNN|cpu_feature")
MICRO = [f"--config.model_overrides.{field}={value}" for field, value in MICRO_ARCH.items()]
MICRO.append("--config.image_size=16")


def _environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "TF_ENABLE"))}
    env.update(JAX_PLATFORMS="cpu", **extra)  # main.py quiets TensorFlow itself
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


# main.py's entry run in-process for each of a list of command lines, in one fresh interpreter:
# its flags defined once, reset before each case (the config overrides' flags, which config_flags
# defines as it parses, removed; sys.argv the case's, where config_flags finds the overrides);
# ``process.exit_at_once`` (which would end the process with os._exit) raises instead, so that the next case can run; file descriptor 2 is a
# file of each case's own, so that what the case printed, by Python or by C++, is all there.
# Prints one JSON list: per case its exit code, its stderr and whether TensorFlow was imported.
CASES_IN_ONE_PROCESS = (
    "import json, os, runpy, sys, tempfile\n"
    "from absl import flags\n"
    "from dynamixer_jax.train import cli, process\n"
    f"path = {str(REPO / 'main.py')!r}\n"
    "main = runpy.run_path(path, run_name='main_for_tests')\n"
    "class Ended(BaseException):\n"
    "    pass\n"
    "def exit_at_once(code):\n"
    "    sys.stdout.flush(); sys.stderr.flush()\n"
    "    raise Ended(code)\n"
    "process.exit_at_once = exit_at_once\n"
    "results = []\n"
    "for args in json.loads(sys.argv[1]):\n"
    "    flags.FLAGS.unparse_flags()\n"
    "    for name in [name for name in flags.FLAGS if name.startswith('config.')]:\n"
    "        delattr(flags.FLAGS, name)\n"
    "    sys.argv = [path, *args]\n"
    "    sys.stdout.flush(); sys.stderr.flush()\n"
    "    saved = os.dup(2)\n"
    "    with tempfile.TemporaryFile() as err:\n"
    "        os.dup2(err.fileno(), 2)\n"
    "        try:\n"
    "            code = main['_main_ending_on_error'](cli.parse_flags(sys.argv))\n"
    "        except Ended as ended:\n"
    "            code = ended.args[0]\n"
    "        finally:\n"
    "            sys.stderr.flush()\n"
    "            os.dup2(saved, 2)\n"
    "            os.close(saved)\n"
    "        err.seek(0)\n"
    "        stderr = err.read().decode()\n"
    "    tensorflow = 'tensorflow' in sys.modules\n"
    "    results.append({'code': code, 'stderr': stderr, 'tensorflow_imported': tensorflow})\n"
    "print(json.dumps(results))\n"
)


def _main(*args, timeout=120, **env):
    return subprocess.run(
        [sys.executable, "-c", TRACE_TENSORFLOW, *args],
        env=_environment(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(result) -> str:
    """The single stderr line of a run that failed as a user error should (exit 2)."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


BAD_INPUTS = [
    (["--config.batch_sise=32"], ["batch_sise", "did you mean batch_size?"]),
    (["--config.mixup.cutmix_alpa=0"], ["did you mean mixup.cutmix_alpha?"]),
    (["--config.batch_size=abc"], ["--config.batch_size=abc", "an integer"]),
    (["--config.model_overrides.layers=(2 2)"], ["layers", "tuple"]),
    (["--config.half_precision", "true"], ["--config.half_precision=true"]),
    (["--config=configs/nope.py"], ["no config file configs/nope.py", "quickstart.py"]),
    (["--config=configs/imagenet.py:xyz"], ["no such variant", "dynamixer_s"]),
    (["--config=configs/quickstart.py:xyz"], ["takes no ':ARGUMENT'"]),
    (["--config.image_size=0"], ["image_size 0 must be positive", "multiple of 8"]),
    (["--config.image_size=-8"], ["image_size -8 must be positive"]),
    (["--config.image_size=30"], ["multiple of 8", "--config.image_size=32"]),
    (["--config.batch_size=0"], ["batch_size 0: must be positive"]),
    (["--config.num_train_steps=-5"], ["num_train_steps -5: must be positive"]),
    (["--config.learning_rate=-1"], ["learning_rate must be positive"]),
    (["--config.drop_path_rate=1.5"], ["drop_path_rate must be in [0, 1)"]),
    (["--config.crop_fraction=0"], ["crop_fraction must be in (0, 1]"]),
    (["--mode=fit"], ["--mode", "--helpfull"]),
]
MISSING_OR_EXTRA = [
    ([QUICKSTART], "--workdir is required for training"),
    ([QUICKSTART, "--workdir=/tmp/x", "extra"], "unexpected arguments: extra"),
    ([QUICKSTART, "--mode=evaluate"], "--mode=evaluate needs --weights=PATH"),
]


def _bad_input_command(args, workdir) -> list[str]:
    config = [] if any(arg.startswith("--config=") for arg in args) else [QUICKSTART]
    return [*config, f"--workdir={workdir}", "--config.num_train_steps=20", *args]


@pytest.fixture(scope="module")
def in_one_process(tmp_path_factory):
    """Every in-process case of this module, run once (:data:`CASES_IN_ONE_PROCESS`): a dict
    from the case (a tuple: its test's name, then its arguments) to its result (returncode,
    stderr, tensorflow_imported), and the folder of the cases' files."""
    root = tmp_path_factory.mktemp("in_one_process")
    (root / "text.msgpack").write_text("hello")
    cases = {}
    for index, (args, _) in enumerate(BAD_INPUTS):
        cases[("bad", *args)] = _bad_input_command(args, root / f"bad_{index}" / "w")
    for args, _ in MISSING_OR_EXTRA:
        cases[("usage", *args)] = args
    cases[("weights",)] = [QUICKSTART, "--mode=evaluate", f"--weights={root / 'text.msgpack'}"]
    result = subprocess.run(
        [sys.executable, "-c", CASES_IN_ONE_PROCESS, json.dumps(list(cases.values()))],
        env=_environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(outputs) == len(cases)
    results = {
        case: types.SimpleNamespace(
            returncode=output["code"],
            stderr=output["stderr"],
            tensorflow_imported=output["tensorflow_imported"],
        )
        for case, output in zip(cases, outputs)
    }
    return results, root


@pytest.mark.parametrize("args, expected", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_before_tensorflow(args, expected, in_one_process):
    results, root = in_one_process
    workdir = root / f"bad_{BAD_INPUTS.index((args, expected))}" / "w"
    result = results[("bad", *args)]
    line = _one_error_line(result)
    assert all(part in line for part in expected), line
    assert result.tensorflow_imported is False
    assert not workdir.exists()  # a config error leaves nothing behind


@pytest.mark.parametrize("args, expected", [BAD_INPUTS[-1], BAD_INPUTS[0]])
def test_bad_input_ends_a_process_of_its_own_with_exit_2_and_one_line(
    args, expected, in_one_process, tmp_path
):
    # As above, with the process really ending (os._exit): a flag absl rejects (in
    # cli.parse_flags) and a config error (in main), each main.py as __main__ in a process of
    # its own. Its line is the one the in-process case printed.
    workdir = tmp_path / "w"
    result = _main(*_bad_input_command(args, workdir))
    line = _one_error_line(result)
    assert all(part in line for part in expected), line
    assert line == _one_error_line(in_one_process[0][("bad", *args)])
    assert "tensorflow imported: False" in result.stdout, result.stdout
    assert not workdir.exists()


def test_a_workdir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = _main(QUICKSTART, f"--workdir={tmp_path / 'file' / 'wd'}")
    line = _one_error_line(result)
    assert f"cannot create workdir {tmp_path / 'file' / 'wd'} (Not a directory)" in line
    assert "tensorflow imported: False" in result.stdout


@pytest.mark.parametrize("args, expected", MISSING_OR_EXTRA)
def test_missing_or_extra_arguments_are_one_line(args, expected, in_one_process):
    line = _one_error_line(in_one_process[0][("usage", *args)])
    assert expected in line, line


def test_unreadable_weights_to_evaluate_are_one_line_before_tensorflow(in_one_process):
    result = in_one_process[0][("weights",)]
    line = _one_error_line(result)
    assert "is not a readable .msgpack checkpoint" in line
    assert result.tensorflow_imported is False


def test_helpfull_still_lists_the_flags():
    result = _main("--helpfull")
    for flag in ("--config:", "--workdir:", "--mode:", "--config.FIELD=VALUE"):
        assert flag in result.stdout + result.stderr


# ---- the overrides, read as ml_collections' config_flags read them


@pytest.mark.parametrize(
    "args, field, value",
    [
        (["--config.batch_size=32"], "batch_size", 32),
        (["--config.batch_size", "32"], "batch_size", 32),
        (["--config.batch_size=16", "--config.batch_size=32"], "batch_size", 32),
        (["--config.learning_rate=1"], "learning_rate", 1.0),
        (["--config.mixup.cutmix_alpha=0"], "mixup.cutmix_alpha", 0.0),
        (["--config.model_overrides.layers=(2,3)"], "model_overrides.layers", (2, 3)),
        (["--config.model_overrides.layers", "(2, 3)"], "model_overrides.layers", (2, 3)),
        (["--config.model_overrides.layers=[2,3]"], "model_overrides.layers", (2, 3)),
        (
            ["--config.model_overrides.layers=2", "--config.model_overrides.layers=3"],
            "model_overrides.layers",
            (2, 3),
        ),
        (["--config.model_overrides.layers=None"], "model_overrides.layers", None),
        (["--config.augment.scale=(0.5,1)"], "augment.scale", (0.5, 1)),
        (["--config.half_precision"], "half_precision", True),
        (["--config.half_precision=false"], "half_precision", False),
        (["--config.half_precision=0"], "half_precision", False),
        (["--noconfig.scan_layers"], "scan_layers", False),
        (["--config.num_classes=None"], "num_classes", None),
        (["--config.num_classes=10"], "num_classes", 10),
        (["--config.init_from=/x/y.pth"], "init_from", "/x/y.pth"),
        (["--config.dataset=None"], "dataset", "None"),  # not unset: a string field's text
        (["--config.data_dir=None"], "data_dir", None),  # a string placeholder: unset
        (["--config.num_classes=10", "--config.num_classes=None"], "num_classes", None),
        (["--config.num_classes=None", "--config.num_classes=10"], "num_classes", 10),
    ],
)
def test_overrides_take_the_forms_config_flags_took(args, field, value):
    flag_values, argv = _main_flags(*args, "--workdir=w")
    assert cli.read_command_line(argv, flag_values) == ["main.py"]
    node = flag_values.config
    for part in field.split("."):
        node = node[part]
    assert node == value and type(node) is type(value)


def _main_flags(*args):
    """Flags of their own as main.py defines ``--config`` (and ``--workdir``), and the command
    line ``--config=configs/quickstart.py *args`` for :func:`cli.read_command_line`."""
    argv = ["main.py", QUICKSTART, *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    return flag_values, argv


@pytest.mark.parametrize(
    "args, message",
    [
        (["--noconfig.scan_layers=1"], "--noconfig.scan_layers=1 does not take an argument"),
        (["--config.batch_size"], "Missing value for flag --config.batch_size"),
        (["--config.batch_size", "--workdir=w"], "batch_size takes an integer"),
        (["--config.batch_size=None"], "batch_size takes an integer, e.g. --config.batch_size=64"),
    ],
)
def test_bare_flags_that_need_a_value_say_so(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        cli.read_command_line(*reversed(_main_flags(*args)))
    assert "\n" not in str(error.value)


def test_arguments_after_double_dash_are_not_overrides():
    flag_values, argv = _main_flags("--workdir=w", "--", "--config.batch_size=3")
    assert cli.read_command_line(argv, flag_values) == ["main.py", "--config.batch_size=3"]
    assert flag_values.config.batch_size == 64  # the quickstart's


# ---- the workdir lock


def test_the_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    with WorkdirLock(str(tmp_path)):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(CheckpointError) as error:  # another open file: flock refuses it
            WorkdirLock(str(tmp_path)).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()} on host {holder['host']}" in message and "\n" not in message
    with WorkdirLock(str(tmp_path)):  # released at exit
        pass


def test_a_second_run_on_a_workdir_stops_and_a_killed_runs_lock_does_not_block(
    tmp_path, digits_data_dir, compilation_cache
):
    workdir = tmp_path / "w"
    common = [
        QUICKSTART,
        f"--workdir={workdir}",
        f"--config.data_dir={digits_data_dir}",
        *MICRO,
        "--config.checkpoint_every_steps=100000",
    ]
    env = _environment(**compilation_cache)
    first = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *common, "--config.num_train_steps=100000"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while f'"pid": {first.pid}' not in _read(workdir / ".lock"):
            assert first.poll() is None and time.monotonic() < deadline, "no lock taken"
            time.sleep(0.05)
        second = _main(*common, "--config.num_train_steps=2", **compilation_cache)
        line = _one_error_line(second)
        assert f"is in use by another training run: pid {first.pid} on host" in line
        assert "tensorflow imported: False" in second.stdout
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead run's lock; its file is still there, naming it.
    assert f'"pid": {first.pid}' in _read(workdir / ".lock")
    stderr_path = tmp_path / "third.stderr"
    with open(stderr_path, "w") as stderr:
        third = subprocess.Popen(
            [sys.executable, "-c", TRACE_TENSORFLOW, *common, "--config.num_train_steps=2"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        # Until it has the lock and has opened the dataset (TensorFlow imported): then Ctrl-C.
        deadline = time.monotonic() + 120
        while not (
            f'"pid": {third.pid}' in _read(workdir / ".lock")
            and " on sklearn_digits: " in _read(stderr_path)
        ):
            assert third.poll() is None, _read(stderr_path)
            assert time.monotonic() < deadline, "the third run did not start"
            time.sleep(0.05)
        third.send_signal(signal.SIGINT)
        stdout, _ = third.communicate(timeout=120)
    finally:
        if third.poll() is None:
            third.kill()
            third.wait()
    log = _read(stderr_path)
    assert "tensorflow imported: True" in stdout  # what the runs that stopped early did not
    assert "keras imported: False" in stdout  # main.py keeps it out (1.1 s of every start)
    assert not [line for line in log.splitlines() if CXX_LOG_LINE.search(line)], log
    assert re.search(r"^\d\d:\d\d:\d\d dynamixer_s on sklearn_digits: ", log, re.MULTILINE)


def _read(path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_keyboard_interrupt_outside_training_is_one_line(capsys):
    # A second Ctrl-C in training (which aborts at once), or Ctrl-C during --mode=evaluate.
    def interrupted():
        raise KeyboardInterrupt

    assert process.run_reporting_errors(interrupted) == 130
    assert capsys.readouterr().err == "interrupted: stopped without saving\n"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_one_process_with_a_bad_flag_stops_every_process_with_its_line(tmp_path):
    # Process 1 has a wrong override: both join the coordinator, learn of it, and end with the
    # same line (before: process 1 alone said why; process 0 waited 300 s in
    # jax.distributed.initialize and aborted with a C++ stack trace). No training starts.
    port = _free_port()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "main.py"),
                QUICKSTART,
                f"--workdir={tmp_path / 'run'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={index}",
                *(["--config.batch_size=abc"] if index == 1 else []),
            ],
            env=_environment(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        # Far below JAX's 300 s and the 120 s --join_timeout (seen: ~9 s on a busy machine).
        outputs = [process.communicate(timeout=100)[1] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [2, 2], outputs
    last_lines = [output.strip().splitlines()[-1] for output in outputs]
    assert last_lines[0] == last_lines[1], outputs
    assert last_lines[0].startswith("error: process 1: --config.batch_size=abc"), outputs
    assert "an integer" in last_lines[0]
    assert not any("Traceback" in output for output in outputs), outputs
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_rejected_command_line_still_says_where_to_join():
    # absl rejected --mode=bogus, so FLAGS hold nothing: the joining flags are read off argv.
    argv = [
        "main.py",
        "--mode=bogus",
        "--coordinator_address=10.0.0.1:1234",
        "--num_processes",
        "4",
        "--process_id=x",  # unreadable: left out (the process cannot say its place)
        "--join_timeout=30",
        "--",
        "--process_id=2",
    ]
    assert process.joining_flags(argv) == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "timeout": 30,
    }
