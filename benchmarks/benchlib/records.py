"""The records of a throughput run: the JSON file kept current after every measurement, the
FLOP and MFU fields of a record, its log line, and the summary table with JAX / PyTorch ratios."""

from __future__ import annotations

import json
import os
from typing import Any

from dynamixer_jax.model import flops as flop_count


def short_error(exc: BaseException) -> str:
    """The first line of an exception, for records and logs."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def write_json(path: str, content: Any) -> None:
    """Write ``content`` to ``path`` atomically (a killed run leaves the previous file whole)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1, default=str)
    os.replace(tmp, path)


class Recorder:
    """Holds the run's metadata and records; writes the JSON file after every change."""

    def __init__(self, path: str | None, meta: dict[str, Any], append: bool):
        self.path, self.runs, self.records = path, [], []
        if append and path and os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            self.runs, self.records = previous.get("runs", []), previous.get("records", [])
        self.meta = meta
        self.runs.append(meta)

    def add(self, record: dict[str, Any]) -> None:
        """Number the record with this run, log it and rewrite the file."""
        record["run"] = len(self.runs) - 1
        self.records.append(record)
        print("[throughput] " + format_record(record), flush=True)
        self.write()

    def write(self) -> None:
        """Rewrite the JSON file (if there is one) with every run and record so far."""
        if self.path:
            write_json(self.path, {"runs": self.runs, "records": self.records})


def fmt(value, spec: str) -> str:
    """``format(value, spec)``, or '-' for a missing value."""
    return "-" if value is None else format(value, spec)


def format_record(r: dict[str, Any]) -> str:
    """One log line for a record."""
    head = (
        f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<4} {r.get('remat', 'none'):<6} "
        f"{r['mode']:<5} b={str(r.get('batch')):<5}"
    )
    if r["status"] != "ok":
        return f"{head} {r['status'].upper()}: {r.get('error', '')}"
    if r["mode"] == "max_batch":
        return f"{head} fits (limit {r['limit_bytes'] / 2**30:.2f} GiB), tried {r['tried']}"
    return (
        f"{head} {r['img_s']:9.1f} img/s  step {r['step_ms']:8.1f} ms  compile "
        f"{fmt(r.get('compile_s'), '.1f')} s  MFU {fmt(r.get('mfu'), '.1%')}"
    )


def add_flop_fields(record: dict[str, Any], model, peaks: dict[str, Any]) -> None:
    """FLOPs per image, achieved TFLOP/s and MFU of a measured record."""
    per_image = (
        flop_count.training_flops(model)
        if record["mode"] == "train"
        else flop_count.forward_flops(model)
    )
    record["flops_per_image"] = per_image
    if record.get("img_s"):
        achieved = per_image * record["img_s"]
        record["tflops_per_s"] = achieved / 1e12
        peak = (peaks.get(record["dtype"]) or {}).get("flops_per_s")
        record["peak_flops_per_s"] = peak
        record["mfu"] = achieved / peak if peak else None


def summary_lines(records: list[dict[str, Any]]) -> list[str]:
    """An aligned table of the measured records, then JAX / PyTorch ratios."""
    header = (
        f"{'framework':<13} {'model':<12} {'dtype':<5} {'remat':<6} {'mode':<5} "
        f"{'batch':>5} {'img/s':>9} {'step ms':>9} {'compile s':>9} {'TFLOP/s':>8} "
        f"{'MFU':>6} {'act MB/img':>10} {'peak GB':>8}"
    )
    lines = [header]
    for r in records:
        if r.get("mode") == "max_batch":
            lines.append(
                f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} "
                f"{'none':<6} {'max batch':<10} {fmt(r.get('batch'), 'd'):>0} "
                f"(limit {r.get('limit_bytes', 0) / 1e9:.3g} GB, confirmed by a real "
                f"step: {r.get('confirmed', '-')}) {r.get('error') or ''}"
            )
            continue
        if r.get("status") != "ok":
            lines.append(
                f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} "
                f"{r.get('remat', 'none'):<6} {r['mode']:<5} {r['batch']:>5} "
                f"{r['status']}: {r.get('error', '')[:80]}"
            )
            continue
        act = r.get("activation_bytes_per_image")
        peak = r.get("peak_bytes_in_use")
        lines.append(
            f"{r['framework']:<13} {r['model']:<12} {r['dtype']:<5} {r.get('remat', 'none'):<6} "
            f"{r['mode']:<5} {r['batch']:>5} {r['img_s']:>9.1f} {r['step_ms']:>9.1f} "
            f"{fmt(r.get('compile_s'), '.1f'):>9} {fmt(r.get('tflops_per_s'), '.2f'):>8} "
            f"{fmt(r.get('mfu'), '.1%'):>6} {fmt(act and act / 1e6, '.1f'):>10} "
            f"{fmt(peak and peak / 1e9, '.1f'):>8}"
        )
    return lines + ratio_lines(records)


def ratio_lines(records: list[dict[str, Any]]) -> list[str]:
    """JAX images/s divided by each PyTorch variant's, for the configurations both measured (a
    PyTorch record carries the remat value of the JAX configuration it was measured beside)."""
    ok = {
        (r["framework"], r["model"], r["dtype"], r["batch"], r["mode"], r.get("remat")): r["img_s"]
        for r in records
        if r.get("status") == "ok" and r.get("mode") in ("train", "infer") and not r.get("note")
    }
    lines = []
    for (framework, model, dtype, batch, mode, remat), jax_rate in sorted(ok.items(), key=str):
        if framework != "jax":
            continue
        for other in ("torch", "torch-compile"):
            rate = ok.get((other, model, dtype, batch, mode, remat))
            if rate:
                lines.append(
                    f"JAX / {other:<13} {model:<12} {dtype:<5} {mode:<5} b={batch:<5} "
                    f"{jax_rate / rate:6.2f}"
                )
    return (["", "ratios (images/s):"] + lines) if lines else []
