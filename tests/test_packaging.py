"""What importing the package costs: jax, flax and numpy only."""

import subprocess
import sys


def test_import_pulls_in_neither_tensorflow_nor_torch():
    code = ("import sys, dynamixer_jax, dynamixer_jax.convert, dynamixer_jax.model.nnx_bridge; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'torch', 'tensorflow_datasets')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
