"""The PyTorch side: the Hugging Face transformers model of the same architecture, its timing and FLOPs.

    torch_status(config) whether the PyTorch side can run here (torch, transformers, a layout)
    hf_model(config)     the transformers model with random weights + a parameter report
    torch_flop_count     FLOPs of that model counted by torch's FlopCounterMode (on the meta device)
    torch_matmul_peak    best GFLOP/s of torch.matmul
    bench_torch(spec)    the torch half of a benchmark row

The transformers model is built from the config.json dpt-jax writes for the model
(`convert.hf.hf_config`, the family's `HFLayout`): the same description `save_pretrained` gives,
so the two sides cannot disagree. A family without a layout runs with its PyTorch columns empty
and the reason recorded.
"""

from __future__ import annotations

import math
import time
from typing import Optional

from dpt_jax.config import DPTConfig
from dpt_jax.timing import cpu_cores, time_calls

from .measure import PeakRSS, run_summary

INSTALL_HINT = "pip install 'dpt-jax[bench]'"


def hf_counterpart(config: DPTConfig):
    """The family's transformers layout of the model (family.HFLayout), or None where transformers has none."""
    return config.family.hf_layout_of(config)


def _transformers_fields(config: DPTConfig) -> dict:
    from dpt_jax.convert import hf

    d = hf.hf_config(config)
    return {k: v for k, v in d.items() if k not in ("transformers_version", "exported_by")}


def torch_status(config: Optional[DPTConfig] = None) -> tuple[bool, str]:
    """(available, reason): whether the PyTorch side can run here (for `config`'s family, if given)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False, f"torch is not installed ({INSTALL_HINT})"
    try:
        import transformers
    except ImportError as e:
        return False, f"transformers is not importable ({e}; {INSTALL_HINT})"
    if config is not None:
        layout = hf_counterpart(config)
        if layout is None:
            return False, f"the {config.family.title} family has no Hugging Face layout (family.HFLayout)"
        if not hasattr(transformers, layout.architecture):
            return False, f"transformers {transformers.__version__} has no {layout.architecture} ({INSTALL_HINT})"
        try:
            _transformers_fields(config)
        except ValueError as e:  # an architecture transformers cannot express
            return False, str(e)
    return True, ""


def hf_attn_implementation(config: DPTConfig, requested: str = "auto") -> str:
    """transformers' attention implementation: "auto" is the family's default (HFLayout.default_attention)."""
    return hf_counterpart(config).default_attention if requested == "auto" else requested


def hf_config(config: DPTConfig, attn_implementation: str = "auto"):
    """The transformers config with the architecture of `config`, from the config.json dpt-jax writes for it."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(**_transformers_fields(config))
    attn = hf_attn_implementation(config, attn_implementation)
    cfg.backbone_config._attn_implementation = attn
    cfg._attn_implementation = attn
    return cfg


def _hf_class(config: DPTConfig):
    import transformers

    return getattr(transformers, hf_counterpart(config).architecture)


def hf_model(config: DPTConfig, attn_implementation: str = "auto", seed: int = 0):
    """(the transformers model with random weights, parameter report).

    The report: total parameters, those the forward uses (total minus the family's unused
    prefixes), and whether the latter equals our count.
    """
    import torch

    from dpt_jax.dpt import param_shapes

    torch.manual_seed(seed)
    model = _hf_class(config)(hf_config(config, attn_implementation)).eval()
    unused_prefixes = hf_counterpart(config).unused_prefixes
    total = sum(p.numel() for p in model.parameters())
    unused = sum(p.numel() for n, p in model.named_parameters() if n.startswith(unused_prefixes))
    ours = sum(math.prod(s) for s in param_shapes(config).values())
    report = {"torch_params_total": int(total), "torch_params_used": int(total - unused),
              "params_ours": int(ours), "params_match": int(total - unused) == int(ours),
              "torch_attn": model.backbone.config._attn_implementation}
    return model, report


def torch_flop_count(config: DPTConfig, height: int, width: int, batch: int = 1) -> Optional[int]:
    """FLOPs of the transformers model of the same architecture, counted by torch's FlopCounterMode.

    The model is built on the meta device (shapes only: instant, no memory) and run once. torch
    counts every matmul, convolution (the dense out_h x out_w x k x k taps, padding included) and
    attention product, so this equals `flop_count(..., padding_taps=True, original_order=True)`
    when both models do the same work. None where the PyTorch side cannot run.
    """
    if not torch_status(config)[0]:
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = _hf_class(config)(hf_config(config)).eval()
        x = torch.empty(batch, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=x)
    return int(counter.get_total_flops())


def torch_matmul_peak(n: Optional[int] = None, repeats: int = 5, dtype: str = "float32",
                      threads: Optional[int] = None) -> Optional[dict]:
    """Best-of-`repeats` GFLOP/s of torch.matmul (CPU with `threads` threads, or CUDA); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    if n is None:
        n = 8192 if cuda else 2048
    torch.set_num_threads(threads or cpu_cores())
    dev = "cuda" if cuda else "cpu"
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, tdt)
    b = torch.randn(n, n, generator=g).to(dev, tdt)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def call():
        torch.matmul(a, b)
        sync()

    with torch.inference_mode():
        call()
        best = min(time_calls(call, repeats, 0))
    return {"n": n, "dtype": dtype, "seconds": best, "gflops": 2 * n**3 / best / 1e9, "framework": "torch"}


def bench_torch(spec) -> dict:
    """The torch half of a row: the transformers model of the same architecture (see hf_model), timed alike."""
    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    tdt = spec.torch_dtype
    if tdt == "auto":
        tdt = "float16" if cuda and spec.dtype != "float32" else "float32"
    threads = spec.threads or cpu_cores()
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = PeakRSS().start()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, report = hf_model(spec.config, spec.torch_attn, spec.seed)
    model = model.to(dev, getattr(torch, tdt))
    g = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(spec.batch, 3, spec.height, spec.width, generator=g).to(dev, getattr(torch, tdt))

    def call():
        model(pixel_values=x).predicted_depth
        sync()

    with torch.inference_mode():
        t = time.perf_counter()
        call()
        first_s = time.perf_counter() - t
        times = time_calls(call, spec.repeats, spec.warmup)
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
        **run_summary(times, y, peak),
        "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    })
    return out
