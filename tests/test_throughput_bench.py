"""The benchmarks run end to end on a tiny model and write the fields they promise:
benchmarks/throughput.py (JAX against the PyTorch twin), benchmarks/memory.py (compile only) and
benchmarks/accelerator_check.py (correctness; the CPU is its device here).

Not a timing test: only that numbers are there, positive and finite. With DYNAMIXER_NO_TORCH=1
(or without torch) the PyTorch baseline is left out.
"""

import json
import math
import os
import subprocess
import sys
import types

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import accelerator_check
import memory
import throughput

from benchlib import create
from benchlib.xla_stats import bytes_fields, costs, required_bytes
from dynamixer_jax.model import flops


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def torch_available() -> bool:
    if os.environ.get("DYNAMIXER_NO_TORCH") == "1":
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def in_this_process(setting, batch, mode, args, timeout_s):
    """What a setting's fresh process runs, run here: a process per setting costs an import of
    JAX (and PyTorch) each, and the test needs none of what a fresh process gives."""
    return throughput.run_setting(setting, batch, mode, args)


def test_quick_run_writes_every_field(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    settings = ["peak", "jax:minimal", "jax:full"] + (["torch"] if torch_available() else [])
    report = throughput.run(
        ["--quick", "--modes", "train", "infer", "--json", str(path), "--settings", *settings],
        measure=in_this_process,
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(report, default=str))
    assert report["cpu"]["cores"] >= 1 and isinstance(report["cpu"]["vector_extensions"], list)
    rows = {(r["setting"], r["mode"]): r for r in report["results"]}
    assert positive(rows["peak", "train"]["peak_tflops"])
    model = create("tiny", image_size=56)
    for mode, per_image in (
        ("train", flops.training_flops(model)),
        ("infer", flops.forward_flops(model)),
    ):
        for setting in ("jax:minimal", "jax:full"):
            row = rows[setting, mode]
            (run,) = row["runs"]
            assert (row["batch"], row["model"]) == (2, "tiny"), row
            assert positive(row["img_s"]) and positive(row["mfu"]), row
            for key in ("step_ms", "compile_s", "temp_mb_per_image", "xla_gflops_per_image"):
                assert positive(run[key]), (setting, mode, key, run[key])
            assert run["flops_per_image"] == per_image and run["platform"] == "cpu"
            assert positive(run["memory"]["argument_bytes"])
        if torch_available():
            row = rows["torch", mode]
            assert positive(row["img_s"]) and row["vs_torch"] == 1.0, row
            assert positive(rows["jax:minimal", mode]["vs_torch"])
    out = capsys.readouterr().out
    assert "img/s" in out and "vector extensions:" in out


def test_user_errors_are_one_line(capsys):
    assert throughput.main(["--model", "XL", "--quick"]) == 2
    assert throughput.main(["--settings", "jax"]) == 2
    assert throughput.main(["--settings", "torch-compile:max-autotune"]) == 2  # default mode only
    assert memory.main(["--models", "XL"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)


def test_memory_fields_tolerate_missing_analysis():
    class NoAnalysis:
        def memory_analysis(self):
            return None

        def cost_analysis(self):
            raise NotImplementedError

    partial = types.SimpleNamespace(temp_size_in_bytes=10, argument_size_in_bytes=5)
    for compiled in (NoAnalysis(), types.SimpleNamespace(memory_analysis=lambda: 1 / 0)):
        fields = bytes_fields(compiled)
        assert set(fields.values()) == {None}
        assert required_bytes(fields) is None
    assert costs(NoAnalysis()) == {"flops": None, "bytes_accessed": None}
    fields = bytes_fields(types.SimpleNamespace(memory_analysis=lambda: [partial]))
    assert fields["temp_bytes"] == 10 and fields["output_bytes"] is None
    assert required_bytes(fields) == 15


@pytest.mark.parametrize(
    "found, expected", [({"flops": 6.0}, 6.0), ([{"flops": 4.0}], 4.0), (None, None), ([], None)]
)
def test_xla_flops_dict_or_list(found, expected):
    assert costs(types.SimpleNamespace(cost_analysis=lambda: found))["flops"] == expected


def test_compile_only_memory_fits_a_line_and_the_largest_batch(tmp_path):
    path = tmp_path / "memory.json"
    args = ["--models", "tiny", "--dtypes", "fp32", "--remat", "none", "--image-size", "56"]
    assert memory.main([*args, "--batches", "2", "4", "--fit-gb", "1", "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())["results"]
    low, high = row["points"]
    assert high["hbm_bytes"] > low["hbm_bytes"] > 0 and positive(low["compile_s"])
    assert positive(row["per_image_mb"]) and positive(row["fixed_gb"])
    expected = int((0.95e9 - row["fixed_gb"] * 1e9) // (row["per_image_mb"] * 1e6))
    assert abs(row["largest_batch"]["1GB"] - expected) <= 1


def test_accelerator_correctness_check_runs_on_the_cpu(tmp_path):
    if not torch_available():
        pytest.skip("the correctness check compares with the PyTorch twin")
    path = tmp_path / "correctness.json"
    assert accelerator_check.main(["--quick", "--json", str(path)]) == 0
    checks = {c["check"]: c for c in json.loads(path.read_text())["checks"]}
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert checks["device_vs_cpu"]["highest"]["max_rel"] < 1e-5
    assert checks["device_vs_cpu"]["jax_vs_torch"]["max_rel"] < 1e-4
    assert checks["bf16_vs_fp32"]["top1_agreement"] > 0.5


def test_benchmark_imports_no_tensorflow():
    """What the benchmarks and the accelerator check import must exist on a machine without
    TensorFlow or ml_collections (the GPU box has none of them)."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import throughput, accelerator_check, memory; "
        "from dynamixer_jax.convert import torch_to_flax; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'tensorflow_datasets', 'ml_collections'}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
