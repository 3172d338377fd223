"""XLA:CPU's memory-minimising scheduler, without which rematerialisation saves nothing on a CPU.

By default XLA:CPU orders a program's operations for concurrency, and is then free to run a
rematerialised forward pass as early as it likes: it does, during the forward pass, so the
activations rematerialisation was meant to free are all live at once. DynaMixer-S, batch 32,
float32 training step (``compiled.memory_analysis()`` temp bytes per image): 315 MB with no
rematerialisation and 341 MB with any ``remat`` choice under the default scheduler; 230 MB
(``"none"``), 144 MB (``"minimal"``) and 65 MB (``"full"``) with the memory-minimising one.
GPU and TPU compilers schedule for memory already; the flag is read by XLA:CPU alone.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, and per-call
``compiler_options`` do not reach the scheduler, so the flag has to be in the environment before
the first JAX computation. Importing ``dynamixer_jax`` changes no environment variable: a program
opts in by calling :func:`prefer_memory_saving_scheduler` early (``main.py``, the benchmarks, the
notebooks and the tests do). A flag of that name already in ``XLA_FLAGS`` is left as it is;
``DYNAMIXER_KEEP_XLA_FLAGS=1`` leaves ``XLA_FLAGS`` untouched.
"""

from __future__ import annotations

import os

FLAG_NAME = "xla_cpu_enable_concurrency_optimized_scheduler"


def prefer_memory_saving_scheduler() -> bool:
    """Add ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to XLA_FLAGS; True if added."""
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("DYNAMIXER_KEEP_XLA_FLAGS") == "1" or FLAG_NAME in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} --{FLAG_NAME}=false".strip()
    return True
