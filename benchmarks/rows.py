"""One benchmark row: a (model, input size, batch, dtype), JAX then PyTorch, by default in a fresh process.

    RowSpec        what a row measures (JSON round trip: it crosses to the child process)
    run_row(spec)  the finished row: both sides' measurements, FLOP rates, share of the matmul peak
    measure_peaks  the matmul peak of each dtype, JAX and (same kind of device) torch
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import subprocess
from dataclasses import dataclass
from typing import Optional

from dpt_jax.config import DPTConfig
from dpt_jax.registry import config_from_json

from .flops import flop_count
from .measure import MARKER, bench_jax, child_result, machine_info, machine_label, matmul_peak, python_child
from .torch_side import bench_torch, torch_matmul_peak, torch_status


@dataclass
class RowSpec:
    """What one row measures. `config` is the architecture; `model` only labels it."""

    model: str
    config: DPTConfig
    height: int
    width: int
    batch: int = 1
    dtype: str = "float32"
    repeats: int = 5
    warmup: int = 1
    torch: bool = True
    torch_dtype: str = "auto"  # auto: float32 on CPU; on GPU float32 for float32 rows, float16 otherwise
    torch_attn: str = "auto"  # transformers attention: auto (the family's HFLayout.default_attention), sdpa, eager
    threads: Optional[int] = None  # torch threads; default: the cores JAX uses
    xla_flops: bool = True  # also record XLA's cost analysis of the unoptimized HLO (no extra compile)
    matmul_precision: Optional[str] = None  # jax_default_matmul_precision for the run; None: JAX's default
    seed: int = 0

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_json()
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "RowSpec":
        d = json.loads(text)
        d["config"] = config_from_json(d["config"])
        return cls(**d)


def run_row(spec: RowSpec, *, isolate: bool = True, info: Optional[dict] = None,
            peaks: Optional[dict] = None) -> dict:
    """One benchmark row: JAX, then (if asked and available) PyTorch in the same process.

    isolate=True runs it in a fresh Python process (cold compile, per-row memory peaks).
    `peaks` ({"float32": GFLOP/s, ...}, see measure_peaks) turns FLOP rates into "% of peak".
    """
    raw = _run_child(spec) if isolate else row_in_process(spec)
    return _finish_row(spec, raw, info or machine_info(), peaks or {})


def row_in_process(spec: RowSpec) -> dict:
    raw = {"jax": bench_jax(spec)}
    gc.collect()
    if spec.torch:
        ok, why = torch_status(spec.config)
        if ok:
            try:
                raw["torch"] = bench_torch(spec)
            except Exception as e:  # a torch-side failure must not lose the JAX numbers
                raw["torch"] = {"error": f"{type(e).__name__}: {e}"}
        else:
            raw["torch"] = {"skipped": why}
    else:
        raw["torch"] = {"skipped": "not requested (--no-torch)"}
    return raw


_ROW_CHILD = f"""
import json, sys
from benchmarks.rows import RowSpec, row_in_process
print({MARKER!r} + json.dumps(row_in_process(RowSpec.from_json(sys.argv[1])), default=str), flush=True)
"""


def _run_child(spec: RowSpec) -> dict:
    proc = subprocess.run(python_child(_ROW_CHILD, spec.to_json()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    raw = child_result(proc.stdout)
    if proc.returncode or raw is None:
        raise RuntimeError(f"benchmark row process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return raw


def _finish_row(spec: RowSpec, raw: dict, info: dict, peaks: dict) -> dict:
    flops = flop_count(spec.config, spec.height, spec.width, spec.batch)
    j, t = raw["jax"], raw.get("torch", {})
    row = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_label(info), "cpu": info["cpu"], "cores": info["cores"], "gpu": info.get("gpu"),
        "backend": info["backend"], "jax_version": info["jax"], "torch_version": info.get("torch"),
        "transformers_version": info.get("transformers"),
        "model": spec.model, "family": spec.config.family.name, "height": spec.height, "width": spec.width,
        "batch": spec.batch, "dtype": spec.dtype, "repeats": spec.repeats, "warmup": spec.warmup,
        "flops": flops.total, "gflop_per_image": flops.per_image / 1e9,
        "peak_gflops": peaks.get(spec.dtype), "peak_gflops_float32": peaks.get("float32"),
    }
    row.update({f"jax_{k}": v for k, v in j.items()})
    row["jax_compile_minus_run_s"] = j["compile_s"] - j["latency_median_s"]  # ~ tracing + compilation alone
    row["jax_throughput_ips"] = spec.batch / j["latency_median_s"]
    row["jax_gflops"] = flops.total / j["latency_median_s"] / 1e9
    row["flops_padding_taps"] = flop_count(spec.config, spec.height, spec.width, spec.batch, padding_taps=True,
                                           original_order=True).total  # what torch's counter sees
    if j.get("xla_flops_lowered"):
        row["xla_flops_lowered_vs_analytic"] = j["xla_flops_lowered"] / flops.total - 1.0
    if "latency_median_s" in t:
        row.update({k if k.startswith(("torch_", "params_")) else f"torch_{k}": v for k, v in t.items()})
        row["torch_throughput_ips"] = spec.batch / t["latency_median_s"]
        row["torch_gflops"] = flops.total / t["latency_median_s"] / 1e9
        row["jax_over_torch"] = j["latency_median_s"] / t["latency_median_s"]
    else:
        row["torch_skipped"] = t.get("skipped") or t.get("error") or "not run"
    for side in ("jax", "torch"):
        rate = row.get(f"{side}_gflops")
        if rate is not None:
            if peaks.get("float32"):
                row[f"{side}_pct_of_fp32_peak"] = 100 * rate / peaks["float32"]
            if peaks.get(spec.dtype):
                row[f"{side}_pct_of_peak"] = 100 * rate / peaks[spec.dtype]
    return row


def measure_peaks(dtypes, *, n: Optional[int] = None, repeats: int = 5, with_torch: bool = True,
                  threads: Optional[int] = None) -> tuple[dict, list]:
    """{dtype: best matmul GFLOP/s over JAX and (if present) torch}, and every measurement made."""
    import jax

    measured, peaks = [], {}
    for dt in sorted(set(dtypes) | {"float32"}):
        m = [matmul_peak(n, repeats, dt)]
        if with_torch and torch_status()[0]:
            import torch

            if torch.cuda.is_available() == (jax.default_backend() == "gpu"):  # same kind of device only
                tm = torch_matmul_peak(n, repeats, dt, threads)
                if tm:
                    m.append(tm)
        measured += m
        peaks[dt] = max(x["gflops"] for x in m)
    return peaks, measured
