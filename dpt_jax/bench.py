"""Benchmark harness: speed, memory and FLOP efficiency of dpt-jax, side by side with PyTorch.

Every model here is built at its real architecture with random weights (no checkpoint is read),
so the numbers depend only on the architecture, the input size, the batch and the dtype.

What one benchmark row measures (`run_row`, command `bench run`):

* JAX (`DepthModel.apply`, jitted): compile time (the first call, tracing and XLA compilation
  included), latency median and min over N timed calls after W warm-up calls (each call waits
  with `block_until_ready`), throughput (images/s), peak host RSS of the phase, device memory
  (GPU only), achieved GFLOP/s from the analytic FLOP count and its share of the matmul peak
  measured in the same run.
* PyTorch, in the same process: Hugging Face `transformers.DPTForDepthEstimation` built from a
  config with the same architecture (see `hf_dpt_model`), random weights, `torch.inference_mode`,
  float32 on CPU (float16 on GPU for reduced-precision rows), `torch.set_num_threads` = the
  cores JAX uses. Skipped, with the reason recorded, when torch/transformers are absent.

By default each row runs in a fresh Python process: compile times are cold, peak RSS is that
row's alone, and nothing of one row (allocator caches, thread pools) disturbs the next.

Also here:
* `flop_count`: the analytic FLOP count (2 x multiply-accumulates of every matmul, convolution
  and attention product) per stage, and two independent counts to check it against:
  `traced_flops` (every dot_general/conv of the traced program) and `xla_flops` (XLA's own
  `cost_analysis()`). See `flop_check` for the expected, systematic differences.
* `startup_times` (command `bench startup`): a fresh process's wall time to the first result,
  once with an empty and once with a warm persistent compilation cache.
* `convert_memory` (command `bench convert-memory`): peak RSS of converting a synthesized
  full-size checkpoint (exact key/shape list of a manifest, random data) and writing the
  converted file, in a subprocess, against the parameter bytes.

Results are printed as a markdown table and appended to `benchmarks/results/<machine>-<date>.md`
and `.json` (`write_results`). Entry point: `main(argv)` (`dpt-jax bench ...` or
`python -m dpt_jax.bench ...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .beit import BeitConfig
from .config import DPTConfig
from . import registry
from .registry import PRESETS, get_config
from .swinv2 import SwinV2Config

ROW_MARKER = "DPT_JAX_BENCH_RESULT: "  # children print their JSON result on a line starting with this
DEFAULT_RESULTS_DIR = Path("benchmarks") / "results"
DTYPES = ("float32", "bfloat16")

# ---------------------------------------------------------------------------------------------
# Small configurations: the real wiring at toy sizes, for smoke runs and tests.

MINI_CONFIGS = registry.MINI_CONFIGS


def resolve_config(name: str) -> DPTConfig:
    """A preset (long or short name) or one of MINI_CONFIGS."""
    if name in MINI_CONFIGS:
        return MINI_CONFIGS[name]
    try:
        return get_config(name)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list(PRESETS) + list(MINI_CONFIGS))}") from None


def parse_model_spec(text: str) -> tuple[DPTConfig, tuple[int, int]]:
    """"NAME", "NAME@S" (S x S) or "NAME@HxW" -> (config, (height, width)); the default size is the native one."""
    name, _, size = text.partition("@")
    config = resolve_config(name)
    if not size:
        return config, tuple(config.native_size)
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", size)
    if not m:
        raise ValueError(f"bad size in {text!r}: expected NAME@S or NAME@HxW, e.g. beit_base_384@384x512")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    config.check_input_size(h, w)
    return config, (h, w)


# ---------------------------------------------------------------------------------------------
# Analytic FLOP count


def _valid_taps(n: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Along one axis: the (output position, kernel tap) pairs that read a real input element, not padding."""
    out = (n + pad_lo + pad_hi - k) // stride + 1
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad_lo + t < n)


def _conv_out(n: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    return (n + pad_lo + pad_hi - k) // stride + 1


@dataclass(frozen=True)
class FlopCount:
    """FLOPs (2 x multiply-accumulates) of one forward pass, per component.

    Component names are "<stage>.<what>", the stages being encoder, reassemble, fusion and head.
    Only matmuls, convolutions and the two attention products are counted: elementwise work
    (norms, softmax, GELU, residual adds, bias adds, resizes) is not.
    """

    model: str
    height: int
    width: int
    batch: int
    components: dict  # name -> FLOPs
    padding_taps: bool  # True: convolution taps that read zero padding are counted too

    @property
    def total(self) -> int:
        return int(sum(self.components.values()))

    @property
    def stages(self) -> dict:
        out: dict = {}
        for name, v in self.components.items():
            stage = name.split(".", 1)[0]
            out[stage] = out.get(stage, 0) + v
        return out

    @property
    def per_image(self) -> float:
        return self.total / self.batch

    def __int__(self) -> int:
        return self.total

    def table(self) -> str:
        """A markdown table of the components and stages, in GFLOP."""
        lines = ["| component | GFLOP | share |", "|---|---:|---:|"]
        total = self.total or 1
        for name, v in self.components.items():
            lines.append(f"| {name} | {v / 1e9:.3f} | {100 * v / total:.1f} % |")
        for stage, v in self.stages.items():
            lines.append(f"| **{stage}** | **{v / 1e9:.3f}** | **{100 * v / total:.1f} %** |")
        lines.append(f"| **total** | **{self.total / 1e9:.3f}** | 100 % |")
        return "\n".join(lines)


def flop_count(config: DPTConfig, height: int, width: int, batch: int = 1, *, padding_taps: bool = False,
               original_order: bool = False) -> FlopCount:
    """Analytic FLOP count (2 x MACs) of DPT(config) on a (batch, height, width, 3) input, per component.

    Counted: every Dense / 1x1 conv (2 x tokens x in x out), every convolution (2 x out channels x
    in channels x the kernel taps that land on the input; with `padding_taps=True` also those
    that land on the zero padding, i.e. the dense out_h x out_w x k x k count), the transposed
    convolutions of the BEiT reassembly (2 x h x w x in x out x k^2), and both attention
    products (q k^T and weights v: 2 x 2 x tokens x keys x channels). SwinV2 attention is
    counted on the padded window grid the model actually computes, and the continuous position
    bias MLP once per block (it does not depend on the batch). The fusion blocks' 1x1 out_conv is
    counted before the resize, where dpt-jax runs it; `original_order=True` counts it after the
    resize, as MiDaS and transformers run it (4x the pixels for the x2 blocks).

    Not counted (they are not multiply-accumulates): norms, softmax, GELU/ReLU, residual and
    bias adds, layer scale, the bilinear resizes (gathers and a 2-tap blend per axis), the
    relative-position-bias gathers.
    """
    config.check_input_size(height, width)
    comps: dict = {}
    B = batch

    def add(name, flops):
        comps[name] = comps.get(name, 0) + int(flops)

    def conv(name, hw, cin, cout, k, stride=1, pad=0):
        h, w = hw
        if padding_taps:
            taps = _conv_out(h, k, stride, pad, pad) * _conv_out(w, k, stride, pad, pad) * k * k
        else:
            taps = _valid_taps(h, k, stride, pad, pad) * _valid_taps(w, k, stride, pad, pad)
        add(name, 2 * B * cin * cout * taps)
        return _conv_out(h, k, stride, pad, pad), _conv_out(w, k, stride, pad, pad)

    F = config.fusion_features
    maps: list[tuple[int, int]] = []
    if config.family.name == "beit":
        e = config.encoder
        p = e.patch_size
        h, w = height // p, width // p
        T, C = h * w, e.embed_dim
        N = T + 1  # with the cls token
        add("encoder.patch_embed", 2 * B * T * 3 * p * p * C)
        blocks = max(e.hooks) + 1  # the encoder stops after the last hooked block
        add("encoder.qkv_proj", blocks * (2 * B * N * C * 3 * C + 2 * B * N * C * C))
        add("encoder.attention", blocks * 2 * (2 * B * N * N * C))
        add("encoder.mlp", blocks * 2 * (2 * B * N * C * e.mlp_hidden))
        for i, d in enumerate(config.reassembly_features, start=1):
            add("reassemble.readout", 2 * B * T * (2 * C) * C)
            add("reassemble.project", 2 * B * T * C * d)
            if i in (1, 2):
                k = 4 if i == 1 else 2
                add("reassemble.resample", 2 * B * T * d * d * k * k)
                size = (h * k, w * k)
            elif i == 3:
                size = (h, w)
            else:
                size = conv("reassemble.resample", (h, w), d, d, 3, stride=2, pad=1)
            maps.append(size)
    else:
        e = config.encoder
        from .swinv2 import window_layout

        h, w = height // e.patch_size, width // e.patch_size
        add("encoder.patch_embed", 2 * B * h * w * 3 * e.patch_size**2 * e.embed_dim)
        for s, (depth, heads) in enumerate(zip(e.depths, e.num_heads)):
            C = e.stage_dims[s]
            T = h * w
            layout = window_layout((h, w), e.window_size)
            Np = layout.padded[0] * layout.padded[1]  # tokens of the padded grid the attention runs on
            Nw = layout.window[0] * layout.window[1]  # tokens per window
            K = (2 * layout.window[0] - 1) * (2 * layout.window[1] - 1)  # position-bias table rows
            add("encoder.qkv_proj", depth * (2 * B * Np * C * 3 * C + 2 * B * Np * C * C))
            add("encoder.attention", depth * 2 * (2 * B * Np * Nw * C))
            add("encoder.mlp", depth * 2 * (2 * B * T * C * e.mlp_ratio * C))
            add("encoder.cpb_mlp", depth * (2 * K * 2 * e.cpb_hidden + 2 * K * e.cpb_hidden * heads))
            maps.append((h, w))
            if s < len(e.depths) - 1:
                add("encoder.patch_merging", 2 * B * (h // 2) * (w // 2) * (4 * C) * (2 * C))
                h, w = h // 2, w // 2
    for i, (size, d) in enumerate(zip(maps, config.reassembly_features), start=1):
        conv("reassemble.to_fusion", size, d, F, 3, pad=1)
    # Fusion, coarse to fine: block 4 has only its second residual unit; every block resizes to the
    # next finer map's size (block 1: x2) and ends with a 1x1 conv at that size.
    for i in (4, 3, 2, 1):
        size = maps[i - 1]
        for _ in range(2 if i == 4 else 4):
            conv("fusion.residual_units", size, F, F, 3, pad=1)
        out = maps[i - 2] if i > 1 else (2 * size[0], 2 * size[1])
        at = out if original_order else size  # dpt-jax convolves before resizing (they commute)
        add("fusion.out_conv", 2 * B * at[0] * at[1] * F * F)
    size = (2 * maps[0][0], 2 * maps[0][1])
    conv("head.conv1", size, F, F // 2, 3, pad=1)
    size = (2 * size[0], 2 * size[1])
    conv("head.conv2", size, F // 2, config.head_features, 3, pad=1)
    add("head.conv3", 2 * B * size[0] * size[1] * config.head_features)
    return FlopCount(config.name, height, width, batch, comps, padding_taps)


# ---------------------------------------------------------------------------------------------
# Independent FLOP counts: the traced program and XLA's cost analysis


def _abstract_params(config: DPTConfig, dtype="float32"):
    import jax
    from flax import traverse_util

    from .dpt import param_shapes

    dt = _jnp_dtype(dtype)
    flat = {k: jax.ShapeDtypeStruct(v, dt) for k, v in param_shapes(config).items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def _jnp_dtype(dtype: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]


def _forward(config: DPTConfig, dtype: str = "float32"):
    """(params, images) -> depth: the same computation as DepthModel.apply, unjitted."""
    from .dpt import DPT

    module = DPT(config)
    compute = _jnp_dtype(dtype)

    def forward(params, images):
        return module.apply({"params": params}, images.astype(compute))

    return forward


def _abstract_inputs(config, height, width, batch, dtype):
    import jax
    import jax.numpy as jnp

    return _abstract_params(config, dtype), jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)


def trace_forward(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32"):
    """The jitted forward traced on abstract inputs (`jax.stages.Traced`): no parameters are allocated."""
    import jax

    return jax.jit(_forward(config, dtype)).trace(*_abstract_inputs(config, height, width, batch, dtype))


def traced_flops(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
                 *, padding_taps: bool = False, traced=None) -> dict:
    """FLOPs of every dot_general and conv_general_dilated in the traced forward (its jaxpr), by primitive.

    An independent count of the same quantity as `flop_count`: it knows nothing of the model,
    only the shapes of the operations the model really issues. Convolution taps that read padding
    are left out unless `padding_taps` (the same convention as `flop_count`).
    """
    traced = traced or trace_forward(config, height, width, batch, dtype)
    counts = {"dot_general": 0, "conv_general_dilated": 0}
    _count_jaxpr(traced.jaxpr.jaxpr, counts, 1, padding_taps)
    counts["total"] = counts["dot_general"] + counts["conv_general_dilated"]
    return counts


def _count_jaxpr(jaxpr, counts: dict, multiplier: int, padding_taps: bool) -> None:
    from jax.extend import core as jcore

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _rc), _batch = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            counts["dot_general"] += multiplier * 2 * math.prod(out) * math.prod(lhs[d] for d in lc)
        elif name == "conv_general_dilated":
            counts["conv_general_dilated"] += multiplier * _conv_flops(eqn, padding_taps)
        sub_mult = multiplier * (eqn.params.get("length", 1) if name == "scan" else 1)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if isinstance(sub, jcore.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jcore.Jaxpr):
                    _count_jaxpr(sub, counts, sub_mult, padding_taps)


def _conv_flops(eqn, padding_taps: bool) -> int:
    p = eqn.params
    dn = p["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    if any(d != 1 for d in tuple(p["lhs_dilation"]) + tuple(p["rhs_dilation"])):
        raise NotImplementedError("dilated convolutions are not counted")
    batch = lhs[dn.lhs_spec[0]] // p.get("batch_group_count", 1)
    cin_per_group = rhs[dn.rhs_spec[1]]
    cout = rhs[dn.rhs_spec[0]]
    taps = 1
    for i, (lo, hi) in enumerate(p["padding"]):
        n = lhs[dn.lhs_spec[2 + i]]
        k = rhs[dn.rhs_spec[2 + i]]
        s = p["window_strides"][i]
        taps *= out[dn.out_spec[2 + i]] * k if padding_taps else _valid_taps(n, k, s, lo, hi)
    return 2 * batch * cout * cin_per_group * taps


def xla_flops(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
              *, compiled: bool = True, traced=None) -> float:
    """XLA's `cost_analysis()['flops']` of the jitted forward: of the optimized executable
    (`compiled=True`: `jax.jit(f).lower(...).compile().cost_analysis()`), or of the unoptimized
    HLO (`compiled=False`: no compilation, seconds instead of minutes for the large models; it
    differs from the compiled count only in elementwise ops that the optimizer folds away)."""
    lowered = (traced or trace_forward(config, height, width, batch, dtype)).lower()
    cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def flop_check(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
               *, compiled: bool = True) -> dict:
    """The analytic count next to the traced count and XLA's cost analysis.

    Expected: analytic == traced exactly (same operations, same convention). XLA's number is
    higher, systematically: HloCostAnalysis also counts one FLOP per element of every elementwise
    op (norms, softmax, GELU's erf polynomial, residual/bias/layer-scale ops, the resize blends),
    which the analytic count leaves out. The excess is the elementwise work relative to the
    matmul work: ~1-3 % at real widths (and for MINI_CONFIGS), 5-12 % for very narrow toy models.
    Like the analytic count (padding_taps=False), XLA counts only the convolution taps that
    read real input, not those on the zero padding.
    """
    traced = trace_forward(config, height, width, batch, dtype)
    analytic = flop_count(config, height, width, batch).total
    counted = traced_flops(config, height, width, batch, dtype, traced=traced)["total"]
    xla = xla_flops(config, height, width, batch, dtype, compiled=compiled, traced=traced)
    return {
        "model": config.name, "height": height, "width": width, "batch": batch, "dtype": dtype,
        "analytic": analytic, "traced": counted, "xla": xla, "xla_stage": "compiled" if compiled else "lowered",
        "traced_vs_analytic": counted / analytic - 1.0,
        "xla_vs_analytic": xla / analytic - 1.0,
        "analytic_padding_taps": flop_count(config, height, width, batch, padding_taps=True).total,
    }


# ---------------------------------------------------------------------------------------------
# Random weights


def random_params(config: DPTConfig, seed: int = 0) -> dict:
    """A float32 parameter tree of DPT(config) with random values of sensible scale (no Flax init, no tracing
    beyond the shapes): kernels N(0, 1/fan_in), norm scales 1, biases and offsets 0, layer scale 0.1,
    SwinV2 logit scales ln 10, tables and the cls token N(0, 0.02). Values keep activations finite."""
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
        else:  # relative position tables, cls token
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        flat[path] = a
    return traverse_util.unflatten_dict(flat, sep="/")


def count_params(tree) -> int:
    return int(sum(np.prod(np.shape(v)) for v in _leaves(tree)))


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


# ---------------------------------------------------------------------------------------------
# Host memory


def _status_kb(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
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
        kb = _status_kb("VmHWM") if self.scope == "phase" else None
        if kb is None:
            self.scope = "process"
            return ru_maxrss_mb()
        return kb / 1024


def ru_maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------
# Machine description


def jax_cores() -> int:
    """CPU cores the process may use: the size of XLA's CPU thread pool (and of torch's, for fairness)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, cores, accelerator and library versions: what every result row carries."""
    import jax

    backend = jax.default_backend()
    gpus = [d.device_kind for d in jax.devices()] if backend != "cpu" else []
    info = {
        "cpu": cpu_model(),
        "cores": jax_cores(),
        "cpu_count": os.cpu_count(),
        "backend": backend,
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "numpy": np.__version__,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "total_memory_gb": _total_memory_gb(),
    }
    info["machine"] = machine_slug(info)
    return info


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
    dt = _jnp_dtype(dtype)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(kb, (n, n), jnp.float32).astype(dt)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    f(a, b).block_until_ready()
    best = math.inf
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return {"n": n, "dtype": dtype, "seconds": best, "gflops": 2 * n**3 / best / 1e9, "framework": "jax"}


def torch_matmul_peak(n: Optional[int] = None, repeats: int = 5, dtype: str = "float32",
                      threads: Optional[int] = None) -> Optional[dict]:
    """The same for torch.matmul (CPU with `threads` threads, or CUDA); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    if n is None:
        n = 8192 if cuda else 2048
    torch.set_num_threads(threads or jax_cores())
    dev = "cuda" if cuda else "cpu"
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, tdt)
    b = torch.randn(n, n, generator=g).to(dev, tdt)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        torch.matmul(a, b)
        sync()
        best = math.inf
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            torch.matmul(a, b)
            sync()
            best = min(best, time.perf_counter() - t)
    return {"n": n, "dtype": dtype, "seconds": best, "gflops": 2 * n**3 / best / 1e9, "framework": "torch"}


# ---------------------------------------------------------------------------------------------
# One benchmark row


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
    torch_attn: str = "auto"  # transformers attention: auto (sdpa where supported: BEiT; eager: SwinV2), sdpa, eager
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
        d["config"] = registry.config_from_json(d["config"])
        return cls(**d)


def _latencies(fn: Callable[[], None], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def bench_jax(spec: RowSpec) -> dict:
    """Compile time, latencies, memory and FLOP rate of DepthModel(spec.config).apply at the spec's shape."""
    import jax
    import jax.numpy as jnp

    from .model import DepthModel

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
    y = model.apply(x)
    y.block_until_ready()
    compile_s = time.perf_counter() - t

    times = _latencies(lambda: model.apply(x).block_until_ready(), spec.repeats, spec.warmup)
    y = np.asarray(model.apply(x))
    out = {
        "params": n_params,
        "compile_s": compile_s,
        "latency_median_s": statistics.median(times),
        "latency_min_s": min(times),
        "latencies_s": times,
        "output_shape": list(y.shape),
        "output_finite": bool(np.isfinite(y).all()),
        "peak_rss_mb": peak.peak_mb(),
        "rss_start_mb": peak.start_mb,
        "rss_scope": peak.scope,
        "device_peak_mb": _jax_device_peak_mb(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "persistent_cache_dir": jax.config.jax_compilation_cache_dir,
    }
    if spec.xla_flops:
        try:
            lowered = model._apply.lower(model.params, x)  # retraces nothing: the jit's trace cache is warm
            cost = lowered.cost_analysis()
            out["xla_flops_lowered"] = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
        except Exception as e:  # cost analysis is diagnostic only
            out["xla_flops_lowered"] = None
            out["xla_flops_error"] = f"{type(e).__name__}: {e}"
    return out


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


def torch_status() -> tuple[bool, str]:
    """(available, reason): whether the PyTorch side can run here."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, "torch is not installed (pip install 'dpt-jax[bench]')"
    try:
        import transformers  # noqa: F401
        from transformers import DPTForDepthEstimation  # noqa: F401
    except ImportError as e:
        return False, f"transformers with DPTForDepthEstimation is not importable ({e}; pip install 'dpt-jax[bench]')"
    return True, ""


# The Hugging Face DPT holds one module the MiDaS forward (and ours) never uses: the deepest fusion
# layer's first residual unit (it has no skip input). Everything else corresponds one to one.
HF_UNUSED_PREFIXES = ("neck.fusion_stage.layers.0.residual_layer1.",)


def hf_attn_implementation(config: DPTConfig, requested: str = "auto") -> str:
    """transformers' attention implementation to use: "auto" is its default where it has a choice (sdpa, for
    BEiT) and eager for SwinV2, whose transformers backbone supports nothing else (cosine attention)."""
    if requested == "auto":
        return "sdpa" if config.family.name == "beit" else "eager"
    return requested


def hf_dpt_config(config: DPTConfig, attn_implementation: str = "auto"):
    """A transformers DPTConfig with the architecture of `config` (BEiT or SwinV2 backbone)."""
    from transformers import DPTConfig as HFDPTConfig

    attn_implementation = hf_attn_implementation(config, attn_implementation)

    e = config.encoder
    if config.family.name == "beit":
        from transformers import BeitConfig as HFBeitConfig

        backbone = HFBeitConfig(
            image_size=[g * e.patch_size for g in e.native_grid],  # the relative-position tables' grid
            patch_size=e.patch_size, num_channels=3,
            hidden_size=e.embed_dim, num_hidden_layers=max(e.hooks) + 1, num_attention_heads=e.num_heads,
            intermediate_size=e.mlp_hidden, hidden_act="gelu", layer_norm_eps=e.layer_norm_eps,
            use_mask_token=False, use_absolute_position_embeddings=False,
            use_relative_position_bias=True, use_shared_relative_position_bias=False,
            layer_scale_init_value=0.1, use_mean_pooling=True, drop_path_rate=0.0,
            out_indices=[h + 1 for h in e.hooks],  # stage 0 is the embedding output
            reshape_hidden_states=False,  # keep the cls token for the "project" readout
            add_fpn=False,
        )
        extra = {"reassemble_factors": [4, 2, 1, 0.5], "readout_type": "project"}
    else:
        from transformers import Swinv2Config

        if e.native_size[0] != e.native_size[1]:
            raise ValueError("the transformers SwinV2 comparison supports square native sizes only")
        backbone = Swinv2Config(
            image_size=e.native_size[0], patch_size=e.patch_size, num_channels=3, embed_dim=e.embed_dim,
            depths=list(e.depths), num_heads=list(e.num_heads), window_size=e.window_size,
            pretrained_window_sizes=list(e.pretrained_window_sizes), mlp_ratio=float(e.mlp_ratio),
            qkv_bias=True, hidden_act="gelu", layer_norm_eps=e.layer_norm_eps, use_absolute_embeddings=False,
            drop_path_rate=0.0, out_features=[f"stage{i + 1}" for i in range(len(e.depths))],
        )
        extra = {}
    cfg = HFDPTConfig(
        backbone_config=backbone, neck_hidden_sizes=list(config.reassembly_features),
        fusion_hidden_size=config.fusion_features, head_in_index=-1, is_hybrid=False,
        use_batch_norm_in_fusion_residual=False, add_projection=False, **extra,
    )
    backbone._attn_implementation = attn_implementation
    cfg._attn_implementation = attn_implementation
    return cfg


def hf_dpt_model(config: DPTConfig, attn_implementation: str = "auto", seed: int = 0):
    """(transformers DPTForDepthEstimation with random weights, parameter report).

    The report: total parameters, those the forward uses (total minus HF_UNUSED_PREFIXES), and
    whether the latter equals our count. Differences from DPT(config) that matter for FLOPs:
    none at the sizes benchmarked (see benchmarks/README.md, "Hugging Face DPT vs ours").
    """
    import torch
    from transformers import DPTForDepthEstimation

    from .dpt import param_shapes

    torch.manual_seed(seed)
    model = DPTForDepthEstimation(hf_dpt_config(config, attn_implementation)).eval()
    total = sum(p.numel() for p in model.parameters())
    unused = sum(p.numel() for n, p in model.named_parameters() if n.startswith(HF_UNUSED_PREFIXES))
    ours = sum(math.prod(s) for s in param_shapes(config).values())
    report = {"torch_params_total": int(total), "torch_params_used": int(total - unused),
              "params_ours": int(ours), "params_match": int(total - unused) == int(ours),
              "torch_attn": model.backbone.config._attn_implementation}
    if config.head_features != 32:
        report["note"] = "transformers' DPT head has 32 hidden channels; this config has " \
                         f"{config.head_features}"
    return model, report


def torch_flop_count(config: DPTConfig, height: int, width: int, batch: int = 1) -> Optional[int]:
    """FLOPs of the transformers DPT of the same architecture, counted by torch's FlopCounterMode.

    The model is built on the meta device (shapes only: instant, no memory) and run once. torch
    counts every matmul, convolution (the dense out_h x out_w x k x k taps, padding included) and
    attention product, so this equals `flop_count(..., padding_taps=True, original_order=True)`
    when both models do the same work. None without torch/transformers.
    """
    if not torch_status()[0]:
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import DPTForDepthEstimation

    with torch.device("meta"):
        model = DPTForDepthEstimation(hf_dpt_config(config)).eval()
        x = torch.empty(batch, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=x)
    return int(counter.get_total_flops())


def bench_torch(spec: RowSpec) -> dict:
    """The same measurements for the transformers DPT with the same architecture (see hf_dpt_model)."""
    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    tdt = spec.torch_dtype
    if tdt == "auto":
        tdt = "float16" if cuda and spec.dtype != "float32" else "float32"
    threads = spec.threads or jax_cores()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = PeakRSS().start()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, report = hf_dpt_model(spec.config, spec.torch_attn, spec.seed)
    model = model.to(dev, getattr(torch, tdt))
    g = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(spec.batch, 3, spec.height, spec.width, generator=g).to(dev, getattr(torch, tdt))

    def call():
        model(pixel_values=x).predicted_depth
        sync()

    with torch.inference_mode():
        t = time.perf_counter()
        y = model(pixel_values=x).predicted_depth
        sync()
        first_s = time.perf_counter() - t
        times = _latencies(call, spec.repeats, spec.warmup)
        y = model(pixel_values=x).predicted_depth.float().cpu().numpy()
    out = dict(report)
    try:
        out["torch_counted_flops"] = torch_flop_count(spec.config, spec.height, spec.width, spec.batch)
    except Exception as e:  # diagnostic only
        out["torch_counted_flops_error"] = f"{type(e).__name__}: {e}"
    out.update({
        "torch_dtype": tdt,
        "torch_device": dev,
        "torch_threads": threads,
        "first_call_s": first_s,
        "latency_median_s": statistics.median(times),
        "latency_min_s": min(times),
        "latencies_s": times,
        "output_shape": list(y.shape),
        "output_finite": bool(np.isfinite(y).all()),
        "peak_rss_mb": peak.peak_mb(),
        "rss_start_mb": peak.start_mb,
        "rss_scope": peak.scope,
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    })
    return out


def run_row(spec: RowSpec, *, isolate: bool = True, info: Optional[dict] = None,
            peaks: Optional[dict] = None) -> dict:
    """One benchmark row: JAX, then (if asked and available) PyTorch in the same process.

    isolate=True runs it in a fresh Python process (cold compile, per-row memory peaks).
    `peaks` ({"float32": GFLOP/s, ...}, see measure_peaks) turns FLOP rates into "% of peak".
    """
    if isolate:
        raw = _run_child(["_row", spec.to_json()])
    else:
        raw = _row_in_process(spec)
    return _finish_row(spec, raw, info or machine_info(), peaks or {})


def _row_in_process(spec: RowSpec) -> dict:
    raw = {"jax": bench_jax(spec)}
    gc.collect()
    if spec.torch:
        ok, why = torch_status()
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


def _run_child(args: list[str], env: Optional[dict] = None) -> dict:
    """Runs `python -m dpt_jax.bench <args>` and returns the JSON it prints after ROW_MARKER."""
    proc = subprocess.run([sys.executable, "-m", "dpt_jax.bench", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(ROW_MARKER):
            return json.loads(line[len(ROW_MARKER):])
    raise RuntimeError(f"benchmark child {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


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


# ---------------------------------------------------------------------------------------------
# Startup: a fresh process's time to the first result, cold and with a warm persistent cache

_STARTUP_CHILD = r"""
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
from dpt_jax.bench import random_params
from dpt_jax.registry import config_from_json
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
    from dpt_jax.bench import trace_forward
    t = time.perf_counter()
    trace_forward(config, spec["height"], spec["width"], spec["batch"], spec["dtype"]).lower()
    trace_lower_s = time.perf_counter() - t
print("%s" + json.dumps({"import_s": t_import - t_start, "model_s": t_model - t_import,
                         "first_call_s": t_first - t_model, "in_process_s": t_first - t_start,
                         "trace_lower_s": trace_lower_s}), flush=True)
""" % ROW_MARKER


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
            t = time.perf_counter()
            spec["measure_trace"] = i == runs - 1  # reported for the last (warm) process only
            proc = subprocess.Popen([sys.executable, "-c", _STARTUP_CHILD, json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = None
            child = None
            for line in proc.stdout:
                if line.startswith("FIRST_RESULT") and first is None:
                    first = time.perf_counter() - t
                elif line.startswith(ROW_MARKER):
                    child = json.loads(line[len(ROW_MARKER):])
            err = proc.stderr.read()
            proc.wait()
            if proc.returncode or child is None:
                raise RuntimeError(f"startup child {i + 1} failed (exit {proc.returncode}):\n{err[-4000:]}")
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


# ---------------------------------------------------------------------------------------------
# Converter memory on a synthesized full-size checkpoint

MANIFEST_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "manifests"


def resolve_manifest(name_or_path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        return p
    name = str(name_or_path)
    if not name.startswith("dpt_"):
        name = "dpt_" + name
    p = MANIFEST_DIR / f"{name}.json"
    if not p.is_file():
        known = sorted(x.stem for x in MANIFEST_DIR.glob("*.json")) if MANIFEST_DIR.is_dir() else []
        raise ValueError(f"no manifest {name_or_path!r}; known: {', '.join(known) or '(none found)'}")
    return p


_ST_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16), "float64": ("F64", np.float64),
              "int64": ("I64", np.int64), "int32": ("I32", np.int32), "uint8": ("U8", np.uint8),
              "bool": ("BOOL", np.bool_)}


def synthesize_checkpoint(manifest, path, seed: int = 0, chunk: int = 1 << 24) -> dict:
    """Write a .safetensors file with exactly the keys, shapes and dtypes of a manifest's state_dict,
    filled with random data (floats N(0, 1), integers 0), streaming: one chunk in memory at a time."""
    man = json.loads(Path(manifest).read_text()) if not isinstance(manifest, dict) else manifest
    entries = man["state_dict"]
    header, offset = {}, 0
    for e in entries:
        code, dt = _ST_DTYPES[e["dtype"]]
        nbytes = math.prod(e["shape"]) * np.dtype(dt).itemsize
        header[e["key"]] = {"dtype": code, "shape": list(e["shape"]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for e in entries:
            _, dt = _ST_DTYPES[e["dtype"]]
            left = math.prod(e["shape"])
            while left:
                n = min(left, chunk)
                if np.issubdtype(dt, np.floating):
                    a = rng.standard_normal(n, dtype=np.float32).astype(dt, copy=False)
                else:
                    a = np.zeros(n, dt)
                f.write(a.astype(np.dtype(dt).newbyteorder("<"), copy=False).tobytes())
                left -= n
    return {"keys": len(entries), "tensor_bytes": offset, "file_bytes": os.path.getsize(path)}


_CONVERT_CHILD = r"""
import json, resource, sys, time
from dpt_jax.bench import _status_kb, current_rss_mb
import dpt_jax
from dpt_jax.checkpoint import read_checkpoint, write_converted
src, dst = sys.argv[1], sys.argv[2]
rss_import = current_rss_mb()
t0 = time.perf_counter()
conversion = read_checkpoint(src)
t1 = time.perf_counter()
write_converted(dst, conversion.config, conversion.params)
t2 = time.perf_counter()
def leaves(t):
    for v in t.values():
        yield from leaves(v) if isinstance(v, dict) else (v,)
nbytes = sum(a.nbytes for a in leaves(conversion.params))
count = sum(a.size for a in leaves(conversion.params))
ru_maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
hwm = _status_kb("VmHWM")
print("%s" + json.dumps({"model": conversion.config.name, "param_count": int(count), "param_bytes": int(nbytes),
      "rss_after_import_mb": rss_import, "convert_s": t1 - t0, "write_s": t2 - t1, "ru_maxrss_mb": ru_maxrss_mb,
      "peak_rss_mb": hwm / 1024 if hwm is not None else ru_maxrss_mb,
      "peak_source": "VmHWM" if hwm is not None else "ru_maxrss"}), flush=True)
""" % ROW_MARKER


def convert_memory(manifest, workdir=None, keep: bool = False) -> dict:
    """Peak RSS of a subprocess running convert_checkpoint + write_converted on a synthesized full-size
    checkpoint, and its ratio to the bytes of the converted float32 parameters.

    The peak is the child's own high-water mark (VmHWM). Its ru_maxrss is recorded too, but on Linux
    that value carries over the parent's RSS at fork time through exec (a parent holding 700 MB
    makes every child report >= 700 MB), so it is only an upper bound; elsewhere it is the peak.
    """
    manifest = resolve_manifest(manifest)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="dpt-jax-convert-")
        workdir = own_tmp.name
    workdir = Path(workdir)
    src, dst = workdir / f"{manifest.stem}.synthetic.safetensors", workdir / f"{manifest.stem}.converted.safetensors"
    try:
        t = time.perf_counter()
        synth = synthesize_checkpoint(manifest, src)
        synth_s = time.perf_counter() - t
        proc = subprocess.run([sys.executable, "-c", _CONVERT_CHILD, str(src), str(dst)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child = None
        for line in proc.stdout.splitlines():
            if line.startswith(ROW_MARKER):
                child = json.loads(line[len(ROW_MARKER):])
        if proc.returncode or child is None:
            raise RuntimeError(f"convert child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        out = {"manifest": manifest.stem, "source_file_bytes": synth["file_bytes"], "synthesize_s": synth_s,
               "converted_file_bytes": dst.stat().st_size, **child}
        pb = child["param_bytes"] / 2**20
        out["peak_over_param_bytes"] = child["peak_rss_mb"] / pb
        out["peak_minus_import_over_param_bytes"] = (child["peak_rss_mb"] - child["rss_after_import_mb"]) / pb
        return out
    finally:
        if not keep:
            for p in (src, dst):
                p.unlink(missing_ok=True)
        if own_tmp is not None:
            own_tmp.cleanup()


# ---------------------------------------------------------------------------------------------
# Tables and result files


def _fmt(v, spec=".3g", missing="–"):
    if v is None:
        return missing
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


ROW_COLUMNS = [
    # (header, key, format)
    ("model", "model", None), ("HxW", None, None), ("batch", "batch", None), ("dtype", "dtype", None),
    ("params (M)", "jax_params", "params"), ("GFLOP/img", "gflop_per_image", ".1f"),
    ("compile s", "jax_compile_s", ".1f"), ("median ms", "jax_latency_median_s", "ms"),
    ("min ms", "jax_latency_min_s", "ms"), ("img/s", "jax_throughput_ips", ".3g"),
    ("GFLOP/s", "jax_gflops", ".1f"), ("% peak", "jax_pct_of_peak", ".0f"),
    ("peak RSS MB", "jax_peak_rss_mb", ".0f"), ("dev MB", "jax_device_peak_mb", ".0f"),
    ("torch dtype", "torch_dtype", None), ("torch median ms", "torch_latency_median_s", "ms"),
    ("torch min ms", "torch_latency_min_s", "ms"), ("torch img/s", "torch_throughput_ips", ".3g"),
    ("torch GFLOP/s", "torch_gflops", ".1f"), ("torch % peak", "torch_pct_of_peak", ".0f"),
    ("torch peak RSS MB", "torch_peak_rss_mb", ".0f"), ("params match", "params_match", None),
    ("jax/torch", "jax_over_torch", ".2f"),
    ("date", "date", "date"), ("machine", "machine", None), ("jax", "jax_version", None),
    ("torch", "torch_version", None),
]


def format_rows(rows: list[dict]) -> str:
    """The markdown table of benchmark rows (one line per row; every column is in README.md)."""
    lines = ["| " + " | ".join(h for h, _, _ in ROW_COLUMNS) + " |",
             "|" + "|".join("---" if f is None else "---:" for _, _, f in ROW_COLUMNS) + "|"]
    for r in rows:
        cells = []
        for _, key, f in ROW_COLUMNS:
            if key is None:
                cells.append(f"{r['height']}x{r['width']}")
                continue
            v = r.get(key)
            if f == "ms":
                cells.append(_fmt(None if v is None else v * 1e3, ".1f"))
            elif f == "params":
                cells.append(_fmt(None if v is None else v / 1e6, ".2f"))
            elif f == "date":
                cells.append(str(v)[:10] if v else "–")
            elif key == "params_match":
                cells.append("–" if v is None else ("yes" if v else f"NO ({r.get('torch_params_used')})"))
            else:
                cells.append(_fmt(v, f or ""))
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({r["torch_skipped"] for r in rows if r.get("torch_skipped")})
    for n in notes:
        lines.append(f"\nPyTorch side skipped: {n}")
    return "\n".join(lines)


def format_startup(results: list[dict]) -> str:
    lines = ["| model | HxW | batch | dtype | import s | cold first call s | cold wall s | warm first call s | "
             "warm wall s | speed-up | trace+lower s | cache entries |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['height']}x{r['width']} | {r['batch']} | {r['dtype']} | "
                     f"{r['runs'][0]['import_s']:.1f} | {r['cold_compile_s']:.1f} | {r['cold_wall_s']:.1f} | "
                     f"{r['warm_first_call_s']:.1f} | {r['warm_wall_s']:.1f} | {r['speedup']:.1f}x | "
                     f"{r['runs'][-1]['trace_lower_s']:.1f} | {r['runs'][-1]['cache_entries_after']} |")
    return "\n".join(lines)


def format_convert(results: list[dict]) -> str:
    lines = ["| manifest | parameters | param MB | source MB | RSS after import MB | peak RSS MB | "
             "peak / param bytes | (peak - import) / param bytes | convert s | write s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['manifest']} | {r['param_count']:,} | {r['param_bytes'] / 2**20:.0f} | "
                     f"{r['source_file_bytes'] / 2**20:.0f} | {r['rss_after_import_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_over_param_bytes']:.2f} | "
                     f"{r['peak_minus_import_over_param_bytes']:.2f} | {r['convert_s']:.1f} | {r['write_s']:.1f} |")
    return "\n".join(lines)


def format_peaks(measured: list[dict]) -> str:
    return "; ".join(f"{m['framework']} {m['dtype']} {m['n']}^3 matmul: {m['gflops']:.1f} GFLOP/s" for m in measured)


def write_results(kind: str, results: list[dict], info: dict, outdir=DEFAULT_RESULTS_DIR, *,
                  table: Optional[str] = None, extra: Optional[dict] = None, date: Optional[str] = None) -> tuple[Path, Path]:
    """Append one run (a markdown section and a JSON record) to <outdir>/<machine>-<date>.md and .json."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now().astimezone()
    date = date or now.date().isoformat()
    stem = f"{info['machine']}-{date}"
    md, js = outdir / f"{stem}.md", outdir / f"{stem}.json"
    formatter = {"rows": format_rows, "startup": format_startup, "convert-memory": format_convert}.get(kind)
    table = table if table is not None else (formatter(results) if formatter else json.dumps(results, indent=1))
    header = [f"## {kind}: {now.isoformat(timespec='seconds')}", "",
              f"- machine: {machine_label(info)}, {info.get('total_memory_gb')} GB RAM, backend {info['backend']}",
              f"- versions: jax {info['jax']}, jaxlib {info['jaxlib']}, flax {info['flax']}, numpy {info['numpy']}, "
              f"torch {info.get('torch') or '–'}, transformers {info.get('transformers') or '–'}, "
              f"python {info['python']}"]
    for k, v in (extra or {}).items():
        header.append(f"- {k}: {v}")
    new_file = not md.exists()
    with open(md, "a") as f:
        if new_file:
            f.write(f"# dpt-jax benchmarks: {machine_label(info)}, {date}\n\n")
        f.write("\n".join(header) + "\n\n" + table + "\n\n")
    record = {"kind": kind, "time": now.isoformat(timespec="seconds"), "info": info, "extra": extra or {},
              "results": results}
    data = {"runs": []}
    if js.exists():
        try:
            data = json.loads(js.read_text())
        except json.JSONDecodeError:
            js.rename(js.with_suffix(".json.corrupt"))
    data.setdefault("runs", []).append(record)
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, js)
    return md, js


# ---------------------------------------------------------------------------------------------
# Command line


def _csv(cast):
    def parse(text):
        try:
            return [cast(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpt-jax bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="MODEL is a preset (beit_large_512, swin2_tiny_256, ...; with or without "
                                       "'dpt_') or mini_beit / mini_swin2, optionally @S or @HxW for the input "
                                       "size (default: native).")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="benchmark rows: JAX and PyTorch latency, throughput, memory, GFLOP/s")
    r.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    r.add_argument("--batch", type=_csv(int), default=[1], help="comma-separated batch sizes (default 1)")
    r.add_argument("--dtype", type=_csv(str), default=["float32"], help="float32 and/or bfloat16 (default float32)")
    r.add_argument("--repeats", type=int, default=5, help="timed calls per row (default 5)")
    r.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one (default 1)")
    r.add_argument("--no-torch", action="store_true", help="skip the PyTorch (transformers) side")
    r.add_argument("--torch-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    r.add_argument("--torch-attn", default="auto", choices=["auto", "sdpa", "eager"],
                   help="transformers attention implementation (default auto: sdpa for BEiT, eager for SwinV2, "
                        "whose transformers backbone has no other)")
    r.add_argument("--threads", type=int, help="torch threads (default: the cores JAX uses)")
    r.add_argument("--precision", choices=["default", "high", "highest"],
                   help="jax_default_matmul_precision (default: leave JAX's default)")
    r.add_argument("--peak-size", type=int, help="matmul size for the peak (default 2048 on CPU, 8192 on GPU)")
    r.add_argument("--peak-repeats", type=int, default=5)
    r.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    r.add_argument("--in-process", action="store_true", help="run every row in this process (warm caches!)")
    r.add_argument("--no-xla-flops", action="store_true", help="skip XLA's cost analysis of each row")
    _add_output_args(r)

    f = sub.add_parser("flops", help="analytic FLOP count per stage, checked against the traced program and XLA")
    f.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    f.add_argument("--batch", type=int, default=1)
    f.add_argument("--dtype", default="float32", choices=DTYPES)
    f.add_argument("--xla", choices=["compiled", "lowered", "none"], default="lowered",
                   help="XLA cost analysis of the optimized executable (compiles: slow for large models), "
                        "of the unoptimized HLO (default), or none")
    f.add_argument("--breakdown", action="store_true", help="print the per-component table")

    s = sub.add_parser("startup", help="fresh-process time to first result: cold vs warm persistent compilation cache")
    s.add_argument("models", nargs="+", metavar="MODEL[@HxW]")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--dtype", default="float32", choices=DTYPES)
    s.add_argument("--runs", type=int, default=2, help="processes in a row sharing one cache (default 2)")
    s.add_argument("--cache-dir", help="cache folder to use (default: a fresh temporary one per model)")
    _add_output_args(s)

    c = sub.add_parser("convert-memory", help="peak RSS of converting a synthesized full-size checkpoint")
    c.add_argument("manifests", nargs="+", metavar="MANIFEST",
                   help="manifest name (dpt_beit_large_512, swin2_tiny_256, ...) or path to a manifest .json")
    c.add_argument("--workdir", help="where the synthetic and converted files go (default: a temporary folder)")
    _add_output_args(c)

    k = sub.add_parser("peak", help="measure the matmul peak only")
    k.add_argument("--dtype", type=_csv(str), default=["float32"])
    k.add_argument("--size", type=int)
    k.add_argument("--repeats", type=int, default=5)
    k.add_argument("--no-torch", action="store_true")
    return p


def _add_output_args(p):
    p.add_argument("--out", default=str(DEFAULT_RESULTS_DIR),
                   help=f"results folder (default {DEFAULT_RESULTS_DIR}: <machine>-<date>.md/.json appended)")
    p.add_argument("--no-write", action="store_true", help="print only, write no results file")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    for dt in args.dtype:
        if dt not in DTYPES:
            raise ValueError(f"--dtype must be among {', '.join(DTYPES)}; got {dt!r}")
    specs = []
    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        for b in args.batch:
            for dt in args.dtype:
                specs.append(RowSpec(model=text.split("@")[0], config=config, height=h, width=w, batch=b, dtype=dt,
                                     repeats=args.repeats, warmup=args.warmup, torch=not args.no_torch,
                                     torch_dtype=args.torch_dtype, torch_attn=args.torch_attn, threads=args.threads,
                                     xla_flops=not args.no_xla_flops, matmul_precision=args.precision))
    info = machine_info()
    peaks, measured = ({}, [])
    if not args.no_peak:
        _log("measuring the matmul peak ...")
        peaks, measured = measure_peaks(args.dtype, n=args.peak_size, repeats=args.peak_repeats,
                                        with_torch=not args.no_torch, threads=args.threads)
        _log(format_peaks(measured))
    rows, failures = [], []
    for spec in specs:
        label = f"{spec.model} {spec.height}x{spec.width} batch {spec.batch} {spec.dtype}"
        _log(f"row: {label} ...")
        try:
            row = run_row(spec, isolate=not args.in_process, info=info, peaks=peaks)
        except (RuntimeError, MemoryError) as e:  # one failed row (e.g. out of memory) must not lose the others
            failures.append(f"{label}: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
            _log(f"  FAILED: {e}")
            continue
        rows.append(row)
        _log(f"  jax median {row['jax_latency_median_s'] * 1e3:.1f} ms"
             + (f", torch median {row['torch_latency_median_s'] * 1e3:.1f} ms" if "torch_latency_median_s" in row
                else f", torch: {row.get('torch_skipped')}"))
    table = format_rows(rows)
    if failures:
        table += "\n\nFailed rows:\n" + "\n".join(f"- {f}" for f in failures)
    extra = {"matmul peak": format_peaks(measured) or "not measured",
             "rows": "isolated (one fresh process per row)" if not args.in_process else "in one process",
             "torch threads": args.threads or jax_cores()}
    matches = {r["model"]: r.get("params_match") for r in rows if "params_match" in r}
    if matches:
        extra["parameter counts"] = "; ".join(
            f"{m}: ours {next(r['jax_params'] for r in rows if r['model'] == m):,} vs transformers "
            f"{next(r['torch_params_used'] for r in rows if r['model'] == m):,} used "
            f"({next(r['torch_params_total'] for r in rows if r['model'] == m):,} total) -> "
            f"{'match' if ok else 'MISMATCH'}" for m, ok in matches.items())
    print(table)
    for k, v in extra.items():
        print(f"{k}: {v}")
    if not args.no_write and rows:
        md, js = write_results("rows", rows, info, args.out, table=table, extra=extra)
        print(f"wrote {md} and {js}")
    return 1 if failures else 0


def cmd_flops(args) -> int:
    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        fc = flop_count(config, h, w, args.batch)
        print(f"{config.name} at {h}x{w}, batch {args.batch}: {fc.total / 1e9:.3f} GFLOP "
              f"({fc.per_image / 1e9:.3f} per image; with padding taps "
              f"{flop_count(config, h, w, args.batch, padding_taps=True).total / 1e9:.3f})")
        if args.breakdown:
            print(fc.table())
        tr = trace_forward(config, h, w, args.batch, args.dtype)
        traced = traced_flops(config, h, w, args.batch, args.dtype, traced=tr)["total"]
        print(f"  traced dot_general + conv: {traced / 1e9:.3f} GFLOP ({100 * (traced / fc.total - 1):+.3f} %)")
        if args.xla != "none":
            x = xla_flops(config, h, w, args.batch, args.dtype, compiled=args.xla == "compiled", traced=tr)
            print(f"  XLA cost_analysis ({args.xla}): {x / 1e9:.3f} GFLOP ({100 * (x / fc.total - 1):+.2f} %: "
                  "XLA also counts elementwise ops)")
        ok, why = torch_status()
        if ok:
            tf = torch_flop_count(config, h, w, args.batch)
            dense = flop_count(config, h, w, args.batch, padding_taps=True, original_order=True).total
            print(f"  torch FlopCounterMode on transformers' DPT: {tf / 1e9:.3f} GFLOP "
                  f"({100 * (tf / dense - 1):+.3f} % vs the analytic count of the original's order, padding taps)")
        else:
            print(f"  torch FLOP count skipped: {why}")
    return 0


def cmd_startup(args) -> int:
    info = machine_info()
    results = []
    for text in args.models:
        config, (h, w) = parse_model_spec(text)
        _log(f"startup: {config.name} {h}x{w} batch {args.batch} {args.dtype} ({args.runs} processes) ...")
        r = startup_times(config, h, w, args.batch, args.dtype, cache_dir=args.cache_dir, runs=args.runs)
        r["model"] = text.split("@")[0]
        results.append(r)
    table = format_startup(results)
    print(table)
    if not args.no_write:
        md, js = write_results("startup", results, info, args.out, table=table)
        print(f"wrote {md} and {js}")
    return 0


def cmd_convert_memory(args) -> int:
    info = machine_info()
    results = []
    for m in args.manifests:
        _log(f"convert-memory: {m} ...")
        results.append(convert_memory(m, args.workdir))
    table = format_convert(results)
    print(table)
    if not args.no_write:
        md, js = write_results("convert-memory", results, info, args.out, table=table)
        print(f"wrote {md} and {js}")
    return 0


def cmd_peak(args) -> int:
    _, measured = measure_peaks(args.dtype, n=args.size, repeats=args.repeats, with_torch=not args.no_torch)
    for m in measured:
        print(f"{m['framework']} {m['dtype']} {m['n']}x{m['n']} matmul: {m['gflops']:.1f} GFLOP/s "
              f"(best of {args.repeats}: {m['seconds'] * 1e3:.1f} ms)")
    return 0


def main(argv: Optional[list] = None) -> int:
    """`dpt-jax bench` entry point: parses `argv` (without the program name) and returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_row":  # internal: one isolated row, JSON on stdout
        raw = _row_in_process(RowSpec.from_json(argv[1]))
        print(ROW_MARKER + json.dumps(raw, default=str), flush=True)
        return 0
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "flops": cmd_flops, "startup": cmd_startup,
               "convert-memory": cmd_convert_memory, "peak": cmd_peak}[args.command]
    from .cli import run_reporting_errors

    return run_reporting_errors(f"bench {args.command}", handler, args)


if __name__ == "__main__":
    sys.exit(main())
