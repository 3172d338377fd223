"""What importing the package costs: jax, flax and numpy for the model; no TensorFlow, torch,
ml_collections or clu for the model, the training step, the optimizer, the checkpoints or
loading weights. Only the input pipeline (TensorFlow) and the config reading of a run
(ml_collections, clu) bring those in."""

import ast
import subprocess
import sys

import pytest

HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "ml_collections", "clu")


def _heavy_modules_after(imports: str) -> list[str]:
    code = (
        f"import sys; import {imports}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "imports",
    [
        "dynamixer_jax, dynamixer_jax.model.nnx_bridge, dynamixer_jax.convert",
        "dynamixer_jax.train.steps, dynamixer_jax.train.optimizer, dynamixer_jax.train.state, "
        "dynamixer_jax.train.checkpoints, dynamixer_jax.loading, dynamixer_jax.data.recipe",
    ],
)
def test_model_step_optimizer_and_checkpoints_import_no_heavy_framework(imports):
    assert _heavy_modules_after(imports) == []


def test_the_input_pipeline_is_where_tensorflow_comes_in():
    # The check above is only meaningful if the detection sees TensorFlow when it is there.
    assert "tensorflow" in _heavy_modules_after("dynamixer_jax.data.pipeline")
