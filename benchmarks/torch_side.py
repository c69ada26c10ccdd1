"""The PyTorch side: the Hugging Face transformers model of the same architecture, its timing and FLOPs.

    HF_MODELS            family name -> HFModel (how to build transformers' counterpart of a config)
    torch_status(config) whether the PyTorch side can run here (torch, transformers, a builder)
    hf_model(config)     the transformers model with random weights + a parameter report
    torch_flop_count     FLOPs of that model counted by torch's FlopCounterMode (on the meta device)
    torch_matmul_peak    best GFLOP/s of torch.matmul
    bench_torch(spec)    the torch half of a benchmark row

This is the one place that knows families by name: transformers has one model class per family.
A new family adds one builder function and one line in HF_MODELS; a family without one runs with
its PyTorch columns empty and the reason recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

from dpt_jax.config import DPTConfig
from dpt_jax.timing import cpu_cores, time_calls

from .measure import PeakRSS, run_summary

INSTALL_HINT = "pip install 'dpt-jax[bench]'"


@dataclass(frozen=True)
class HFModel:
    """transformers' counterpart of a family: the model class and a DPTConfig -> transformers config builder."""

    model_class: str  # a transformers class, e.g. "DPTForDepthEstimation"
    build_config: Callable[[DPTConfig], object]  # our config -> the transformers config (no attention choice yet)
    default_attention: str  # what --torch-attn auto picks: "sdpa" where transformers offers it, else "eager"
    #: parameters the forward never calls (counted in the total, not in "used")
    unused_prefixes: tuple[str, ...] = ("neck.fusion_stage.layers.0.residual_layer1.",)


def _dpt_config(config: DPTConfig, backbone, **extra):
    """transformers DPTConfig (MiDaS neck and head) around `backbone`."""
    from transformers import DPTConfig as HFDPTConfig

    return HFDPTConfig(
        backbone_config=backbone, neck_hidden_sizes=list(config.reassembly_features),
        fusion_hidden_size=config.fusion_features, head_in_index=-1, is_hybrid=False,
        use_batch_norm_in_fusion_residual=False, add_projection=False, **extra,
    )


def _factors(config: DPTConfig) -> list:
    """The reassemble factors as transformers takes them: integers for the (transposed) conv sizes, 0.5 as is."""
    return [int(f) if float(f).is_integer() else f for f in config.reassemble_factors]


def hf_beit(config: DPTConfig):
    """MiDaS BEiT: transformers BeitConfig backbone in a DPTConfig with the readout projection."""
    from transformers import BeitConfig as HFBeitConfig

    e = config.encoder
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
    return _dpt_config(config, backbone, reassemble_factors=_factors(config),
                       readout_type=config.readout)


def hf_swinv2(config: DPTConfig):
    """MiDaS SwinV2: transformers Swinv2Config backbone; DPTConfig skips the reassembly for it, as MiDaS does."""
    from transformers import Swinv2Config

    e = config.encoder
    if e.native_size[0] != e.native_size[1]:
        raise ValueError("the transformers SwinV2 comparison supports square native sizes only")
    backbone = Swinv2Config(
        image_size=e.native_size[0], patch_size=e.patch_size, num_channels=3, embed_dim=e.embed_dim,
        depths=list(e.depths), num_heads=list(e.num_heads), window_size=e.window_size,
        pretrained_window_sizes=list(e.pretrained_window_sizes), mlp_ratio=float(e.mlp_ratio),
        qkv_bias=True, hidden_act="gelu", layer_norm_eps=e.layer_norm_eps, use_absolute_embeddings=False,
        drop_path_rate=0.0, out_features=[f"stage{i + 1}" for i in range(len(e.depths))],
    )
    return _dpt_config(config, backbone)


def hf_depth_anything(config: DPTConfig):
    """Depth Anything (V1/V2, relative or metric): DepthAnythingConfig around a Dinov2Config backbone."""
    from transformers import DepthAnythingConfig, Dinov2Config

    e = config.encoder
    if e.mlp_hidden % e.embed_dim:
        raise ValueError(f"transformers' Dinov2 takes an integer mlp_ratio; {e.mlp_hidden} / {e.embed_dim} is not one")
    backbone = Dinov2Config(
        image_size=e.native_grid[0] * e.patch_size, patch_size=e.patch_size, num_channels=3,
        hidden_size=e.embed_dim, num_hidden_layers=max(e.hooks) + 1, num_attention_heads=e.num_heads,
        mlp_ratio=e.mlp_hidden // e.embed_dim, hidden_act="gelu", layer_norm_eps=e.layer_norm_eps,
        layerscale_value=1.0, drop_path_rate=0.0, use_swiglu_ffn=False,
        out_indices=[h + 1 for h in e.hooks],  # stage 0 is the embedding output
        apply_layernorm=True, reshape_hidden_states=False,  # normed tokens with the cls token, as the neck takes them
    )
    metric = config.depth_activation == "sigmoid"
    max_depth = config.max_depth
    if metric and float(max_depth).is_integer():
        max_depth = int(max_depth)  # recent transformers declare max_depth an int (20 indoor, 80 outdoor)
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=e.patch_size, reassemble_hidden_size=e.embed_dim,
        reassemble_factors=_factors(config), neck_hidden_sizes=list(config.reassembly_features),
        fusion_hidden_size=config.fusion_features, head_in_index=-1, head_hidden_size=config.head_features,
        depth_estimation_type="metric" if metric else "relative",
        **({"max_depth": max_depth} if metric else {}),  # relative: transformers' default (1), which it multiplies by
    )


#: family name -> its transformers counterpart. The one table keyed by family names in the harness.
HF_MODELS: dict[str, HFModel] = {
    "beit": HFModel("DPTForDepthEstimation", hf_beit, default_attention="sdpa"),
    # transformers' SwinV2 backbone has only an explicit (eager) attention: scaled cosine attention
    "swinv2": HFModel("DPTForDepthEstimation", hf_swinv2, default_attention="eager"),
    # DepthAnythingForDepthEstimation refuses attn_implementation="sdpa" (transformers 5.23), though its Dinov2 has it
    "dinov2": HFModel("DepthAnythingForDepthEstimation", hf_depth_anything, default_attention="eager",
                      unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.", "backbone.embeddings.mask_token")),
}


def hf_counterpart(config: DPTConfig) -> Optional[HFModel]:
    return HF_MODELS.get(config.family.name)


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
        hf = hf_counterpart(config)
        if hf is None:
            return False, (f"no transformers counterpart is registered for the {config.family.name} family "
                           "(benchmarks/torch_side.py, HF_MODELS)")
        if not hasattr(transformers, hf.model_class):
            return False, f"transformers {transformers.__version__} has no {hf.model_class} ({INSTALL_HINT})"
    return True, ""


def hf_attn_implementation(config: DPTConfig, requested: str = "auto") -> str:
    """transformers' attention implementation: "auto" is the family's default (see HF_MODELS)."""
    return hf_counterpart(config).default_attention if requested == "auto" else requested


def hf_config(config: DPTConfig, attn_implementation: str = "auto"):
    """The transformers config with the architecture of `config`."""
    cfg = hf_counterpart(config).build_config(config)
    attn = hf_attn_implementation(config, attn_implementation)
    cfg.backbone_config._attn_implementation = attn
    cfg._attn_implementation = attn
    return cfg


def _hf_class(config: DPTConfig):
    import transformers

    return getattr(transformers, hf_counterpart(config).model_class)


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
    if hf_counterpart(config).model_class == "DPTForDepthEstimation" and config.head_features != 32:
        report["note"] = f"transformers' DPT head has 32 hidden channels; this config has {config.head_features}"
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
