"""benchmarks/throughput.py runs end to end on a tiny model and writes the fields it promises.

Not a timing test: only that numbers are there, positive and finite. With DYNAMIXER_NO_TORCH=1
(or without torch) the PyTorch baseline is left out.
"""

import json
import math
import os
import sys
import types

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import throughput

from benchlib.models import build_model
from benchlib.records import summary_lines
from benchlib.xla_stats import bytes_fields, predicted_bytes, required_bytes, xla_flops
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


def test_quick_run_writes_every_field(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    result = throughput.run(
        [
            "--quick",
            "--dtypes",
            "fp32",
            "--peak-size",
            "128",
            "--remat",
            "minimal",
            "full",
            "--json",
            str(path),
        ]
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(result, default=str))
    run = result["runs"][0]
    for key in (
        "jax_device_platform",
        "jax_device_kind",
        "jax",
        "flax",
        "optax",
        "numpy",
        "python",
        "create_model_accepts_remat",
    ):
        assert key in run
    assert positive(run["peak_flops"]["fp32"]["flops_per_s"])

    records = {(r["framework"], r["mode"], r["remat"]): r for r in result["records"]}
    model = build_model("tiny", 56, "fp32", "minimal", train=True)
    for mode, per_image in (
        ("train", flops.training_flops(model)),
        ("infer", flops.forward_flops(model)),
    ):
        r = records[("jax", mode, "minimal")]
        assert r["status"] == "ok", r
        assert (r["model"], r["dtype"], r["batch"], r["image_size"]) == ("tiny", "fp32", 2, 56)
        for key in (
            "img_s",
            "step_ms",
            "compile_s",
            "tflops_per_s",
            "mfu",
            "activation_bytes_per_image",
            "xla_flops_per_image",
        ):
            assert positive(r[key]), (mode, key, r[key])
        assert r["flops_per_image"] == per_image
        assert positive(r["memory"]["temp_bytes"]) and positive(r["memory"]["argument_bytes"])
        assert all(positive(v) for v in r["rounds_img_s"])
    remat = records[("jax", "train", "full")]
    assert remat["status"] == ("skipped" if not run["create_model_accepts_remat"] else "ok")

    if torch_available():
        for mode in ("train", "infer"):
            r = records[("torch", mode, "minimal")]
            assert r["status"] == "ok", r
            assert positive(r["img_s"]) and positive(r["step_ms"])
        assert "JAX / torch" in capsys.readouterr().out
    else:
        assert not any(r["framework"].startswith("torch") for r in result["records"])

    summary = "\n".join(summary_lines(result["records"]))
    assert "img/s" in summary and "tiny" in summary


def test_user_errors_are_one_line(capsys):
    assert throughput.main(["--models", "XL", "--quick"]) == 2
    assert throughput.main(["--batches", "S:x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_batches_per_model():
    models = ["dynamixer_s", "dynamixer_m"]
    assert throughput.parse_batches(["S:64,128", "32"], models) == {
        "dynamixer_s": [64, 128],
        "dynamixer_m": [32],
    }


def test_memory_fields_tolerate_missing_analysis():
    class NoAnalysis:
        def memory_analysis(self):
            return None

    class Raises:
        def memory_analysis(self):
            raise NotImplementedError

    partial = types.SimpleNamespace(temp_size_in_bytes=10, argument_size_in_bytes=5)
    for compiled in (NoAnalysis(), Raises()):
        fields = bytes_fields(compiled)
        assert set(fields.values()) == {None}
        assert required_bytes(fields) is None
    fields = bytes_fields(types.SimpleNamespace(memory_analysis=lambda: [partial]))
    assert fields["temp_bytes"] == 10 and fields["output_bytes"] is None
    assert required_bytes(fields) == 15


@pytest.mark.parametrize(
    "costs, expected", [({"flops": 6.0}, 6.0), ([{"flops": 4.0}], 4.0), (None, None), ([], None)]
)
def test_xla_flops_dict_or_list(costs, expected):
    assert xla_flops(types.SimpleNamespace(cost_analysis=lambda: costs)) == expected


def test_memory_of_a_larger_batch_is_extrapolated():
    base = {"model": "m", "dtype": "bf16", "mode": "train", "remat": "none", "batch": 256}
    memory = {"argument_bytes": 100, "temp_bytes": 640, "output_bytes": 100, "alias_bytes": 100}
    records = [
        dict(base, framework="jax", batch=64, memory=memory),
        dict(base, framework="jax", batch=32, memory=dict(memory, temp_bytes=1)),
    ]
    assert predicted_bytes(records, base) == 100 + 640 * 4
    assert predicted_bytes(records, dict(base, dtype="fp32")) is None


def test_benchmark_imports_no_tensorflow():
    """What the benchmark and the accelerator check import must exist on a machine without
    TensorFlow, ml_collections or clu (the GPU box has none of them)."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import throughput, accelerator_check, train_step; "
        "from dynamixer_jax.convert import torch_to_flax; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'tensorflow_datasets', 'ml_collections', 'clu'}))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_concurrent_settings_compile_first_and_take_turns_on_the_device(tmp_path):
    """train_step.py --concurrent: every setting is timed only after all have compiled, and no
    two timed windows overlap (what makes side-by-side compiling safe for the timings)."""
    import subprocess

    out = tmp_path / "race.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    subprocess.run(
        [
            sys.executable,
            "benchmarks/train_step.py",
            "--concurrent",
            "--model=tiny",
            "--image-size=56",
            "--batches=2",
            "--steps=2",
            "--inner-rounds=2",
            "--rounds=1",
            "--barrier-s=300",
            "--settings",
            "jax:none",
            "jax:minimal",
            "peak",
            f"--json={out}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    runs = {row["setting"]: row["runs"][0] for row in json.loads(out.read_text())["results"]}
    assert set(runs) == {"jax:none", "jax:minimal", "peak"}
    timed = [runs["jax:none"], runs["jax:minimal"]]
    for run in timed:
        assert run["img_s"] > 0 and not run["barrier_ran_out"]
    last_ready = max(run["ready_at"] for run in runs.values())
    windows = sorted(run["timed_window"] for run in timed)
    assert all(start >= last_ready for start, _ in windows)
    assert windows[0][1] <= windows[1][0]
