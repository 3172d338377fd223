"""Shared test setup: PyTorch on this machine's 2 threads, and a summary of measured parity figures."""

import os

import pytest

# CI's second Python has no CPU torch wheel at hand: leave out, by name, the modules that need it.
TORCH_MODULES = ["test_parity.py", "test_convert.py", "test_evaluate_authors.py"]
collect_ignore = TORCH_MODULES if os.environ.get("DYNAMIXER_NO_TORCH") == "1" else []

PARITY_FIGURES = {}


def record_parity(name: str, value: float) -> None:
    """Keep a measured figure (e.g. worst logit difference) for the end-of-run summary."""
    PARITY_FIGURES[name] = max(value, PARITY_FIGURES.get(name, 0.0))


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
def digits_data_dir(tmp_path_factory):
    """A TFDS data dir holding the built-in sklearn_digits dataset, prepared once per run."""
    from dynamixer_jax.data.sources import open_source
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    open_source("sklearn_digits", data_dir)  # prepares it on first use
    return data_dir


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """Environment for subprocesses that share one JAX persistent compilation cache (as a user
    would set one up): later runs of the same model skip compiling its steps."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def pytest_terminal_summary(terminalreporter):
    if PARITY_FIGURES:
        terminalreporter.section("parity figures (worst seen)")
        for name, value in sorted(PARITY_FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value:.3g}")
