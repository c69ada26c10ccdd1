"""The MiDaS v3.1 names of the DPT neck and head (shared by its BEiT and SwinV2 checkpoints).

The encoder's keys are each family's business (beit.py, swinv2.py); what follows the encoder is
named the same way in every MiDaS DPT checkpoint:

    pretrained.act_postprocess{i}.0.project.0   readout projection (readout "project")
    pretrained.act_postprocess{i}.3 / .4        1x1 projection / resampling (token encoders)
    scratch.layer{i}_rn                         3x3 conv to the fusion width, no bias
    scratch.refinenet{i}.resConfUnit{1,2}, .out_conv   fusion blocks
    scratch.output_conv.{0,2,4}                 head
Every name is derived from the same DPTConfig fields the Flax modules read.
"""

from __future__ import annotations

import re
from typing import Mapping

from ..errors import ConversionError
from .keys import Entry, Skip, conv, linear


def neck_table(config) -> list[Entry]:
    """Source keys of the reassembly, fusion and head of a MiDaS DPT checkpoint, with their Flax paths."""
    t = []
    tokens = config.family.outputs_tokens
    for i, factor in enumerate(config.reassemble_factors, start=1):
        if tokens:
            s = f"pretrained.act_postprocess{i}"
            if config.readout == "project":
                t += linear(f"{s}.0.project.0", f"reassemble/readout_{i}/dense")
            t += conv(f"{s}.3", f"reassemble/project_{i}")
            if factor > 1:
                t += conv(f"{s}.4", f"reassemble/resample_{i}", layout="conv_transpose")
            elif factor < 1:
                t += conv(f"{s}.4", f"reassemble/resample_{i}")
        t += conv(f"scratch.layer{i}_rn", f"reassemble/to_fusion_{i}", bias=False)
    t += fusion_table(config, "scratch.refinenet{i}")
    for src, dst in ((0, 1), (2, 2), (4, 3)):
        t += conv(f"scratch.output_conv.{src}", f"head/conv{dst}")
    return t


def fusion_table(config, block: str) -> list[Entry]:
    """The fusion blocks' keys; `block` is the source name of block i, e.g. "scratch.refinenet{i}"."""
    t = []
    for i, residual in enumerate(config.fusion_residual, start=1):
        s, d = block.format(i=i), f"fusion/block_{i}"
        for unit in (1, 2) if residual else (2,):
            for c in (1, 2):
                t += conv(f"{s}.resConfUnit{unit}.conv{c}", f"{d}/rcu{unit}/conv{c}")
        t += conv(f"{s}.out_conv", f"{d}/out_conv")
    return t


def unused_fusion_units(config, block: str) -> list[Skip]:
    """The residual units the fusion blocks without a residual input never call (the deepest one's rcu1)."""
    return [Skip(re.escape(block.format(i=i)) + r"\.resConfUnit1\.conv[12]\.(weight|bias)",
                 "the deepest fusion block has no residual input: its first residual unit is never called")
            for i, residual in enumerate(config.fusion_residual, start=1) if not residual]


NECK_SKIPS = [Skip(r"pretrained\.model\.head\.(weight|bias)", "the classifier of the pretraining (timm)")]


def neck_widths(state: Mapping, path) -> dict:
    """The neck and head widths a MiDaS checkpoint declares: fusion_features and head_features."""
    return {"fusion_features": shape(state, "scratch.layer1_rn.weight", path)[0],
            "head_features": shape(state, "scratch.output_conv.2.weight", path)[0]}


def shape(state: Mapping, key: str, path) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(path, f"not a MiDaS v3.1 BEiT/SwinV2 DPT checkpoint: key {key!r} is missing")
    return tuple(state[key].shape)
