"""MiDaS v3.1 DPT-BEiT checkpoints: key table, recognition and detection, Hugging Face layout, releases.

The network is `dpt_jax.beit`; this module ends with the family object that joins the two.
"""

from __future__ import annotations

import math
import re

from ..beit import MINI, PRESETS, BeitConfig, BeitEncoder, encoder_peak_bytes
from ..config import DPTConfig
from ..errors import ConversionError
from ..family import EncoderFamily, HFLayout, vit_encoder_flops
from . import keys, midas
from .hf import PRETRAINED_FIELDS, Fields, HFModel, Rename, hooks_of, qkv_rules, same_names, stage_fields
from .keys import Entry, Skip


def key_table(config: DPTConfig) -> list[Entry]:
    c = config.encoder
    t = [Entry("pretrained.model.cls_token", "encoder/cls_token", "copy")]
    t += keys.conv("pretrained.model.patch_embed.proj", "encoder/patch_embed")
    for i in range(max(c.hooks) + 1):
        s, d = f"pretrained.model.blocks.{i}", f"encoder/blocks_{i}"
        t += [Entry(f"{s}.gamma_1", f"{d}/gamma_1", "copy"), Entry(f"{s}.gamma_2", f"{d}/gamma_2", "copy")]
        t += keys.norm(f"{s}.norm1", f"{d}/norm1") + keys.norm(f"{s}.norm2", f"{d}/norm2")
        t.append(Entry(f"{s}.attn.relative_position_bias_table", f"{d}/attn/relative_position_bias_table", "copy"))
        t += keys.biased_qkv_and_mlp(s, d) + keys.linear(f"{s}.attn.proj", f"{d}/attn/proj")
    return t + midas.neck_table(config)


def skipped(config: DPTConfig) -> list[Skip]:
    return [
        Skip(r"pretrained\.model\.blocks\.\d+\.attn\.relative_position_index",
             "a buffer of constants: the model computes the index itself (never read from disk)"),
        Skip(r"pretrained\.model\.fc_norm\.(weight|bias)", "the classifier's norm of the pretraining (timm)"),
    ] + midas.NECK_SKIPS + midas.unused_fusion_units(config, "scratch.refinenet{i}")


def recognises(state) -> bool:
    return "pretrained.model.blocks.0.attn.relative_position_bias_table" in state


def _count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def detect_config(state, path, **options) -> DPTConfig:
    """The configuration of a MiDaS BEiT checkpoint, read off its keys and shapes."""
    shape = lambda key, ndim: midas.shape(state, key, path, ndim)  # noqa: E731
    embed = shape("pretrained.model.cls_token", 3)[-1]
    depth = _count(state, r"pretrained\.model\.blocks\.(\d+)\..*")
    rows, heads = shape("pretrained.model.blocks.0.attn.relative_position_bias_table", 2)
    side = math.isqrt(max(rows - 3, 0))
    if side * side != rows - 3 or side % 2 == 0:
        raise ConversionError(path, f"relative_position_bias_table has {rows} rows, not (2G-1)^2 + 3")
    grid = (side + 1) // 2
    hooks = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))  # the last block of each quarter
    encoder = BeitConfig(
        embed_dim=embed, depth=depth, num_heads=heads,
        mlp_hidden=shape("pretrained.model.blocks.0.mlp.fc1.weight", 2)[0],
        hooks=hooks, native_grid=(grid, grid),
    )
    return DPTConfig(
        name="custom_beit", encoder=encoder,
        reassembly_features=tuple(shape(f"pretrained.act_postprocess{i}.3.weight", 4)[0] for i in range(1, 5)),
        reassemble_factors=(4, 2, 1, 0.5), readout="project", native_size=(grid * 16, grid * 16),
        keep_aspect_ratio=True, **midas.neck_widths(state, path),
    )


# ---------------------------------------------------------------------------------------------
# Hugging Face: transformers' DPTForDepthEstimation with a BeitBackbone


def hf_rules() -> tuple:
    o, h = "pretrained.model.blocks.{i}", "backbone.encoder.layer.{i}"
    return tuple([
        Rename("pretrained.model.cls_token", "backbone.embeddings.cls_token"),
        same_names("pretrained.model.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        Rename(f"{o}.gamma_1", f"{h}.lambda_1"), Rename(f"{o}.gamma_2", f"{h}.lambda_2"),
        same_names(f"{o}.norm1", f"{h}.layernorm_before"), same_names(f"{o}.norm2", f"{h}.layernorm_after"),
        same_names(f"{o}.mlp.fc1", f"{h}.intermediate.dense"), same_names(f"{o}.mlp.fc2", f"{h}.output.dense"),
        same_names(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        Rename(f"{o}.attn.relative_position_bias_table",
               f"{h}.attention.attention.relative_position_bias.relative_position_bias_table"),
        # a buffer some transformers versions saved; the original holds it too and dpt-jax skips it
        Rename(f"{o}.attn.relative_position_index",
               f"{h}.attention.attention.relative_position_bias.relative_position_index"),
    ] + qkv_rules(f"{o}.attn", f"{h}.attention.attention", bias=False) + midas.hf_neck_rules())


def parse_hf(top: Fields, b: Fields) -> HFModel:
    depth = b.int("num_hidden_layers", 12, lo=1, hi=64)
    if b.d.get("use_absolute_position_embeddings") or b.d.get("use_shared_relative_position_bias"):
        raise b.error("use_absolute_position_embeddings", "BEiT with absolute or shared position embeddings is not "
                                                          "supported (MiDaS's BEiT has a relative bias per block)")
    patch = b.int("patch_size", 16, lo=1, hi=64)
    h, w = b.side("image_size", 224)
    expected = b.stated({"num_attention_heads": ("num_heads", b.int("num_attention_heads", 12, lo=1, hi=256)),
                         "hidden_size": ("embed_dim", b.int("hidden_size", 768, lo=1)),
                         "patch_size": ("patch_size", patch), "image_size": ("native_grid", (h // patch, w // patch))})
    return HFModel(top.path, {}, hooks_of(b, depth), expected=expected)


def hf_config_json(config: DPTConfig) -> dict:
    e = config.encoder
    n = e.depth
    backbone = {**PRETRAINED_FIELDS, "add_fpn": False, "attention_probs_dropout_prob": 0.0, "auxiliary_channels": 256,
                "auxiliary_concat_input": False, "auxiliary_loss_weight": 0.4, "auxiliary_num_convs": 1,
                "drop_path_rate": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                "hidden_size": e.embed_dim, "image_size": e.native_grid[0] * e.patch_size,
                "intermediate_size": e.mlp_hidden, "layer_norm_eps": e.layer_norm_eps,
                "layer_scale_init_value": 0.1, "model_type": "beit", "num_attention_heads": e.num_heads,
                "num_channels": 3, "num_hidden_layers": n, "patch_size": e.patch_size, "pool_scales": [1, 2, 3, 6],
                "reshape_hidden_states": False, "semantic_loss_ignore_index": 255,
                "use_absolute_position_embeddings": False, "use_auxiliary_head": True, "use_mask_token": False,
                "use_mean_pooling": True, "use_relative_position_bias": True,
                "use_shared_relative_position_bias": False, "vocab_size": 8192,
                **stage_fields([h + 1 for h in e.hooks], n)}
    if e.native_grid[0] != e.native_grid[1]:
        backbone["image_size"] = [g * e.patch_size for g in e.native_grid]
    return midas.hf_dpt_config(config, backbone, reassemble_factors=config.reassemble_factors, readout=config.readout)


# Tensor byte totals of the released files (each file is a little larger).
_RELEASE_BYTES = {"dpt_beit_large_512": 1_581_777_764, "dpt_beit_large_384": 1_441_276_772,
                  "dpt_beit_base_384": 478_087_940}

FAMILY = EncoderFamily(
    name="beit",
    title="MiDaS v3.1 DPT-BEiT",
    config_class=BeitConfig,
    encoder=BeitEncoder,
    outputs_tokens=True,
    presets=PRESETS,
    minis=(MINI,),
    input_multiple=lambda c: c.patch_size,
    recognises=recognises,
    detect_config=detect_config,
    key_table=key_table,
    skipped=skipped,
    encoder_flops=vit_encoder_flops,
    encoder_peak_bytes=encoder_peak_bytes,
    aliases=midas.short_names(PRESETS),
    releases=tuple(midas.release(name, size) for name, size in _RELEASE_BYTES.items()),
    hf=HFLayout(model_type="dpt", backbone_type="beit", architecture="DPTForDepthEstimation", rules=hf_rules(),
                parse=parse_hf, config_json=hf_config_json, default_attention="sdpa",
                unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.",)),
    hf_repos={"dpt_beit_large_512": "Intel/dpt-beit-large-512", "dpt_beit_large_384": "Intel/dpt-beit-large-384",
              "dpt_beit_base_384": "Intel/dpt-beit-base-384"},
    v1_fields={"reassemble_factors": [4, 2, 1, 0.5], "readout": "project"},
)
