"""Depth Anything (V1 / V2, relative and metric) checkpoints -> dpt-jax parameter trees: the key tables.

The original state dict has two halves: `pretrained.*` (the DINOv2 ViT, `dpt_jax.dinov2`) and
`depth_head.*` (the DPT neck and head). The neck reuses the MiDaS targets of `convert.midas`
(reassemble/project_i, resample_i, to_fusion_i, fusion/block_i, head/conv1..3), so the DPT
modules of `dpt_jax.dpt` can load it; Depth Anything differs from MiDaS only in behaviour
(readout ignored, head resize to the patch-multiple size, final activation), not in names.

V1 and V2 files hold the same keys and shapes (nothing in a file tells them apart), and the
metric V2 files the same as the relative ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keys import Entry, Skip
from .keys import conv as _conv, linear as _linear, norm as _norm
from .midas import fusion_table, unused_fusion_units

if TYPE_CHECKING:
    from dpt_jax.config import DPTConfig
    from dpt_jax.dinov2 import Dinov2Config

FUSION_BLOCK = "depth_head.scratch.refinenet{i}"


def encoder_key_table(config: Dinov2Config, source: str = "pretrained", target: str = "encoder") -> list[Entry]:
    """Every `pretrained.*` key the DINOv2 encoder uses, mapped onto `dinov2.Dinov2Encoder`'s parameters."""
    t = [
        Entry(f"{source}.cls_token", f"{target}/cls_token", "copy"),
        Entry(f"{source}.pos_embed", f"{target}/pos_embed", "copy"),
    ]
    t += _conv(f"{source}.patch_embed.proj", f"{target}/patch_embed")
    for i in range(max(config.hooks) + 1):
        s, d = f"{source}.blocks.{i}", f"{target}/blocks_{i}"
        t += _norm(f"{s}.norm1", f"{d}/norm1")
        t += _linear(f"{s}.attn.qkv", f"{d}/attn/qkv") + _linear(f"{s}.attn.proj", f"{d}/attn/proj")
        t.append(Entry(f"{s}.ls1.gamma", f"{d}/gamma_1", "copy"))
        t += _norm(f"{s}.norm2", f"{d}/norm2")
        t += _linear(f"{s}.mlp.fc1", f"{d}/mlp/fc1") + _linear(f"{s}.mlp.fc2", f"{d}/mlp/fc2")
        t.append(Entry(f"{s}.ls2.gamma", f"{d}/gamma_2", "copy"))
    return t + _norm(f"{source}.norm", f"{target}/norm")


def head_key_table(config: DPTConfig, source: str = "depth_head") -> list[Entry]:
    """Every `depth_head.*` key the neck and head use, on the same targets as the MiDaS DPT neck.

    projects.k -> reassemble/project_{k+1} (1x1 conv); resize_layers 0, 1 (ConvTranspose k4s4,
    k2s2, weights stored (in, out, k, k)) and 3 (Conv k3s2p1) -> reassemble/resample_{1,2,4}
    (2 is an Identity without weights); scratch.layerK_rn -> reassemble/to_fusion_K (no bias);
    scratch.refinenetK -> fusion/block_K (midas.fusion_table); output_conv1, output_conv2.0,
    output_conv2.2 -> head/conv1..3.
    """
    t = []
    for i in range(1, 5):
        t += _conv(f"{source}.projects.{i - 1}", f"reassemble/project_{i}")
    for i, factor in enumerate(config.reassemble_factors):
        if factor != 1:
            layout = "conv_transpose" if factor > 1 else "conv"
            t += _conv(f"{source}.resize_layers.{i}", f"reassemble/resample_{i + 1}", layout=layout)
    for i in range(1, 5):
        t += _conv(f"{source}.scratch.layer{i}_rn", f"reassemble/to_fusion_{i}", bias=False)
    t += fusion_table(config, f"{source}.scratch.refinenet{{i}}")
    t += _conv(f"{source}.scratch.output_conv1", "head/conv1")
    t += _conv(f"{source}.scratch.output_conv2.0", "head/conv2")
    t += _conv(f"{source}.scratch.output_conv2.2", "head/conv3")
    return t


def key_table(config: DPTConfig) -> list[Entry]:
    """The whole model's table: encoder then neck and head."""
    return encoder_key_table(config.encoder) + head_key_table(config)


def skipped(config: DPTConfig) -> list[Skip]:
    """Keys present in every released file that the forward never uses, with the reason."""
    return [Skip(r"pretrained\.mask_token", "DINOv2's masked-image-modelling token; the depth forward never masks")
            ] + unused_fusion_units(config, FUSION_BLOCK)
