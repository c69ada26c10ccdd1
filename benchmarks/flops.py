"""FLOPs of one forward pass, counted three ways that must agree.

    flop_count(config, H, W, batch)    analytic, per component: the family counts its encoder
                                       (`config.family.encoder_flops`), the neck and head are
                                       counted from the config's fields
    traced_flops(config, H, W, ...)    every dot_general / conv of the traced program
    xla_flops(config, H, W, ...)       XLA's own cost analysis
    flop_check(...)                    the three side by side

The traced program is `dpt_jax.dpt.forward`, the function DepthModel runs, with the
parameters in the dtypes `cast_params` gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpt_jax.config import DPTConfig


def valid_taps(n: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
    """Along one axis: the (output position, kernel tap) pairs that read a real input element, not padding."""
    out = conv_out(n, k, stride, pad_lo, pad_hi)
    return sum(1 for o in range(out) for t in range(k) if 0 <= o * stride - pad_lo + t < n)


def conv_out(n: int, k: int, stride: int, pad_lo: int, pad_hi: int) -> int:
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


def token_widths(config: DPTConfig) -> list[int]:
    """The widths of the tokens a token encoder hands the four stages, read off the projections' kernels."""
    from dpt_jax.dpt import param_shapes

    shapes = param_shapes(config)
    return [shapes[f"reassemble/project_{i}/kernel"][2] for i in range(1, 5)]  # kernel (1, 1, C, d)


def flop_count(config: DPTConfig, height: int, width: int, batch: int = 1, *, padding_taps: bool = False,
               original_order: bool = False) -> FlopCount:
    """Analytic FLOP count (2 x MACs) of DPT(config) on a (batch, height, width, 3) input, per component.

    Encoder: whatever its family counts (`EncoderFamily.encoder_flops`, e.g. SwinV2 attention on the
    padded window grid). Neck and head, from the config: the readout projection (readout "project"),
    the 1x1 projections and the resampling by `reassemble_factors` (transposed convolution,
    2 x h x w x in x out x k^2, for x4/x2; a strided 3x3 conv for x1/2) of token encoders, the 3x3
    convs to the fusion width, the fusion blocks' residual units (`fusion_residual`) and 1x1 output
    convs, and the head ("midas": x2 between its convs; "depth_anything": to the input's size).
    Convolutions count the kernel taps that land on the input; `padding_taps=True` also those on the
    zero padding (the dense out_h x out_w x k x k count). The fusion blocks' 1x1 out_conv is counted
    before the resize, where dpt-jax runs it; `original_order=True` counts it after the resize, as
    MiDaS and transformers run it.

    Not counted (not multiply-accumulates): norms, softmax, GELU/ReLU, residual and bias adds,
    layer scale, the bilinear resizes, the position-bias gathers.
    """
    config.check_input_size(height, width)
    comps: dict = {}
    B = batch

    def add(name, flops):
        comps[name] = comps.get(name, 0) + int(flops)

    def conv(name, hw, cin, cout, k, stride=1, pad=0):
        h, w = hw
        if padding_taps:
            taps = conv_out(h, k, stride, pad, pad) * conv_out(w, k, stride, pad, pad) * k * k
        else:
            taps = valid_taps(h, k, stride, pad, pad) * valid_taps(w, k, stride, pad, pad)
        add(name, 2 * B * cin * cout * taps)
        return conv_out(h, k, stride, pad, pad), conv_out(w, k, stride, pad, pad)

    F = config.fusion_features
    grids = config.family.encoder_flops(config.encoder, height, width, batch, add)
    if config.family.outputs_tokens:  # one patch grid (h, w): reassemble the tokens into four maps
        h, w = grids
        T = h * w
        maps = []
        for C, d, factor in zip(token_widths(config), config.reassembly_features, config.reassemble_factors):
            if config.readout == "project":
                add("reassemble.readout", 2 * B * T * (2 * C) * C)
            add("reassemble.project", 2 * B * T * C * d)
            if factor > 1:
                k = int(factor)
                add("reassemble.resample", 2 * B * T * d * d * k * k)
                maps.append((h * k, w * k))
            elif factor < 1:
                maps.append(conv("reassemble.resample", (h, w), d, d, 3, stride=int(round(1 / factor)), pad=1))
            else:
                maps.append((h, w))
    else:  # four maps already, one per stage
        maps = [tuple(g) for g in grids]
    for size, d in zip(maps, config.reassembly_features):
        conv("reassemble.to_fusion", size, d, F, 3, pad=1)
    # Fusion, coarse to fine: a block with a residual input has two residual units, one without has one;
    # every block resizes to the next finer map's size (block 1: x2) with a 1x1 conv.
    for i in (4, 3, 2, 1):
        size = maps[i - 1]
        for _ in range(4 if config.fusion_residual[i - 1] else 2):
            conv("fusion.residual_units", size, F, F, 3, pad=1)
        out = maps[i - 2] if i > 1 else (2 * size[0], 2 * size[1])
        at = out if original_order else size  # dpt-jax convolves before resizing (they commute)
        add("fusion.out_conv", 2 * B * at[0] * at[1] * F * F)
    size = (2 * maps[0][0], 2 * maps[0][1])  # the fused map
    conv("head.conv1", size, F, F // 2, 3, pad=1)
    size = (2 * size[0], 2 * size[1]) if config.head == "midas" else (height, width)
    conv("head.conv2", size, F // 2, config.head_features, 3, pad=1)
    add("head.conv3", 2 * B * size[0] * size[1] * config.head_features)
    return FlopCount(config.name, height, width, batch, comps, padding_taps)


# ---------------------------------------------------------------------------------------------
# Independent counts: the traced program and XLA's cost analysis


def abstract_params(config: DPTConfig, dtype: str = "float32"):
    """The parameters as `dpt_jax.dpt.forward` takes them (float32 whatever the compute `dtype`), as shapes only."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from dpt_jax.dpt import param_shapes

    return traverse_util.unflatten_dict({k: jax.ShapeDtypeStruct(s, jnp.float32)
                                         for k, s in param_shapes(config).items()}, sep="/")


def trace_forward(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32"):
    """`jax.jit(dpt_jax.dpt.forward)` traced on abstract inputs (`jax.stages.Traced`): nothing is allocated."""
    import jax
    import jax.numpy as jnp

    from dpt_jax.dpt import forward

    images = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    return jax.jit(lambda params, x: forward(config, params, x, dtype)).trace(abstract_params(config, dtype), images)


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
        taps *= out[dn.out_spec[2 + i]] * k if padding_taps else valid_taps(n, k, s, lo, hi)
    return 2 * batch * cout * cin_per_group * taps


def xla_flops(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
              *, compiled: bool = True, traced=None) -> float:
    """XLA's `cost_analysis()['flops']` of the jitted forward: of the optimized executable
    (`compiled=True`: `jax.jit(f).lower(...).compile().cost_analysis()`), or of the unoptimized
    HLO (`compiled=False`: no compilation, seconds instead of minutes for the large models; it
    differs from the compiled count only in elementwise ops that the optimizer folds away)."""
    lowered = (traced or trace_forward(config, height, width, batch, dtype)).lower()
    return cost_flops(lowered.compile() if compiled else lowered)


def cost_flops(stage) -> float:
    """`flops` of a lowered or compiled stage's cost analysis (older JAX: a list of one dict per computation)."""
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def flop_check(config: DPTConfig, height: int, width: int, batch: int = 1, dtype: str = "float32",
               *, compiled: bool = True) -> dict:
    """The analytic count next to the traced count and XLA's cost analysis.

    Expected: analytic == traced exactly (same operations, same convention). XLA's number is
    higher, systematically: HloCostAnalysis also counts one FLOP per element of every elementwise
    op (norms, softmax, GELU's erf polynomial, residual/bias/layer-scale ops, the resize blends),
    which the analytic count leaves out. The excess is the elementwise work relative to the
    matmul work: ~1-3 % at real widths (and for the mini configs), 5-12 % for very narrow toy models.
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
