"""What every MiDaS v3.1 DPT checkpoint shares, whatever its encoder family: the neck's names, its
Hugging Face names and config.json top level, and where the releases are published.

The encoder's keys are each family's business (convert/<family>.py); what follows the encoder
is named the same way in every MiDaS DPT checkpoint:

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

from ..family import Release
from .hf import Rename, as_transformers_factors, fusion_rules, same_names
from .keys import Entry, Skip, conv, linear, shape_of

RELEASE_URL = "https://github.com/isl-org/MiDaS/releases/download/v3_1/{name}.pt"
LICENCE = "MIT"  # the MiDaS repository's, which publishes the weights


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
    return {"fusion_features": shape(state, "scratch.layer1_rn.weight", path, 4)[0],
            "head_features": shape(state, "scratch.output_conv.2.weight", path, 4)[0]}


def shape(state: Mapping, key: str, path, ndim: int) -> tuple[int, ...]:
    return shape_of(state, key, path, ndim, "MiDaS v3.1 DPT checkpoint")


def release(name: str, approx_bytes: int):
    """The GitHub release asset of MiDaS v3.1 model `name` (a preset name)."""
    return Release(name, f"{name}.pt", approx_bytes, LICENCE, url=RELEASE_URL.format(name=name))


def short_names(presets) -> dict:
    """"beit_large_512" for "dpt_beit_large_512": the MiDaS names without their prefix."""
    return {p.name.removeprefix("dpt_"): p.name for p in presets if p.name.startswith("dpt_")}


# -- the Hugging Face layout of the neck and head (transformers' DPTForDepthEstimation) ---------------


def hf_neck_rules() -> list:
    rules = []
    for n in range(1, 5):
        o, h = f"pretrained.act_postprocess{n}", "neck.reassemble_stage"
        rules += [same_names(f"{o}.0.project.0", f"{h}.readout_projects.{n - 1}.0"),
                  same_names(f"{o}.3", f"{h}.layers.{n - 1}.projection"),
                  same_names(f"{o}.4", f"{h}.layers.{n - 1}.resize"),
                  Rename(f"scratch.layer{n}_rn.weight", f"neck.convs.{n - 1}.weight")]
    return rules + fusion_rules("scratch.") + [same_names(f"scratch.output_conv.{i}", f"head.head.{i}")
                                               for i in (0, 2, 4)]


def hf_dpt_config(config, backbone: dict, *, reassemble_factors, readout: str) -> dict:
    """transformers' DPTConfig fields around `backbone` (what its save_pretrained writes).

    `reassemble_factors` and `readout` as transformers takes them (its SwinV2 path ignores both).
    """
    if config.head_features != 32:
        raise ValueError(f"{config.name}: transformers' DPT head has 32 hidden channels; this model has "
                         f"{config.head_features}, so it has no transformers equivalent")
    return {
        "add_projection": False, "architectures": ["DPTForDepthEstimation"], "attention_probs_dropout_prob": 0.0,
        "auxiliary_loss_weight": 0.4, "backbone_config": backbone, "backbone_featmap_shape": None,
        "backbone_out_indices": [2, 5, 8, 11], "dtype": "float32", "fusion_hidden_size": config.fusion_features,
        "head_in_index": -1, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 768, "image_size": 384,
        "initializer_range": 0.02, "intermediate_size": 3072, "is_hybrid": False, "layer_norm_eps": 1e-12,
        "model_type": "dpt", "neck_hidden_sizes": list(config.reassembly_features), "neck_ignore_stages": [],
        "num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": 12, "patch_size": 16,
        "pooler_act": "tanh", "pooler_output_size": 768, "qkv_bias": True, "readout_type": readout,
        "reassemble_factors": as_transformers_factors(reassemble_factors), "semantic_classifier_dropout": 0.1,
        "semantic_loss_ignore_index": 255, "use_auxiliary_head": True, "use_batch_norm_in_fusion_residual": False,
        "use_bias_in_fusion_residual": None,
    }
