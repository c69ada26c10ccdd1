"""`dpt-jax bench`: how fast dpt-jax runs a model on this machine, with random weights.

    parse_model_spec("NAME[@S|@HxW]")  a preset or mini config and an input size
    random_params(config)              a float32 parameter tree of sensible scale (no checkpoint)
    time_calls(fn, repeats, warmup)    wall-clock latencies of blocking calls
    machine()                          CPU model, cores, JAX backend and devices
    time_model(config, ...)            compile time and latencies of DepthModel.apply

dpt-jax alone: no PyTorch. The side-by-side harness (PyTorch, FLOP rates, memory, start-up,
converter memory) lives in the repository's benchmarks/ folder and builds on these functions.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time
from typing import Callable

import numpy as np


def resolve_config(name: str):
    """A preset (long or short name) or a family's toy config (registry.MINI_CONFIGS)."""
    from .registry import MINI_CONFIGS, PRESETS, get_config

    if name in MINI_CONFIGS:
        return MINI_CONFIGS[name]
    try:
        return get_config(name)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list(PRESETS) + list(MINI_CONFIGS))}") from None


def parse_model_spec(text: str):
    """"NAME", "NAME@S" (S x S) or "NAME@HxW" -> (config, (height, width)); the default size is the native one."""
    name, _, size = text.partition("@")
    config = resolve_config(name)
    if not size:
        return config, tuple(config.native_size)
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", size)
    if not m:
        raise ValueError(f"bad size in {text!r}: expected NAME@S or NAME@HxW, e.g. beit_base_384@384x512")
    h, w = int(m.group(1)), int(m.group(2) or m.group(1))
    config.check_input_size(h, w)
    return config, (h, w)


def random_params(config, seed: int = 0) -> dict:
    """A float32 parameter tree of DPT(config) with random values of sensible scale, from the shapes alone:
    kernels N(0, 1/fan_in), norm scales 1, biases 0, layer scales 0.1, SwinV2 logit scales ln 10,
    everything else (position tables, cls token) N(0, 0.02). Activations stay finite."""
    from flax import traverse_util

    from .dpt import param_shapes

    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in param_shapes(config).items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = max(1, math.prod(shape[:-1]))
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / math.sqrt(fan_in))
        elif leaf == "scale":
            a = np.ones(shape, np.float32)
        elif leaf in ("bias", "q_bias", "v_bias"):
            a = np.zeros(shape, np.float32)
        elif leaf.startswith("gamma"):
            a = np.full(shape, 0.1, np.float32)
        elif leaf == "logit_scale":
            a = np.full(shape, math.log(10.0), np.float32)
        else:
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        flat[path] = a
    return traverse_util.unflatten_dict(flat, sep="/")


def time_calls(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` (which must block until its result is ready), after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPU cores this process may run on (XLA's CPU backend uses them all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine() -> str:
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (f"{cpu_model()} ({cpu_cores()} cores); jax {jax.__version__}, backend {jax.default_backend()}, "
            f"{len(devices)} device{'s' if len(devices) != 1 else ''}: {', '.join(kinds)}")


def check_memory(config, height: int, width: int, batch: int) -> None:
    """Refuse a size and batch whose activations cannot fit in the memory budget (memory.py), before building."""
    from .memory import over_budget

    if (reason := over_budget(config, batch, (height, width))) is not None:
        raise ValueError(f"{config.name}: {reason}; choose a smaller size (@HxW) or --batch")


def time_model(config, height: int, width: int, *, batch: int = 1, dtype: str = "float32",
               repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Compile time (first call: trace, compile, run) and latencies of DepthModel.apply on random inputs."""
    import jax

    from .model import DepthModel

    config.check_input_size(height, width)
    check_memory(config, height, width, batch)
    model = DepthModel(config, random_params(config, seed), dtype=dtype)
    x = jax.device_put(np.random.default_rng(seed + 1).standard_normal((batch, height, width, 3), dtype=np.float32))
    t = time.perf_counter()
    model.apply(x).block_until_ready()
    compile_s = time.perf_counter() - t
    times = time_calls(lambda: model.apply(x).block_until_ready(), repeats, warmup)
    median = statistics.median(times)
    return {"model": config.name, "height": height, "width": width, "batch": batch, "dtype": dtype,
            "params": model.num_params, "compile_s": compile_s, "latency_median_s": median,
            "latency_min_s": min(times), "images_per_s": batch / median, "repeats": len(times)}


def run(args) -> int:
    """`dpt-jax bench MODEL[@HxW] ...` (see cli.py): prints one timing per model."""
    from .layers import COMPUTE_DTYPES

    if args.dtype not in COMPUTE_DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {args.dtype!r}")
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--batch and --repeats must be at least 1, --warmup at least 0")
    specs = [parse_model_spec(m) for m in args.models]  # every name checked before anything is timed
    for config, (h, w) in specs:
        check_memory(config, h, w, args.batch)
    print(f"machine: {machine()}")
    for config, (h, w) in specs:
        r = time_model(config, h, w, batch=args.batch, dtype=args.dtype, repeats=args.repeats, warmup=args.warmup)
        print(f"{r['model']} {h}x{w} batch {r['batch']} {r['dtype']}: {r['params'] / 1e6:.2f} M parameters, "
              f"compile {r['compile_s']:.2f} s, median {r['latency_median_s'] * 1e3:.1f} ms, "
              f"min {r['latency_min_s'] * 1e3:.1f} ms ({r['repeats']} calls), {r['images_per_s']:.3g} images/s")
    return 0
