"""What importing the package costs: jax, flax and numpy for the model; no TensorFlow, torch or
ml_collections for the model, the training step, the optimizer, the checkpoints or loading
weights. Only the input pipeline and the metrics log of a run (TensorFlow) and the config
reading of a run (ml_collections) bring those in."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
import tomllib
from conftest import REPO

# dynamixer_torch: the PyTorch twin of the tests and benchmarks, never imported by the package.
HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "dynamixer_torch", "ml_collections")


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
        "dynamixer_jax, dynamixer_jax.nnx_bridge, dynamixer_jax.convert",
        "dynamixer_jax.train.steps, dynamixer_jax.train.optimizer, dynamixer_jax.train.state, "
        "dynamixer_jax.train.checkpoints, dynamixer_jax.loading, dynamixer_jax.data.recipe, "
        "dynamixer_jax.train.cadence",
    ],
)
def test_model_step_optimizer_and_checkpoints_import_no_heavy_framework(imports):
    assert _heavy_modules_after(imports) == []


def test_the_input_pipeline_is_where_tensorflow_comes_in():
    # The check above is only meaningful if the detection sees TensorFlow when it is there.
    assert "tensorflow" in _heavy_modules_after("dynamixer_jax.data.pipeline")


def test_importing_the_package_changes_no_environment_variable():
    """The XLA:CPU scheduler flag is for programs to opt in to (main.py, benchmarks, notebooks):
    a project that imports the model keeps the environment it set."""
    code = (
        "import os; before = dict(os.environ); "
        "import dynamixer_jax, dynamixer_jax.train, dynamixer_jax.convert; "
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    # Without XLA_FLAGS (this process's holds the flag already, which an import would leave be).
    env = {
        k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DYNAMIXER_KEEP_XLA_FLAGS")
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _distribution(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


def _installed_with(requirements: list[str]) -> set[str]:
    """The distributions ``pip install`` brings for ``requirements``: them and, transitively,
    what each requires (optional extras of theirs left out)."""
    seen, todo = set(), [_distribution(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_distribution(r) for r in requires if "extra ==" not in r]
    return seen


def _module_level_imports(path: str) -> set[str]:
    """The top-level names a source file imports at module level (not inside functions)."""
    names = set()
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_load_nnx_and_its_step_need_only_the_core_and_convert_extras():
    """Every module ``load_nnx`` (a workdir: Orbax) and the NNX step bring in imports only
    what ``pip install dynamixer_jax[convert]`` installs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    allowed = _installed_with(project["dependencies"] + project["optional-dependencies"]["convert"])
    code = (
        "import sys; import dynamixer_jax.nnx_bridge as b, dynamixer_jax.train.checkpoints; "
        "b.make_nnx_train_step(); print(sorted(m.__file__ for n, m in list(sys.modules.items()) "
        "if n.startswith('dynamixer_jax') and getattr(m, '__file__', None)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    ours = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert any(path.endswith("nnx_bridge.py") for path in ours)
    imported = set().union(*map(_module_level_imports, ours)) - {"dynamixer_jax"}
    owners = importlib.metadata.packages_distributions()
    outside = {
        module: owners.get(module)
        for module in sorted(imported - set(sys.stdlib_module_names))
        if not {_distribution(d) for d in owners.get(module, [module])} & allowed
    }
    assert not outside, f"imported from distributions outside core + convert: {outside}"
