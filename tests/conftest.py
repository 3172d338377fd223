"""Shared test setup: the repository's path, the tiny architecture most tests build, PyTorch on
this machine's 2 threads, and a summary of measured parity figures."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# As the Flax examples' tests do: compile without most of XLA's optimisations. Most tests
# compile far more than they run (a micro network's training step: 7.8 s to compile at full
# optimisation, 4.8 s without); values are unchanged, only the generated code is slower.
# Set before JAX is imported, so the helper processes the tests start inherit it; the main.py
# runs of tests/main_runs.py, which run more than they compile, set it back.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _fast_compile_flags() -> str:
    """XLA:CPU's older per-fusion code emitters, where this jaxlib still has them (0.10 does,
    0.12 dropped them and fails on the flag): they compile the tests' small networks in about
    half the time (the usual test step: 4.1 -> 2.0 s; train-step modules 170 -> 99 s on two
    workers, ``docs/studies.md``) and give the same values. Checked once, in a process of its
    own (an unknown flag aborts the process that reads it); the processes the tests start
    inherit the answer."""
    known = os.environ.get("DYNAMIXER_TEST_XLA_FLAGS")
    if known is not None:
        return known
    flag = "--xla_cpu_use_fusion_emitters=false"
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
        env=dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu"),
        capture_output=True,
        timeout=300,
    )
    os.environ["DYNAMIXER_TEST_XLA_FLAGS"] = flag if probe.returncode == 0 else ""
    return os.environ["DYNAMIXER_TEST_XLA_FLAGS"]


FAST_COMPILE_FLAGS = _fast_compile_flags()
if FAST_COMPILE_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a process the tests start on ``devices`` simulated CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}".strip()


from dynamixer_jax.xla_cpu import prefer_memory_saving_scheduler

# As main.py does: the memory figures the tests check assume XLA:CPU's memory-minimising
# scheduler, which must be asked for before the first JAX computation.
prefer_memory_saving_scheduler()

from dynamixer_jax.model.variants import create_model

REPO = Path(__file__).resolve().parents[1]  # the repository root: configs/, notebooks/, main.py

# A tiny network with every structural feature of the published ones: four stages; a transition
# after stage 0 (the grid halves, the width doubles); a boundary with nothing to do (stages 1-2);
# a width change without a transition (stages 2-3, a 1x1 projection); a stage of two layers;
# several segments in every stage. 56x56 images give grids of 8x8 then 4x4.
TINY_ARCH = dict(
    layers=(1, 1, 2, 1),
    embed_dims=(16, 32, 32, 48),
    transitions=(True, False, False, False),
    num_segments=(2, 4, 4, 4),
    reduced_dims=(2, 2, 2, 2),
    mlp_ratios=(3, 3, 3, 3),
)
TINY_CLASSES, TINY_IMAGE_SIZE = 10, 56


# Smaller still, for tests that train, save or load many times: two stages, patch size 4, so a
# 16x16 image is a 4x4 then 2x2 grid.
MICRO_ARCH = dict(
    layers=(1, 1),
    embed_dims=(16, 32),
    transitions=(True, False),
    num_segments=(2, 4),
    reduced_dims=(2, 2),
    mlp_ratios=(2, 2),
    patch_size=4,
)


# The quickstart cut down for tests that train it: half its batch, one layer per stage at half
# the width (73k parameters instead of 509k). What those tests check (resume, signals, devices,
# notebooks, input stalls) does not depend on the network's size; its steps compile and run in a
# fraction of the time. ``load_config(QUICKSTART, **SMALL_QUICKSTART)``; tests/main_runs.py
# passes the same as --config overrides.
SMALL_QUICKSTART = {
    "batch_size": 32,
    "model_overrides.layers": (1, 1),
    "model_overrides.embed_dims": (32, 64),
}


def tiny_model(**overrides):
    """The TINY_ARCH DynaMixer (10 classes, 56x56 unless overridden); ``overrides`` go to
    ``create_model`` (dtype, remat, drop_path_rate, or an architecture field)."""
    return create_model(
        "dynamixer_s",
        **{**TINY_ARCH, "num_classes": TINY_CLASSES, "image_size": TINY_IMAGE_SIZE, **overrides},
    )


# CI's second Python has no CPU torch wheel at hand: leave out, by name, the modules that need it.
TORCH_MODULES = ["test_parity.py", "test_convert.py", "test_evaluate_authors.py"]
collect_ignore = TORCH_MODULES if os.environ.get("DYNAMIXER_NO_TORCH") == "1" else []

# The fast tier (`scripts/test.sh --fast`, under 2 minutes on 2 cores) is what runs in seconds:
# the operation, layers, conversions, augmentations, configs, arithmetic. Marked slow here: whole
# modules that are end to end (a main.py process, a notebook, a training run over a dataset, the
# tf.data pipeline) or that compile several training steps, and single tests that took 7 s or
# more on 2 cores (most compile a whole network). The full suite runs them all.
SLOW_MODULES = {
    "test_evaluate_authors.py",
    "test_fast_init.py",
    "test_hugepages.py",
    "test_mixing_maps.py",
    "test_nnx.py",
    "test_notebooks.py",
    "test_packaging.py",
    "test_pipeline.py",
    "test_reliability_checkpoints.py",
    "test_reliability_cli.py",
    "test_reliability_inputs.py",
    "test_remat.py",
    "test_scan_layers.py",
    "test_sharding.py",
    "test_throughput_bench.py",
    "test_train_lib.py",
    "test_train_runs.py",
}
SLOW_TESTS = {
    "test_network_logits_parity",
    "test_gradient_parity_dynamixer_s",
    "test_segmentation_head_trains",
    "test_training_step_matches_trace_and_xla",
    "test_stochastic_depth_is_per_sample_and_only_in_training",
    "test_jit_and_grad_are_finite",
    "test_command_line_round_trip",
    "test_a_whole_model_moves_to_another_image_size",
    "test_sharded_batch_matches_unsharded",
    "test_logits_features_and_token_grid_shapes",
    "test_erasing_modes_counts_and_off",
    "test_train_preprocess_in_dataset_map",
    "test_backbone_composes_inside_a_users_compact_module",
    "test_shapes_and_feature_info",
    "test_gradient_parity_non_square_small_network",
    "test_dtype_options",
    "test_bfloat16_computation_keeps_float32_params_and_statistics",
    "test_converted_flax_checkpoints_round_trip",
    "test_erasing_rate_area_noise_and_untouched_pixels",
    "test_minimal_remat_of_the_vector_mixing_keeps_the_mixed_tokens_and_no_matrices",
    "test_rand_augment_is_deterministic_and_graph_safe",
    "test_jit_scan_and_remat",
    "test_training_workdir_round_trip",
    "test_load_at_another_size_and_class_count",
    "test_bfloat16_parameters",
    "test_fused_mixing_in_bfloat16_is_within_bfloat16_rounding",
    "test_network_with_pallas_mixing_matches_vector_mixing",
}


def pytest_ignore_collect(collection_path, config):
    """The fast tier (``-m "not slow"``) does not import the slow modules at all: collecting
    them (papermill, the benchmarks, the tf.data pipeline) costs each worker seconds."""
    if config.option.markexpr == "not slow" and collection_path.name in SLOW_MODULES:
        return True
    return None


# The modules that take longest, longest first (measured: docs/studies.md, "Figures behind code
# decisions"). They run first, so that the two workers of scripts/test.sh (--dist loadfile
# --no-loadscope-reorder: the files in this order) end together instead of one finishing a long
# file alone; xdist's own order (most tests first) handed out three of the longest four last.
# The two modules of main.py runs both start from one reference run (``uninterrupted``), made
# by whichever asks first while the other waits: they start on one worker after the other,
# not side by side, so that the second worker trains in-process meanwhile instead of waiting.
LONGEST_MODULES = [
    "test_train_runs.py",
    "test_train_lib.py",
    "test_reliability_checkpoints.py",
    "test_parity.py",
    "test_pipeline.py",
    "test_throughput_bench.py",
    "test_notebooks.py",
    "test_remat.py",
    "test_scan_layers.py",
    "test_sharding.py",
    "test_features.py",
    "test_model.py",
]


def pytest_collection_modifyitems(config, items):
    """The markers set here: slow (SLOW_MODULES, SLOW_TESTS) and torch (TORCH_MODULES); and the
    order of the modules: LONGEST_MODULES first, the others as collected."""
    for item in items:
        if item.path.name in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.path.name in TORCH_MODULES:
            item.add_marker(pytest.mark.torch)
    rank = {name: index for index, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps test order


PARITY_FIGURES = {}
_PARITY_DIR = "DYNAMIXER_PARITY_FIGURES_DIR"


def record_parity(name: str, value: float) -> None:
    """Keep a measured figure (e.g. worst logit difference) for the end-of-run summary."""
    PARITY_FIGURES[name] = max(value, PARITY_FIGURES.get(name, 0.0))
    folder = os.environ.get(_PARITY_DIR)
    if folder:  # under pytest-xdist the figures are measured in the workers
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps([name, float(value)]) + "\n")


_SHARED_DIR = "DYNAMIXER_TEST_SHARED_DIR"


def pytest_configure(config):
    """Folders the controller makes and the pytest-xdist workers it starts inherit: where the
    workers leave their parity figures, and where they share what is made once per run."""
    if hasattr(config, "workerinput"):
        return
    for variable, prefix in ((_PARITY_DIR, "parity_figures"), (_SHARED_DIR, "shared")):
        if variable not in os.environ:
            os.environ[variable] = tempfile.mkdtemp(prefix=f"dynamixer_{prefix}_")
            config.add_cleanup(
                lambda variable=variable: shutil.rmtree(
                    os.environ.pop(variable), ignore_errors=True
                )
            )


def shared_once(name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once per test run for every pytest worker:
    the first to ask makes it while the others wait, and a ``make`` that fails leaves it to be
    made again. Whoever uses it only reads it."""
    root = Path(os.environ[_SHARED_DIR])
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock, contextlib.ExitStack() as unlock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        unlock.callback(fcntl.flock, lock, fcntl.LOCK_UN)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache():
    """The test processes use the run's persistent compilation cache as the ``main.py`` runs do:
    the many in-process trainings of one model (and the runs beside them) compile each step
    once per test run instead of once per test. Only compilations of a second or more are
    stored, so the cache holds the steps, not every small jitted function."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(shared_once("jax_cache", lambda path: None)))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    # (in case a plugin imported JAX before this file set the variable)
    jax.config.update(
        "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
    )
    yield


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def digits_data_dir():
    """A TFDS data dir holding the built-in sklearn_digits dataset, prepared once per run."""
    from dynamixer_jax.data.sources import open_source

    # open_source prepares it on first use
    return str(shared_once("tfds", lambda folder: open_source("sklearn_digits", str(folder))))


@pytest.fixture(scope="session")
def compilation_cache():
    """Environment for subprocesses that share one JAX persistent compilation cache (as a user
    would set one up), one per test run: later runs of the same model skip compiling its steps."""
    from main_runs import compilation_cache

    return compilation_cache()


@pytest.fixture(scope="session")
def uninterrupted(digits_data_dir):
    """The end-to-end tests' reference run (``main_runs.uninterrupted_run``), read-only."""
    from main_runs import uninterrupted_run

    return uninterrupted_run(digits_data_dir)


def pytest_terminal_summary(terminalreporter):
    folder = os.environ.get(_PARITY_DIR)
    for path in Path(folder).glob("*.jsonl") if folder else []:
        for line in path.read_text().splitlines():
            name, value = json.loads(line)
            PARITY_FIGURES[name] = max(value, PARITY_FIGURES.get(name, 0.0))
    if PARITY_FIGURES:
        terminalreporter.section("parity figures (worst seen)")
        for name, value in sorted(PARITY_FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value:.3g}")
