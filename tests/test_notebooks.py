"""The notebooks run top to bottom (papermill, a tiny run on the built-in digits), and are
committed without outputs."""

import json
from pathlib import Path

import pytest
from conftest import REPO, SMALL_QUICKSTART

papermill = pytest.importorskip("papermill")  # part of the test extras; see pyproject.toml

NOTEBOOKS = REPO / "notebooks"


@pytest.mark.parametrize("name", ["quickstart.ipynb", "train.ipynb"])
def test_committed_without_outputs(name):
    notebook = json.loads((NOTEBOOKS / name).read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert any("parameters" in cell["metadata"].get("tags", []) for cell in notebook["cells"])


def _execute(name, output, parameters, monkeypatch, compilation_cache):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for key, value in compilation_cache.items():
        monkeypatch.setenv(key, value)
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        parameters=parameters,
        cwd=str(REPO),
        kernel_name="python3",
        progress_bar=False,
    )
    return json.loads(Path(output).read_text())


def _images(notebook):
    return sum(
        "image/png" in out.get("data", {})
        for cell in notebook["cells"]
        for out in cell.get("outputs", [])
    )


def test_train_then_quickstart_notebooks_run(
    tmp_path, digits_data_dir, monkeypatch, compilation_cache
):
    workdir = tmp_path / "train"
    trained = _execute(
        "train.ipynb",
        tmp_path / "train_out.ipynb",
        {
            "WORKDIR": str(workdir),
            "TRAIN_STEPS": 30,
            "FINETUNE_STEPS": 4,
            "FINETUNE_IMAGE_SIZE": 48,
            "DATA_DIR": digits_data_dir,
            # what is checked here is that every cell runs and draws, not what the network learns
            "OVERRIDES": {
                name: list(value) if isinstance(value, tuple) else value
                for name, value in SMALL_QUICKSTART.items()
            },
        },
        monkeypatch,
        compilation_cache,
    )
    assert _images(trained) == 2  # training curves, fine-tuning curves
    assert (workdir / "metrics.jsonl").exists() and (
        tmp_path / "train_finetune" / "checkpoints"
    ).exists()

    figures = tmp_path / "figures"
    shown = _execute(
        "quickstart.ipynb",
        tmp_path / "quickstart_out.ipynb",
        {"WEIGHTS": str(workdir), "DATA_DIR": digits_data_dir, "SAVE_FIGURES": str(figures)},
        monkeypatch,
        compilation_cache,
    )
    assert _images(shown) == 3  # classified digits, mixing matrices, branch weights
    assert (figures / "mixing_matrices.png").stat().st_size > 10_000
