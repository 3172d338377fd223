"""Transparent huge pages for glibc malloc, which makes XLA:CPU training steps much cheaper.

Why: every XLA:CPU step allocates its activations afresh; glibc serves large
blocks with mmap and returns them with munmap, so each step faults in every
page again (about 600,000 4-KiB page faults per DynaMixer-S step at batch 8,
40% of a core in the kernel). With ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(glibc 2.35+) those blocks are backed by 2-MiB transparent huge pages: the
faults drop 50-200x and the step got 1.6x (batch 8) and 1.26x (batch 16)
faster on a 2-core CPU (``python benchmarks/throughput.py`` measures it).

glibc reads tunables once, at process start, so this re-executes the current
command with the variable set. It changes nothing on accelerators, on other
C libraries, or where the variable is already set.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def hugepage_malloc_active() -> bool:
    """True if this process was started with glibc's huge-page malloc tunable."""
    return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def ensure_hugepage_malloc() -> None:
    """Re-execute this process with huge-page malloc on Linux/glibc, unless it already is (or cannot be).

    Call it first thing in a command-line entry point (never in a library
    import): it replaces the process. Set ``DYNAMIXER_NO_REEXEC=1`` to opt out.
    """
    if hugepage_malloc_active() or os.environ.get("DYNAMIXER_NO_REEXEC") == "1":
        return
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv:
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
