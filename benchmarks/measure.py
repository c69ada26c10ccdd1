"""What the harness measures on the JAX side, and where: memory, the machine, the matmul peak, one JAX row.

    PeakRSS, current_rss_mb, status_kb   host memory (exact per phase on Linux)
    machine_info, machine_slug, ...      CPU, cores, accelerator, library versions
    matmul_peak                          best GFLOP/s of one large jitted matmul
    bench_jax(spec)                      compile time, latencies, memory, XLA FLOPs of DepthModel.apply
    python_child(code, args)             a command running `code` in a fresh interpreter that imports
                                         what this one imports (the same dpt_jax, this benchmarks folder)

Timing loops, the CPU model and random weights come from `dpt_jax.timing` (`dpt-jax bench`).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from dpt_jax.checkpoint import count_params
from dpt_jax.layers import COMPUTE_DTYPES
from dpt_jax.timing import cpu_cores, cpu_model, random_params, time_calls

MARKER = "DPT_JAX_BENCH_RESULT: "  # child processes print their JSON result on a line starting with this


def python_child(code: str, *args: str) -> list[str]:
    """argv of a fresh interpreter running `code` with this process's import path (so it imports the same
    dpt_jax and this benchmarks package, from a checkout or an installation alike)."""
    prelude = f"import sys; sys.path[:] = {list(sys.path)!r}\n"
    return [sys.executable, "-c", prelude + code, *args]


def child_result(stdout: str) -> Optional[dict]:
    """The JSON a child printed after MARKER (its last such line), or None."""
    import json

    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    return None


# ---------------------------------------------------------------------------------------------
# Host memory


def status_kb(field_name: str) -> Optional[int]:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> Optional[float]:
    kb = status_kb("VmRSS")
    if kb is None:
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except ImportError:
            return None
    return kb / 1024


class PeakRSS:
    """Peak resident memory of this process from `start()` on.

    Linux: resets the kernel's high-water mark (writing 5 to /proc/self/clear_refs) and reads
    VmHWM, so the peak is exact and belongs to this phase only. Elsewhere: ru_maxrss, which is
    the peak of the whole process so far (`scope` says which).
    """

    def __init__(self):
        self.scope = "phase"
        self.start_mb = None

    def start(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.scope = "phase"
        except OSError:
            self.scope = "process"
        self.start_mb = current_rss_mb()
        return self

    def peak_mb(self) -> float:
        kb = status_kb("VmHWM") if self.scope == "phase" else None
        if kb is None:
            self.scope = "process"
            return ru_maxrss_mb()
        return kb / 1024


def ru_maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------
# Machine description


def _version(module: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, cores, accelerator and library versions: what every result row carries."""
    import jax

    import dpt_jax

    backend = jax.default_backend()
    gpus = [d.device_kind for d in jax.devices()] if backend != "cpu" else []
    info = {
        "cpu": cpu_model(),
        "cores": cpu_cores(),
        "cpu_count": os.cpu_count(),
        "backend": backend,
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "python": platform.python_version(),
        "dpt_jax": dpt_jax.__version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "total_memory_gb": _total_memory_gb(),
        "cpu_features": cpu_features(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,  # 1, 5, 15 min, at the start
    }
    info["machine"] = machine_slug(info)
    return info


def cpu_features() -> dict:
    """lscpu's model name and whether the CPU has bfloat16 matrix instructions (AVX512-BF16, AMX)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    model = re.search(r"^Model name:\s*(.+)$", text, re.M)
    flags_line = re.search(r"^Flags:\s*(.+)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return {"lscpu_model": model.group(1).strip() if model else None,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags,
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags, "flags_read": bool(flags),
            "vector_flags": sorted(f for f in flags if re.match(r"(avx|fma|amx|sse4|f16c)", f))}


def _total_memory_gb() -> Optional[float]:
    kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    kb = int(line.split()[1])
    except OSError:
        pass
    return round(kb / 2**20, 1) if kb else None


def machine_slug(info: dict) -> str:
    """A file-name-safe machine label: the GPU name when there is one, else the CPU model and core count."""
    base = info["gpu"] if info.get("gpu") else f"{info['cpu']}-{info['cores']}c"
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return slug or "unknown"


def machine_label(info: dict) -> str:
    label = f"{info['cpu']} ({info['cores']} cores)"
    if info.get("gpu"):
        label += f" + {info['gpu']}" + (f" x{info['gpu_count']}" if info["gpu_count"] > 1 else "")
    return label


def alternating_calls(sides: dict, repeats: int) -> dict:
    """{side: (first call s, wall seconds, CPU seconds)} of zero-argument calls: each side's first call (the
    compile), one untimed warm-up each, then `repeats` rounds calling every side in turn, so a change of load
    on a shared machine hits all sides alike. Results are waited for (`jax.block_until_ready`; other
    frameworks' calls return when done)."""
    import jax

    out = {}
    for name, call in sides.items():
        t = time.perf_counter()
        jax.block_until_ready(call())
        out[name] = (time.perf_counter() - t, [], [])
    for call in sides.values():
        jax.block_until_ready(call())
    for _ in range(repeats):
        for name, call in sides.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(call())
            out[name][1].append(time.perf_counter() - t)
            out[name][2].append(time.process_time() - c)
    return out


def side_fields(timed: dict) -> dict:
    """`alternating_calls`' result as flat row fields: per side (its name in snake case) the first call's
    seconds, the median and min milliseconds, the median CPU seconds per call and every latency."""
    out = {}
    for side, (first_s, wall, cpu) in timed.items():
        key = re.sub(r"[^a-z0-9]+", "_", side.lower()).strip("_")
        out.update({f"{key}_first_s": first_s, f"{key}_median_ms": 1e3 * statistics.median(wall),
                    f"{key}_min_ms": 1e3 * min(wall), f"{key}_cpu_s": statistics.median(cpu),
                    f"{key}_latencies_s": wall})
    return out


# ---------------------------------------------------------------------------------------------
# Matmul peak


def matmul_peak(n: Optional[int] = None, repeats: int = 5, dtype: str = "float32") -> dict:
    """Best-of-`repeats` GFLOP/s of one jitted n x n @ n x n matmul at precision HIGHEST (2 n^3 FLOPs).

    n defaults to 2048 on CPU and 8192 on accelerators (where 2048 is over in microseconds).
    """
    import jax
    import jax.numpy as jnp

    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    dt = COMPUTE_DTYPES[dtype]
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    f(a, b).block_until_ready()
    best = min(time_calls(lambda: f(a, b).block_until_ready(), repeats, 0))
    return {"n": n, "dtype": dtype, "seconds": best, "gflops": 2 * n**3 / best / 1e9, "framework": "jax"}


# ---------------------------------------------------------------------------------------------
# The JAX side of one row


def bench_jax(spec) -> dict:
    """Compile time, latencies, memory and XLA's FLOP count of DepthModel(spec.config).apply at the spec's shape."""
    import jax
    import jax.numpy as jnp

    from dpt_jax.model import DepthModel

    from .flops import cost_flops

    if spec.matmul_precision:
        jax.config.update("jax_default_matmul_precision", spec.matmul_precision)
    peak = PeakRSS().start()
    params = random_params(spec.config, spec.seed)
    n_params = count_params(params)
    model = DepthModel(spec.config, params, dtype=spec.dtype)
    del params
    rng = np.random.default_rng(spec.seed + 1)
    x = jnp.asarray(rng.standard_normal((spec.batch, spec.height, spec.width, 3), dtype=np.float32))
    jax.block_until_ready((model.params, x))

    t = time.perf_counter()
    model.apply(x).block_until_ready()
    compile_s = time.perf_counter() - t

    times = time_calls(lambda: model.apply(x).block_until_ready(), spec.repeats, spec.warmup)
    y = np.asarray(model.apply(x))
    out = {
        "params": n_params,
        "compile_s": compile_s,
        **run_summary(times, y, peak),
        "device_peak_mb": _jax_device_peak_mb(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "persistent_cache_dir": jax.config.jax_compilation_cache_dir,
    }
    if spec.xla_flops:
        try:  # the very program timed above: DepthModel's jitted forward (its trace cache is warm)
            out["xla_flops_lowered"] = cost_flops(model._apply.lower(model.params, x, None))  # no depth prompt
        except Exception as e:  # cost analysis is diagnostic only
            out["xla_flops_lowered"] = None
            out["xla_flops_error"] = f"{type(e).__name__}: {e}"
    return out


def run_summary(times, output, peak) -> dict:
    """The row fields both sides report: latencies, what came out, and host memory."""
    return {
        "latency_median_s": statistics.median(times),
        "latency_min_s": min(times),
        "latencies_s": times,
        "output_shape": list(output.shape),
        "output_finite": bool(np.isfinite(output).all()),
        "peak_rss_mb": peak.peak_mb(),
        "rss_start_mb": peak.start_mb,
        "rss_scope": peak.scope,
    }


def _jax_device_peak_mb() -> Optional[float]:
    import jax

    if jax.default_backend() == "cpu":
        return None
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    v = stats.get("peak_bytes_in_use")
    return v / 2**20 if v is not None else None
