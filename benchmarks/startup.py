"""Start-up: a fresh process's time to its first result, with a cold and with a warm persistent compilation cache."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from dpt_jax.config import DPTConfig

from .measure import MARKER, python_child

_STARTUP_CHILD = f"""
import json, sys, time
t_start = time.perf_counter()
spec = json.loads(sys.argv[1])
import jax
if spec["cache_dir"]:
    jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import numpy as np
import dpt_jax
from dpt_jax.registry import config_from_json
from dpt_jax.timing import random_params
t_import = time.perf_counter()
config = config_from_json(spec["config"])
model = dpt_jax.DepthModel(config, random_params(config), dtype=spec["dtype"])
x = np.zeros((spec["batch"], spec["height"], spec["width"], 3), np.float32)
jax.block_until_ready(model.params)
t_model = time.perf_counter()
model.apply(x).block_until_ready()
t_first = time.perf_counter()
print("FIRST_RESULT", flush=True)
# After the result: how much of the first call was tracing + lowering (a fresh jit of the same forward).
trace_lower_s = None
if spec["measure_trace"]:
    from benchmarks.flops import trace_forward
    t = time.perf_counter()
    trace_forward(config, spec["height"], spec["width"], spec["batch"], spec["dtype"]).lower()
    trace_lower_s = time.perf_counter() - t
print({MARKER!r} + json.dumps({{"import_s": t_import - t_start, "model_s": t_model - t_import,
      "first_call_s": t_first - t_model, "in_process_s": t_first - t_start, "trace_lower_s": trace_lower_s}}),
      flush=True)
"""


def startup_times(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
                  cache_dir=None, runs: int = 2) -> dict:
    """Wall time from spawning a fresh Python process to its first model output, `runs` times in a row,
    all sharing one persistent compilation cache (a new temporary folder unless `cache_dir`).

    Run 1 compiles cold and fills the cache; later runs load the executable from it. Each run
    reports its wall time seen from here (interpreter start included) and its own breakdown:
    imports, model construction (random parameters), first call (trace + compile or cache load + run).
    """
    own_tmp = None
    if cache_dir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="dpt-jax-cache-")
        cache_dir = own_tmp.name
    spec = {"config": config.to_json(), "height": height, "width": width, "batch": batch, "dtype": dtype,
            "cache_dir": str(cache_dir)}
    results = []
    try:
        for i in range(runs):
            spec["measure_trace"] = i == runs - 1  # reported for the last (warm) process only
            t = time.perf_counter()
            proc = subprocess.Popen(python_child(_STARTUP_CHILD, json.dumps(spec)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = None
            child = None
            for line in proc.stdout:
                if line.startswith("FIRST_RESULT") and first is None:
                    first = time.perf_counter() - t
                elif line.startswith(MARKER):
                    child = json.loads(line[len(MARKER):])
            err = proc.stderr.read()
            proc.wait()
            if proc.returncode or child is None:
                raise RuntimeError(f"startup process {i + 1} failed (exit {proc.returncode}):\n{err[-4000:]}")
            entries = sum(1 for _ in Path(cache_dir).iterdir()) if Path(cache_dir).exists() else 0
            results.append({"run": i + 1, "wall_to_first_result_s": first, "cache_entries_after": entries, **child})
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    cold, warm = results[0], results[-1]
    return {
        "model": config.name, "height": height, "width": width, "batch": batch, "dtype": dtype,
        "runs": results,
        "cold_compile_s": cold["first_call_s"],
        "cold_wall_s": cold["wall_to_first_result_s"],
        "warm_wall_s": warm["wall_to_first_result_s"],
        "warm_first_call_s": warm["first_call_s"],
        "speedup": cold["wall_to_first_result_s"] / warm["wall_to_first_result_s"],
    }
