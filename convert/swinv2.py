"""MiDaS v3.1 DPT-SwinV2 checkpoints: key table, recognition and detection, Hugging Face layout, releases.

The network is `dpt_jax.swinv2`; this module ends with the family object that joins the two.
"""

from __future__ import annotations

import math
import re

from ..config import DPTConfig
from ..errors import ConversionError
from ..family import EncoderFamily, HFLayout, Option
from ..swinv2 import MINI, PRESETS, SwinV2Config, SwinV2Encoder, encoder_flops, encoder_peak_bytes
from . import keys, midas
from .hf import PRETRAINED_FIELDS, Fields, HFModel, Rename, qkv_rules, same_names, stage_fields
from .keys import Entry, Skip


def key_table(config: DPTConfig) -> list[Entry]:
    c = config.encoder
    t = keys.conv("pretrained.model.patch_embed.proj", "encoder/patch_embed/proj")
    t += keys.norm("pretrained.model.patch_embed.norm", "encoder/patch_embed/norm")
    for s_i, depth in enumerate(c.depths):
        stage_s, stage_d = f"pretrained.model.layers.{s_i}", f"encoder/layers_{s_i}"
        for b in range(depth):
            s, d = f"{stage_s}.blocks.{b}", f"{stage_d}/blocks_{b}"
            t.append(Entry(f"{s}.attn.logit_scale", f"{d}/attn/logit_scale", "copy"))
            t += keys.biased_qkv_and_mlp(s, d)
            t += keys.linear(f"{s}.attn.cpb_mlp.0", f"{d}/attn/cpb_mlp/fc1")
            t += keys.linear(f"{s}.attn.cpb_mlp.2", f"{d}/attn/cpb_mlp/fc2", bias=False)
            t += keys.linear(f"{s}.attn.proj", f"{d}/attn/proj")
            t += keys.norm(f"{s}.norm1", f"{d}/norm1") + keys.norm(f"{s}.norm2", f"{d}/norm2")
        if s_i < len(c.depths) - 1:  # timm 0.6 layout: the merge closes stages 0-2
            t += keys.linear(f"{stage_s}.downsample.reduction", f"{stage_d}/downsample/reduction", bias=False)
            t += keys.norm(f"{stage_s}.downsample.norm", f"{stage_d}/downsample/norm")
    return t + midas.neck_table(config)


def skipped(config: DPTConfig) -> list[Skip]:
    return [
        Skip(r"pretrained\.model\.layers\.\d+\.blocks\.\d+\.attn_mask",
             "the shifted-window masks: the model builds them for the actual input size"),
        Skip(r"pretrained\.model\.layers\.\d+\.blocks\.\d+\.attn\.(relative_coords_table|relative_position_index)",
             "buffers of constants the model computes for the actual window"),
        Skip(r"pretrained\.model\.norm\.(weight|bias)", "the final norm of the classifier (not on the hooks' path)"),
    ] + midas.NECK_SKIPS + midas.unused_fusion_units(config, "scratch.refinenet{i}")


def recognises(state) -> bool:
    return "pretrained.model.layers.0.blocks.0.attn.cpb_mlp.0.weight" in state


def _count(state, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def detect_config(state, path, *, pretrained_window_sizes=None, window_size=None, native_size=None,
                  **options) -> DPTConfig:
    """The configuration of a MiDaS SwinV2 checkpoint, read off its keys and shapes.

    `pretrained_window_sizes` are not stored in checkpoints: they come from the preset with the
    same architecture, or from the argument (which wins). A checkpoint that matches no preset
    needs the argument: guessing wrong moves the hooks by 55-90 %. `window_size` and `native_size`
    stand in for the shift-mask buffer, which files without buffers (Hugging Face's) do not hold.
    """
    shape = lambda key, ndim: midas.shape(state, key, path, ndim)  # noqa: E731
    embed = shape("pretrained.model.patch_embed.proj.weight", 4)[0]
    stages = _count(state, r"pretrained\.model\.layers\.(\d+)\..*")
    depths = tuple(_count(state, rf"pretrained\.model\.layers\.{s}\.blocks\.(\d+)\..*") for s in range(stages))
    heads = tuple(shape(f"pretrained.model.layers.{s}.blocks.0.attn.logit_scale", 3)[0] for s in range(stages))
    # The first stage's shift mask (num_windows, ws*ws, ws*ws) gives the window and the native size.
    mask_key = "pretrained.model.layers.0.blocks.1.attn_mask"
    if mask_key in state:
        num_windows, ws2, _ = shape(mask_key, 3)
        window = math.isqrt(ws2)
        size = window * math.isqrt(num_windows) * 4
    elif window_size is not None and native_size is not None and native_size[0] == native_size[1]:
        window, size = int(window_size), int(native_size[0])
    else:
        raise ConversionError(path, f"cannot tell the window size and native input size: {mask_key!r} is missing")
    architecture = (embed, depths, heads, window, (size, size))
    preset = next((p for p in PRESETS if _architecture(p.encoder) == architecture), None)
    windows = pretrained_window_sizes or (preset.encoder.pretrained_window_sizes if preset else None)
    if windows is None:
        raise ConversionError(path, (
            f"a SwinV2 checkpoint of no released architecture (embed {embed}, depths {depths}, window {window}, "
            f"{size}x{size}): its pretrained window sizes are not stored in the file and cannot be guessed "
            f"(a wrong guess moves the features by 55-90 %). Pass them: pretrained_window_sizes=(a, b, c, d) "
            f"to dpt_jax.load or --pretrained-window-sizes a,b,c,d (0 for 'the window itself', as swin2_tiny_256)"))
    if len(windows) != stages:
        raise ConversionError(path, f"pretrained_window_sizes has {len(windows)} values; this checkpoint has "
                              f"{stages} stages: give one per stage")
    encoder = SwinV2Config(embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                           pretrained_window_sizes=tuple(windows), native_size=(size, size))
    return DPTConfig(
        name="custom_swinv2", encoder=encoder, reassembly_features=encoder.stage_dims,
        reassemble_factors=(1, 1, 1, 1), readout="none", native_size=(size, size), keep_aspect_ratio=False,
        **midas.neck_widths(state, path),
    )


def _architecture(c: SwinV2Config):
    return c.embed_dim, c.depths, c.num_heads, c.window_size, c.native_size


# ---------------------------------------------------------------------------------------------
# Hugging Face: transformers' DPTForDepthEstimation with a Swinv2Backbone


def hf_rules() -> tuple:
    o, h = "pretrained.model.layers.{i}.blocks.{j}", "backbone.encoder.layers.{i}.blocks.{j}"
    return tuple([
        same_names("pretrained.model.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        same_names("pretrained.model.patch_embed.norm", "backbone.embeddings.norm"),
        Rename(f"{o}.attn.logit_scale", f"{h}.attention.self.logit_scale"),
        same_names(f"{o}.attn.cpb_mlp.{{c}}", f"{h}.attention.self.continuous_position_bias_mlp.{{c}}"),
        same_names(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        same_names(f"{o}.norm1", f"{h}.layernorm_before"), same_names(f"{o}.norm2", f"{h}.layernorm_after"),
        same_names(f"{o}.mlp.fc1", f"{h}.intermediate.dense"), same_names(f"{o}.mlp.fc2", f"{h}.output.dense"),
        Rename("pretrained.model.layers.{i}.downsample.reduction.weight",
               "backbone.encoder.layers.{i}.downsample.reduction.weight"),
        same_names("pretrained.model.layers.{i}.downsample.norm", "backbone.encoder.layers.{i}.downsample.norm"),
        # buffers some transformers versions saved; the original holds them too and dpt-jax skips them
        Rename(f"{o}.attn.relative_coords_table", f"{h}.attention.self.relative_coords_table"),
        Rename(f"{o}.attn.relative_position_index", f"{h}.attention.self.relative_position_index"),
    ] + qkv_rules(f"{o}.attn", f"{h}.attention.self", bias=False) + midas.hf_neck_rules())


def parse_hf(top: Fields, b: Fields) -> HFModel:
    depths = b.ints("depths", [2, 2, 6, 2], lo=1, hi=64)
    windows = b.ints("pretrained_window_sizes", [0] * len(depths), lo=0, hi=64, length=len(depths))
    size = b.side("image_size", 224)
    window = b.int("window_size", 7, lo=1, hi=64)
    if b.d.get("out_indices") is not None and b.ints("out_indices", lo=1, hi=len(depths)) != tuple(
            range(1, len(depths) + 1)):
        raise b.error("out_indices", "dpt-jax's SwinV2 feeds every stage to the neck ([1, 2, 3, 4])")
    expected = b.stated({"embed_dim": ("embed_dim", b.int("embed_dim", 96, lo=1)), "depths": ("depths", depths),
                         "num_heads": ("num_heads", b.ints("num_heads", [3, 6, 12, 24], lo=1, hi=256)),
                         "patch_size": ("patch_size", b.int("patch_size", 4, lo=1, hi=16))})
    options = {"pretrained_window_sizes": windows, "window_size": window, "native_size": size}
    return HFModel(top.path, options, None, expected=expected)


def hf_config_json(config: DPTConfig) -> dict:
    e = config.encoder
    n = len(e.depths)
    backbone = {**PRETRAINED_FIELDS, "attention_probs_dropout_prob": 0.0, "depths": list(e.depths),
                "drop_path_rate": 0.1, "embed_dim": e.embed_dim, "encoder_stride": 32, "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0, "hidden_size": e.stage_dims[-1], "image_size": e.native_size[0],
                "layer_norm_eps": e.layer_norm_eps, "mlp_ratio": float(e.mlp_ratio), "model_type": "swinv2",
                "num_channels": 3, "num_heads": list(e.num_heads), "num_layers": n, "patch_size": e.patch_size,
                "pretrained_window_sizes": list(e.pretrained_window_sizes), "qkv_bias": True,
                "use_absolute_embeddings": False, "window_size": e.window_size,
                **stage_fields(range(1, n + 1), n)}
    # transformers skips the reassembly for this backbone (the encoder gives maps at four scales, factors
    # 1, 1, 1, 1 and no cls token here); its DPTConfig still writes its defaults for both fields.
    return midas.hf_dpt_config(config, backbone, reassemble_factors=(4, 2, 1, 0.5), readout="project")


def parse_window_sizes(text: str) -> tuple[int, ...]:
    """"12,12,12,6" -> (12, 12, 12, 6)."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as 12,12,12,6; got {text[:40]!r}") from None
    if any(s < 0 for s in sizes):
        raise ValueError(f"window sizes cannot be negative; got {text[:40]!r}")
    return sizes


_RELEASE_BYTES = {"dpt_swin2_large_384": 880_189_556, "dpt_swin2_base_384": 436_057_732,
                  "dpt_swin2_tiny_256": 172_048_204}

FAMILY = EncoderFamily(
    name="swinv2",
    title="MiDaS v3.1 DPT-SwinV2",
    config_class=SwinV2Config,
    encoder=SwinV2Encoder,
    outputs_tokens=False,
    presets=PRESETS,
    minis=(MINI,),
    input_multiple=lambda c: c.input_multiple,
    recognises=recognises,
    detect_config=detect_config,
    key_table=key_table,
    skipped=skipped,
    encoder_flops=encoder_flops,
    encoder_peak_bytes=encoder_peak_bytes,
    options=(Option("pretrained_window_sizes", "SwinV2: the pretrained window size of each stage (not stored in "
                    "checkpoints; the released ones are recognised)", parse_window_sizes, "A,B,C,D"),),
    aliases=midas.short_names(PRESETS),
    releases=tuple(midas.release(name, size) for name, size in _RELEASE_BYTES.items()),
    # transformers' SwinV2 backbone has only an explicit (eager) attention: scaled cosine attention
    hf=HFLayout(model_type="dpt", backbone_type="swinv2", architecture="DPTForDepthEstimation", rules=hf_rules(),
                parse=parse_hf, config_json=hf_config_json, default_attention="eager",
                unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.",)),
    hf_repos={"dpt_swin2_large_384": "Intel/dpt-swinv2-large-384", "dpt_swin2_base_384": "Intel/dpt-swinv2-base-384",
              "dpt_swin2_tiny_256": "Intel/dpt-swinv2-tiny-256"},
    v1_fields={"reassemble_factors": [1, 1, 1, 1], "readout": "none"},
)
