"""ensure_hugepage_malloc re-executes the command once, arguments intact, with the glibc tunable set."""

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
from dynamixer_jax.train.hugepages import ensure_hugepage_malloc
print("started", flush=True)
ensure_hugepage_malloc()
print("args", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"), flush=True)
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc-only feature"
)
def test_reexec_once_with_tunable(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    env = {
        k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DYNAMIXER_NO_REEXEC")
    }
    result = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["started", "started", "args ['--flag', 'a b'] tunables glibc.malloc.hugetlb=1"]

    env["DYNAMIXER_NO_REEXEC"] = "1"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines() == ["started", "args [] tunables None"]
