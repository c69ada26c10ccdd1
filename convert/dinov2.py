"""Depth Anything (V1 / V2, relative and metric) and Video Depth Anything checkpoints: key tables, the
variant choice, the Hugging Face layout, releases.

The original state dict has two halves: `pretrained.*` (the DINOv2 ViT, `dpt_jax.dinov2`) and
`depth_head.*` (the DPT neck and head). The neck reuses the MiDaS targets (reassemble/project_i,
resample_i, to_fusion_i, fusion/block_i, head/conv1..3), so the one DPT module loads it; Depth
Anything differs from MiDaS only in behaviour (readout ignored, head resize to the patch-multiple
size, final activation), not in names.

V1 and V2 files hold the same keys and shapes (nothing in a file tells them apart), and the
metric V2 files the same as the relative ones: the variant is a choice (`detect_config`), given,
said by a Hugging Face config.json, or read off an official release file name. Video Depth
Anything's files name the neck `head.*` and add four temporal modules (`head.motion_modules.*`);
its relative and metric files again hold the same keys.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from ..config import DPTConfig
from ..dinov2 import MINIS, PRESETS, Dinov2Config, Dinov2Encoder, swiglu_hidden
from ..dpt import TEMPORAL_MODULES
from ..dualdpt import CAMERA_ENCODER_DEPTH  # (importing dualdpt registers the DA3 any-view head)
from ..errors import ConversionError
from ..family import EncoderFamily, HFLayout, Release, vit_encoder_flops, vit_encoder_peak_bytes
from .hf import (
    PRETRAINED_FIELDS,
    Fields,
    HFModel,
    Rename,
    as_transformers_factors,
    fusion_rules,
    hooks_of,
    load_json,
    qkv_rules,
    same_names,
    stage_fields,
)
from .keys import Entry, Skip, shape_of
from .keys import conv as _conv
from .keys import linear as _linear
from .keys import norm as _norm
from .midas import fusion_table, unused_fusion_units


def describe_variant(config: DPTConfig) -> str:
    """"V2, metric depth in metres (max 20 m)" and the like."""
    if config.is_temporal:
        unit = "metric depth in metres" if config.is_metric else "relative inverse depth"
        return f"Video Depth Anything, {unit}"
    if config.prompt:
        return "Prompt Depth Anything, metric depth in metres from a depth prompt"
    if config.name.startswith(("dad_", "mini_dad")):
        return "Distill-Any-Depth (V2 network), relative inverse depth"
    version = "V1" if config.output_resize == "bilinear" else "V2"
    if config.is_metric:
        return f"{version}, metric depth in metres (max {config.max_depth:g} m)"
    return f"{version}, relative inverse depth"


#: The file layouts: (encoder prefix, neck and head prefix) of Depth Anything V1/V2, of Video Depth Anything and
#: of Depth Anything 3 (`DepthAnything3.save_pretrained`: "model." + DepthAnything3Net's names)
DA2_LAYOUT = ("pretrained", "depth_head")
VDA_LAYOUT = ("pretrained", "head")  # Video Depth Anything
DA3_LAYOUT = ("model.backbone.pretrained", "model.head")


def layout_of(state) -> tuple[str, str] | None:
    """The (encoder, head) key prefixes of a Depth Anything state dict, or None: not one (a nested DA3 model,
    "model.da3.*" and "model.da3_metric.*", counts as the DA3 layout: detection names it)."""
    if "model.da3.head.projects.0.weight" in state:
        return DA3_LAYOUT
    return next((layout for layout in (DA2_LAYOUT, VDA_LAYOUT, DA3_LAYOUT)
                 if f"{layout[0]}.blocks.0.ls1.gamma" in state and f"{layout[1]}.projects.0.weight" in state), None)


def recognises(state) -> bool:
    return layout_of(state) is not None


#: A temporal module's first position table, in Video Depth Anything's files
_TEMPORAL_TABLE = "head.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"


#: Prompt Depth Anything's model.ckpt (Lightning): {"state_dict": {prefix + key: tensor}} with a
#: 9-character prefix the original strips blindly (k[9:]); these keys say the rest is its model.
_PROMPT_PREFIX_LENGTH = 9
_PROMPT_MARKS = ("depth_head.scratch.refinenet1.resConfUnit_depth.0.weight", "pretrained.blocks.0.ls1.gamma")
#: Distill-Any-Depth Large (their dam.DepthAnything): the DINOv2 under `backbone.`, its blocks in one
#: chunk (`backbone.blocks.0.<i>.`); the DPT head is Depth Anything V2's, under the same names.
_CHUNKED = re.compile(r"backbone\.blocks\.0\.(\d+)\.(.*)")


def source_keys(state):
    """A Prompt Depth Anything .ckpt without its 9-character prefix, a Distill-Any-Depth Large file under
    Depth Anything V2's names (`backbone.blocks.0.<i>.` -> `pretrained.blocks.<i>.`); anything else as it is."""
    if recognises(state) or not state:
        return state
    if all(len(k) > _PROMPT_PREFIX_LENGTH for k in state):
        stripped = {k[_PROMPT_PREFIX_LENGTH:]: v for k, v in state.items()}
        if len(stripped) == len(state) and all(m in stripped for m in _PROMPT_MARKS):
            return stripped
    if "backbone.blocks.0.0.ls1.gamma" in state and "depth_head.projects.0.weight" in state:
        renamed = {}
        for k, v in state.items():
            if m := _CHUNKED.fullmatch(k):
                k = f"pretrained.blocks.{m.group(1)}.{m.group(2)}"
            elif k.startswith("backbone."):
                k = "pretrained." + k[len("backbone."):]
            renamed[k] = v
        return renamed
    return state


def _is_da3(config: DPTConfig) -> bool:
    return config.sky_head or config.head == "dualdpt"


def head_prefix(config: DPTConfig) -> str:
    """Where a model's neck and head are in its files."""
    return (DA3_LAYOUT if _is_da3(config) else VDA_LAYOUT if config.is_temporal else DA2_LAYOUT)[1]


def _architecture_of_keys(state, path, layout=DA2_LAYOUT) -> dict:
    """What the keys and shapes of a Depth Anything state dict say (everything but the heads and the variant)."""
    shape = lambda key, ndim: shape_of(state, key, path, ndim, "Depth Anything checkpoint")  # noqa: E731
    enc, head = layout
    rx = re.compile(re.escape(enc) + r"\.blocks\.(\d+)\..*")
    swiglu = f"{enc}.blocks.0.mlp.w12.weight" in state  # DINOv2's ViT-g feed-forward
    tokens = shape(f"{enc}.pos_embed", 3)[1] - 1
    side = math.isqrt(max(tokens, 0))
    if tokens < 1 or side * side != tokens:
        raise ConversionError(path, f"{enc}.pos_embed holds {tokens} patch positions, not a square grid")
    return {
        "temporal_frames": shape(_TEMPORAL_TABLE, 3)[1] if _TEMPORAL_TABLE in state else 0,
        "embed_dim": shape(f"{enc}.cls_token", 3)[-1],
        "depth": len({m.group(1) for k in state if (m := rx.fullmatch(k))}),
        "mlp_hidden": (shape(f"{enc}.blocks.0.mlp.w3.weight", 2)[1] if swiglu
                       else shape(f"{enc}.blocks.0.mlp.fc1.weight", 2)[0]),
        "ffn": "swiglu" if swiglu else "mlp",
        "patch_size": shape(f"{enc}.patch_embed.proj.weight", 4)[-1],
        "native_grid": (side, side),
        "reassembly_features": tuple(shape(f"{head}.projects.{i}.weight", 4)[0] for i in range(4)),
        "fusion_features": shape(f"{head}.scratch.layer1_rn.weight", 4)[0],
        "head_features": shape(f"{head}.scratch.output_conv2.0.weight", 4)[0],
        "prompt": f"{head}.scratch.refinenet1.resConfUnit_depth.0.weight" in state,
        "any_view": "model.cam_dec.fc_t.weight" in state,
    }


def _architecture_of_config(c: DPTConfig) -> dict:
    e = c.encoder
    return {"temporal_frames": c.temporal_frames,
            "embed_dim": e.embed_dim, "depth": e.depth, "mlp_hidden": e.mlp_hidden, "ffn": e.ffn,
            "patch_size": e.patch_size,
            "native_grid": e.native_grid, "reassembly_features": c.reassembly_features,
            "fusion_features": c.fusion_features, "head_features": c.head_features, "prompt": c.prompt,
            "any_view": c.head == "dualdpt"}


VARIANTS = {c.name: c for c in PRESETS + MINIS}


def detect_config(state, path, *, variant: str | None = None, max_depth: float | None = None,
                  hooks: tuple[int, ...] | None = None, metric: bool | None = None, **options) -> DPTConfig:
    """The configuration of a Depth Anything checkpoint: its `variant`, checked against its keys and shapes.

    V1 and V2, relative and metric, Hypersim and Virtual KITTI files hold the same keys, so the
    variant comes from the argument, else from what another file says (`hooks`, `metric`: a
    Hugging Face config.json), else from an official release file name (RELEASE_FILES);
    otherwise the error lists the variants that fit the keys. `max_depth` (metres) overrides a
    metric variant's.
    """
    layout = layout_of(state) or DA2_LAYOUT
    if layout == DA3_LAYOUT:
        if any(k.startswith("model.da3.") for k in state):
            raise ConversionError(path, "a nested Depth Anything 3 model (DA3NESTED-GIANT-LARGE): out of scope; "
                                  "dpt-jax implements DA3MONO/METRIC-LARGE and DA3-SMALL/BASE/LARGE/GIANT")
        variant = variant or da3_release_name(path)
    arch = _architecture_of_keys(state, path, layout)
    fitting = [c for c in VARIANTS.values() if _architecture_of_config(c) == arch
               and _is_da3(c) == (layout == DA3_LAYOUT)]
    if variant is None and (hooks is not None or metric is not None):
        said = [c for c in fitting if (hooks is None or c.encoder.hooks == tuple(hooks))
                and (metric is None or c.is_metric == metric)]
        exact = [c for c in said if max_depth is None or not c.is_metric or c.max_depth == max_depth]
        if exact or said:
            variant = (exact or said)[0].name
    if variant is None:
        variant = RELEASE_FILES.get(os.path.basename(str(path)))
    if variant is None and fitting and all(c.replace(name="") == fitting[0].replace(name="") for c in fitting):
        variant = fitting[0].name  # one network (Prompt Depth Anything Small and Small-Transparent compute alike)
    if variant is None:
        what = ", ".join(f"{k} {v}" for k, v in arch.items())
        if not fitting:
            raise ConversionError(path, f"a Depth Anything checkpoint of no released architecture ({what}): "
                                  "dpt-jax knows no variant for it")
        choices = "\n    ".join(f"{c.name}: {describe_variant(c)}" for c in fitting)
        cannot = ("a Video Depth Anything checkpoint whose keys cannot tell relative from metric"
                  if arch["temporal_frames"] else "a Depth Anything checkpoint whose keys cannot tell V1 from V2, "
                  "relative from metric, or Hypersim (indoor) from Virtual KITTI (outdoor)")
        raise ConversionError(path, (
            f"{cannot}, and whose file name is not an official release name. Choose its variant: "
            "dpt_jax.load(path, variant=...) or --variant on the command line; "
            f"the variants with this architecture:\n    {choices}"))
    if variant not in VARIANTS:
        raise ConversionError(path, f"{variant!r} is not a Depth Anything variant; known: {', '.join(VARIANTS)}")
    config = VARIANTS[variant]
    if _is_da3(config) != (layout == DA3_LAYOUT):
        raise ConversionError(path, f"holds a Depth Anything {'3' if layout == DA3_LAYOUT else 'V1/V2'} model "
                              f"(by its key names), not the variant {variant}")
    want = _architecture_of_config(config)
    if want != arch:
        diffs = "; ".join(f"{k} {arch[k]} (the variant has {want[k]})" for k in arch if arch[k] != want[k])
        fits = f"; variants that fit: {', '.join(c.name for c in fitting)}" if fitting else ""
        raise ConversionError(path, f"does not hold a {variant} model: its keys say {diffs}{fits}")
    if max_depth is not None:
        if config.prompt:
            raise ConversionError(path, f"max_depth does not apply to {variant}: it takes its depth range from the "
                                        "prompt")
        if config.depth_activation != "sigmoid":
            kind = "is relative" if not config.is_metric else "has no largest depth (a ReLU head in metres)"
            raise ConversionError(path, f"max_depth applies to metric Depth Anything V2 models; {variant} {kind}")
        config = config.replace(max_depth=float(max_depth))
    return config


#: The feed-forward's Linear layers by kind (`Dinov2Config.ffn`), the same names in the original and in dpt-jax
FFN_LAYERS = {"mlp": ("fc1", "fc2"), "swiglu": ("w12", "w3")}


def encoder_key_table(config: Dinov2Config, source: str = "pretrained", target: str = "encoder") -> list[Entry]:
    """Every `pretrained.*` key the DINOv2 encoder uses, mapped onto `Dinov2Encoder`'s parameters."""
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
        t += [e for n in FFN_LAYERS[config.ffn] for e in _linear(f"{s}.mlp.{n}", f"{d}/mlp/{n}")]
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
    if config.prompt:  # Prompt Depth Anything: resConfUnit_depth.{0,2,4} -> the prompt branch's conv1..3
        for i in range(1, 5):
            for n, c in ((0, 1), (2, 2), (4, 3)):
                t += _conv(f"{source}.scratch.refinenet{i}.resConfUnit_depth.{n}", f"fusion/block_{i}/prompt/conv{c}")
    t += _conv(f"{source}.scratch.output_conv1", "head/conv1")
    t += _conv(f"{source}.scratch.output_conv2.0", "head/conv2")
    t += _conv(f"{source}.scratch.output_conv2.2", "head/conv3")
    return t


def temporal_key_table(source: str = "head") -> list[Entry]:
    """The four temporal modules' keys (`dpt_jax.temporal.TemporalModule`), position tables included."""
    t = []
    for m, (stage, name) in enumerate(TEMPORAL_MODULES):  # motion_modules.m
        s, d = f"{source}.motion_modules.{m}.temporal_transformer", f"{stage}/{name}"
        t += _norm(f"{s}.norm", f"{d}/norm") + _linear(f"{s}.proj_in", f"{d}/proj_in")
        block = f"{s}.transformer_blocks.0"
        for j in (0, 1):
            a = f"{block}.attention_blocks.{j}"
            t += [e for n in ("q", "k", "v") for e in _linear(f"{a}.to_{n}", f"{d}/attn_{j}/to_{n}", bias=False)]
            t += _linear(f"{a}.to_out.0", f"{d}/attn_{j}/to_out")
            t.append(Entry(f"{a}.pos_encoder.pe", f"{d}/attn_{j}/pos_encoding", "copy"))
            t += _norm(f"{block}.norms.{j}", f"{d}/norm_{j}")
        t += _linear(f"{block}.ff.net.0.proj", f"{d}/ff/proj") + _linear(f"{block}.ff.net.2", f"{d}/ff/out")
        t += _norm(f"{block}.ff_norm", f"{d}/ff_norm") + _linear(f"{s}.proj_out", f"{d}/proj_out")
    return t


def key_table(config: DPTConfig) -> list[Entry]:
    """The whole model's table: encoder then neck and head (a video model's temporal modules; Depth Anything 3:
    its names, and the sky branch)."""
    if not _is_da3(config):
        head = head_prefix(config)
        table = encoder_key_table(config.encoder) + head_key_table(config, head)
        return table + (temporal_key_table(head) if config.is_temporal else [])
    enc, head = DA3_LAYOUT
    if config.head == "dualdpt":
        return any_view_encoder_table(config.encoder, enc) + dualdpt_key_table(config, head)
    return (encoder_key_table(config.encoder, enc) + head_key_table(config, head)
            + _conv(f"{head}.scratch.sky_output_conv2.0", "head/sky/conv1")
            + _conv(f"{head}.scratch.sky_output_conv2.2", "head/sky/conv2"))


def any_view_encoder_table(config: Dinov2Config, source: str) -> list[Entry]:
    """The DINOv2 table plus DA3's camera token and the QK-norm LayerNorms."""
    t = encoder_key_table(config, source) + [Entry(f"{source}.camera_token", "encoder/camera_token", "copy")]
    if config.qknorm_start != -1:
        for i in range(config.qknorm_start, max(config.hooks) + 1):
            for n in ("q_norm", "k_norm"):
                t += _norm(f"{source}.blocks.{i}.attn.{n}", f"encoder/blocks_{i}/attn/{n}")
    return t


#: DualDPT's ray head: the last of its four levels is the only one any output uses
RAY_LEVEL = 3
#: the other names of the ray head's shared LayerNorm (in a state dict; a safetensors file stores it once)
SHARED_RAY_NORM = r"model\.head\.scratch\.output_conv2_aux\.[1-3]\.2\.(weight|bias)"


def dualdpt_key_table(config: DPTConfig, head: str = "model.head") -> list[Entry]:
    """DA3's DualDPT head and camera decoder (dualdpt.py), all under `head/`.

    norm -> reassemble/norm; projects, resize_layers, layerK_rn as in the DPT; refinenetK and
    refinenetK_aux -> fusion/block_K and fusion_aux/block_K; output_conv1, output_conv2.{0,2} ->
    conv1..3; the last ray level: output_conv1_aux.3.{0..4} -> ray_conv1_{0..4},
    output_conv2_aux.3.{0,5} -> ray_conv2, ray_conv3 and the LayerNorm the four levels share
    (stored once, as output_conv2_aux.0.2) -> ray_norm; cam_dec -> camera.
    """
    t = []
    for i in range(1, 5):
        t += _conv(f"{head}.projects.{i - 1}", f"head/reassemble/project_{i}")
        t += _conv(f"{head}.scratch.layer{i}_rn", f"head/reassemble/to_fusion_{i}", bias=False)
    for i, factor in enumerate(config.reassemble_factors):
        if factor != 1:
            layout = "conv_transpose" if factor > 1 else "conv"
            t += _conv(f"{head}.resize_layers.{i}", f"head/reassemble/resample_{i + 1}", layout=layout)
    t += _norm(f"{head}.norm", "head/reassemble/norm")
    for suffix, target in (("", "fusion"), ("_aux", "fusion_aux")):
        t += [Entry(e.source, f"head/{target}/{e.target.split('/', 1)[1]}", e.layout)
              for e in fusion_table(config, f"{head}.scratch.refinenet{{i}}{suffix}")]
    t += _conv(f"{head}.scratch.output_conv1", "head/conv1")
    t += _conv(f"{head}.scratch.output_conv2.0", "head/conv2") + _conv(f"{head}.scratch.output_conv2.2", "head/conv3")
    for j in range(5):
        t += _conv(f"{head}.scratch.output_conv1_aux.{RAY_LEVEL}.{j}", f"head/ray_conv1_{j}")
    t += _conv(f"{head}.scratch.output_conv2_aux.{RAY_LEVEL}.0", "head/ray_conv2")
    t += _norm(f"{head}.scratch.output_conv2_aux.0.2", "head/ray_norm")
    t += _conv(f"{head}.scratch.output_conv2_aux.{RAY_LEVEL}.5", "head/ray_conv3")
    cam = "model.cam_dec"
    for src, dst in (("backbone.0", "fc1"), ("backbone.2", "fc2"), ("fc_t", "translation"), ("fc_qvec", "quaternion"),
                     ("fc_fov.0", "fov")):
        t += _linear(f"{cam}.{src}", f"head/camera/{dst}")
    return t + camera_encoder_key_table()


def camera_encoder_key_table(source: str = "model.cam_enc", target: str = "camera_encoder") -> list[Entry]:
    """DA3's camera encoder (dualdpt.CameraEncoder): pose_branch.fc1/fc2, token_norm, the trunk's blocks (DINOv2's
    block names), trunk_norm."""
    t = _linear(f"{source}.pose_branch.fc1", f"{target}/pose_fc1") + _linear(f"{source}.pose_branch.fc2",
                                                                             f"{target}/pose_fc2")
    t += _norm(f"{source}.token_norm", f"{target}/token_norm") + _norm(f"{source}.trunk_norm", f"{target}/trunk_norm")
    for i in range(CAMERA_ENCODER_DEPTH):
        s, d = f"{source}.trunk.{i}", f"{target}/trunk_{i}"
        t += _norm(f"{s}.norm1", f"{d}/norm1") + _norm(f"{s}.norm2", f"{d}/norm2")
        t += _linear(f"{s}.attn.qkv", f"{d}/attn/qkv") + _linear(f"{s}.attn.proj", f"{d}/attn/proj")
        t += _linear(f"{s}.mlp.fc1", f"{d}/mlp/fc1") + _linear(f"{s}.mlp.fc2", f"{d}/mlp/fc2")
        t += [Entry(f"{s}.ls1.gamma", f"{d}/gamma_1", "copy"), Entry(f"{s}.ls2.gamma", f"{d}/gamma_2", "copy")]
    return t


def skipped(config: DPTConfig) -> list[Skip]:
    """Keys present in released files that the forward never uses, with the reason."""
    if config.head == "dualdpt":
        return [
            Skip(r"model\.head\.scratch\.(output_conv1_aux\.[0-2]\.\d|output_conv2_aux\.[0-2]\.[05])\.(weight|bias)",
                 "DualDPT's coarser ray levels: computed by the original, used by no output"),
            Skip(SHARED_RAY_NORM, "the ray head's LayerNorm, one module shared by the four levels (files store it "
                 "once, as output_conv2_aux.0.2)"),
            Skip(r"model\.gs_head\..*", "DA3-GIANT's Gaussian-splatting head (infer_gs): out of scope"),
        ]
    if _is_da3(config):  # no mask token, and no first residual unit in the deepest fusion block
        return []
    prompt = [Skip(r"_(mean|std)", "Prompt Depth Anything's input normalisation buffers: ImageNet's mean and std, "
                   "which the config holds (input_mean, input_std)")] if config.prompt else []
    return [Skip(r"pretrained\.mask_token", "DINOv2's masked-image-modelling token; the depth forward never masks")
            ] + unused_fusion_units(config, f"{head_prefix(config)}.scratch.refinenet{{i}}") + prompt


#: Depth Anything 3's model names (config.json "model_name", as its registry spells them) -> presets
DA3_MODEL_NAMES = {"da3mono-large": "da3_mono_large", "da3metric-large": "da3_metric_large",
                   "da3-small": "da3_small", "da3-base": "da3_base", "da3-large": "da3_large",
                   "da3-giant": "da3_giant", "mini_da3_mono": "mini_da3_mono", "mini_da3_metric": "mini_da3_metric",
                   "mini_da3_anyview": "mini_da3_anyview", "mini_da3_giant": "mini_da3_giant"}


def da3_release_name(path) -> str | None:
    """The preset a Depth Anything 3 release file is, from the config.json beside it ({"model_name": ...}), or None.

    The released repositories hold `model.safetensors` and that config.json (what the original's
    `save_pretrained` writes); the weights of the monocular and the metric model have the same keys.
    """
    config_json = os.path.join(os.path.dirname(os.path.abspath(os.fspath(path))), "config.json")
    if not os.path.isfile(config_json):
        return None
    name = load_json(config_json, 1 << 16).get("model_name")
    return DA3_MODEL_NAMES.get(name) if isinstance(name, str) else None

# ---------------------------------------------------------------------------------------------
# Hugging Face: transformers' DepthAnythingForDepthEstimation (a Dinov2Backbone)


def hf_rules() -> tuple:
    o, h = "pretrained.blocks.{i}", "backbone.encoder.layer.{i}"
    d = "depth_head"
    rules = [
        Rename("pretrained.cls_token", "backbone.embeddings.cls_token"),
        Rename("pretrained.mask_token", "backbone.embeddings.mask_token"),
        Rename("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
        same_names("pretrained.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        same_names(f"{o}.norm1", f"{h}.norm1"), same_names(f"{o}.norm2", f"{h}.norm2"),
        same_names(f"{o}.mlp.fc1", f"{h}.mlp.fc1"), same_names(f"{o}.mlp.fc2", f"{h}.mlp.fc2"),
        same_names(f"{o}.mlp.w12", f"{h}.mlp.weights_in"), same_names(f"{o}.mlp.w3", f"{h}.mlp.weights_out"),
        same_names(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        Rename(f"{o}.ls1.gamma", f"{h}.layer_scale1.lambda1"), Rename(f"{o}.ls2.gamma", f"{h}.layer_scale2.lambda1"),
        same_names("pretrained.norm", "backbone.layernorm"),
    ] + qkv_rules(f"{o}.attn", f"{h}.attention.attention", bias=True)
    for n in range(4):
        rules.append(same_names(f"{d}.projects.{n}", f"neck.reassemble_stage.layers.{n}.projection"))
    rules += [same_names(f"{d}.resize_layers.{n}", f"neck.reassemble_stage.layers.{n}.resize") for n in (0, 1, 3)]
    rules += [Rename(f"{d}.scratch.layer{n}_rn.weight", f"neck.convs.{n - 1}.weight") for n in range(1, 5)]
    return tuple(rules + fusion_rules(f"{d}.scratch.") + [
        same_names(f"{d}.scratch.output_conv1", "head.conv1"), same_names(f"{d}.scratch.output_conv2.0", "head.conv2"),
        same_names(f"{d}.scratch.output_conv2.2", "head.conv3")])


def parse_hf(top: Fields, b: Fields) -> HFModel:
    depth = b.int("num_hidden_layers", 12, lo=1, hi=64)
    patch = b.int("patch_size", 14, lo=1, hi=64)
    h, w = b.side("image_size", 518)
    hooks = hooks_of(b, depth)
    kind = top.str("depth_estimation_type", "relative")
    if kind not in ("relative", "metric"):
        raise top.error("depth_estimation_type", f"must be 'relative' or 'metric'; got {kind!r}")
    max_depth = top.number("max_depth", 1.0, lo=0.0, hi=1e6)
    if kind == "metric" and max_depth <= 0:
        raise top.error("max_depth", "a metric model needs max_depth > 0")
    options = {"metric": kind == "metric", **({"hooks": hooks} if hooks is not None else {}),
               **({"max_depth": max_depth} if kind == "metric" else {})}
    expected = b.stated({"num_attention_heads": ("num_heads", b.int("num_attention_heads", 12, lo=1, hi=256)),
                         "hidden_size": ("embed_dim", b.int("hidden_size", 768, lo=1)),
                         "patch_size": ("patch_size", patch), "image_size": ("native_grid", (h // patch, w // patch))})
    return HFModel(top.path, options, hooks, kind == "metric", max_depth if kind == "metric" else 0.0, expected)


def hf_config_json(config: DPTConfig) -> dict:
    e = config.encoder
    n = e.depth
    swiglu = e.ffn == "swiglu"  # transformers' SwiGLU hidden width follows DINOv2's rule from mlp_ratio
    if (swiglu and e.mlp_hidden != swiglu_hidden(e.embed_dim)) or (not swiglu and e.mlp_hidden % e.embed_dim):
        raise ValueError(f"{config.name}: transformers' DINOv2 needs an integer mlp_ratio (4 with SwiGLU); "
                         f"mlp_hidden {e.mlp_hidden} / embed_dim {e.embed_dim}")
    backbone = {**PRETRAINED_FIELDS, "apply_layernorm": True, "attention_probs_dropout_prob": 0.0,
                "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                "hidden_size": e.embed_dim, "image_size": e.native_grid[0] * e.patch_size,
                "layer_norm_eps": e.layer_norm_eps, "layerscale_value": 1.0,
                "mlp_ratio": 4 if swiglu else e.mlp_hidden // e.embed_dim, "model_type": "dinov2",
                "num_attention_heads": e.num_heads, "num_channels": 3, "num_hidden_layers": n,
                "patch_size": e.patch_size, "qkv_bias": True, "reshape_hidden_states": False,
                "use_mask_token": True, "use_swiglu_ffn": swiglu, **stage_fields([h + 1 for h in e.hooks], n)}
    return {"architectures": ["DepthAnythingForDepthEstimation"], "backbone_config": backbone,
            "depth_estimation_type": "metric" if config.is_metric else "relative", "dtype": "float32",
            "fusion_hidden_size": config.fusion_features, "head_hidden_size": config.head_features,
            "head_in_index": -1, "initializer_range": 0.02,
            "max_depth": config.max_depth if config.is_metric else 1, "model_type": "depth_anything",
            "neck_hidden_sizes": list(config.reassembly_features), "patch_size": e.patch_size,
            "reassemble_factors": as_transformers_factors(config.reassemble_factors),
            "reassemble_hidden_size": e.embed_dim}


# transformers' PromptDepthAnythingForDepthEstimation: Depth Anything's layout plus each fusion layer's
# prompt_depth_layer (refinenet k -> neck.fusion_stage.layers.{4-k}); config.json as Depth Anything's,
# model_type prompt_depth_anything, depth_estimation_type "metric" and max_depth 1 (its converter's).


def prompt_hf_rules() -> tuple:
    return hf_rules() + tuple(
        Rename(f"depth_head.scratch.refinenet{k}.resConfUnit_depth.{n}.{{p}}",
               f"neck.fusion_stage.layers.{4 - k}.prompt_depth_layer.convolution{c}.{{p}}")
        for k in range(1, 5) for n, c in ((0, 1), (2, 2), (4, 3)))


def parse_prompt_hf(top: Fields, b: Fields) -> HFModel:
    """A Prompt Depth Anything config.json: metric, its depth range from the prompt (max_depth must be 1)."""
    model = parse_hf(top, b)
    if not model.metric:
        raise top.error("depth_estimation_type", "Prompt Depth Anything is metric; 'relative' is no model of its")
    if model.max_depth != 1.0:
        raise top.error("max_depth", f"Prompt Depth Anything takes its depth range from the prompt; max_depth must "
                                     f"be 1 (transformers' converter); got {model.max_depth:g}")
    options = {k: v for k, v in model.options.items() if k != "max_depth"}
    return dataclasses.replace(model, options=options, max_depth=0.0)


def prompt_hf_config_json(config: DPTConfig) -> dict:
    return {**hf_config_json(config), "architectures": ["PromptDepthAnythingForDepthEstimation"],
            "model_type": "prompt_depth_anything", "depth_estimation_type": "metric", "max_depth": 1}


def hf_extra_tensors(config: DPTConfig, state: dict) -> dict:
    """DINOv2's masked-modelling token: in transformers' files, never used for depth (written as zeros)."""
    import numpy as np

    return {"pretrained.mask_token": np.zeros((1, config.encoder.embed_dim), np.float32)}


# ---------------------------------------------------------------------------------------------
# Releases: the original files on the Hugging Face Hub (V2 from its README and metric_depth/README,
# V1 from the LiheYoung/Depth-Anything Space). Sizes: tensor byte totals of the reference manifests.
# Licences: V2 Small Apache-2.0, Base/Large CC-BY-NC-4.0 (V2 README; the metric models are listed
# there by the same base models); V1: Apache-2.0 (its repository's licence).

_SIZES = {"vits": ("Small", 99_140_356), "vitb": ("Base", 389_883_140), "vitl": ("Large", 1_341_262_596)}
_CC_BY_NC = "CC-BY-NC-4.0 (non-commercial use only)"
_METRIC = {"hypersim": ("Hypersim", "Indoor"), "vkitti": ("VKITTI", "Outdoor")}


#: The SHA-256 of each release file whose published hash was found (the Hub's LFS object id, as stated
#: by public projects that pin these files; each was found stated for that exact file in at least one
#: pinned manifest, most in two). A release without one is checked against the Hub's own content hash
#: (hub.py). MiDaS's GitHub assets, DA3MONO-LARGE, Prompt Depth Anything and Distill-Any-Depth: none found.
SHA256 = {
    # Depth Anything V2 (depth-anything/Depth-Anything-V2-*): LFS sha256 as pinned by downloaders that read
    # it from the Hub's API, with the files' sizes (99,218,434 / 389,961,218 / 1,341,395,338 bytes, Small..Large)
    "da2_vits": "715fade13be8f229f8a70cc02066f656f2423a59effd0579197bbf57860e1378",
    "da2_vitb": "0d2b7002e62d39d655571c371333340bd88f67ab95050c03591555aa05645328",
    "da2_vitl": "a7ea19fa0ed99244e67b624c72b8580b7e9553043245905be58796a608eb9345",
    "da2_metric_hypersim_vits": "b782898d8a3e8be1f639de33837ed85e9b4b73e40f8f5e5cd99067588d722545",
    "da2_metric_hypersim_vitb": "9dc9e274c5eff55c6daf27b660c0ced0eca4e8593a6da90cdcb04d2b4d3f3fa2",
    "da2_metric_hypersim_vitl": "6f82ff2bc543ac02ddff4aa31fa363676a8305dd3ccf04e80e2af115a044cb6d",
    "da2_metric_vkitti_vits": "9203e538d35255c90dda4b7fedb47ff33fe725497bcca3b1e53b3a65ee63f0cb",
    "da2_metric_vkitti_vitb": "4dad67a7cc10b462bca48e6b8569c762b8eb3c1adada170a3851a6d3ba37bb3e",
    "da2_metric_vkitti_vitl": "239b1054a369e66da2576e9a118d6d7c12d90dc8ebe609579a9a09cd8e05fe38",
    # Depth Anything V1 (the LiheYoung/Depth-Anything Space's checkpoints/): the sha256 a Nix fetchurl pins
    # (vitb's is also the object id in the LFS download URL the Hub redirects to)
    "da1_vits": "59afe57cfd9f4284deaf5b753d954723d7136ae842fba3e068ba03537ca1e60e",
    "da1_vitb": "64ae214ae4e27424b644c49464c0aa243016f6f753d95097c8eb9ad0b9cb2d9b",
    "da1_vitl": "6c6a383e33e51c5fdfbf31e7ebcda943973a9e6a1cbef1564afe58d7f2e8fe63",
    # Video Depth Anything (depth-anything/[Metric-]Video-Depth-Anything-*): LFS sha256 of each file
    "vda_vits": "13379300b739e659f076a59d52e9801bd8d38c541a7e71f73bbca4dcfb013609",
    "vda_vitb": "775e578e8f9431ec0496514aa466bd0a1f67c28d0f518267809f35a43c04329b",
    "vda_vitl": "43df27c6b396042ba34ff7b798ab279f64d204d2e86d7a373968f8fa36d0e6fa",
    "vda_metric_vits": "3c28432b4e1f0d7bb31cad5151b6313b49457db5aa58d82e85bfb0f8b1311b33",
    "vda_metric_vitb": "f6f58576b9680a112f2428d4f39aff92656d3ae85745b0164675ace8d5b1fade",
    "vda_metric_vitl": "24eba25342e7ee0f054be25da6a852ebd7cfa40cd6bf41a353ecb6abfe24e620",
    # Depth Anything 3 (depth-anything/DA3-*/model.safetensors): the LFS object id (SMALL 137,248,940 bytes,
    # BASE 541,518,028, METRIC-LARGE 1,336,734,448, LARGE-1.1 1,643,843,860)
    "da3_small": "364492e38a3a06d221ac75da7f6621ada3f2361cd24fde11ba79091e9f40efcf",
    "da3_base": "e01067dc1659613083d9145a9a2547ccdbe6ccbbf83c4fe7b3e8a4e2bdae78b5",
    "da3_metric_large": "bbea5b0b3ee389849cffa7ddae89de064a90abd2b055fc5aa99aac68db324776",
    "da3_large": "739905c423cf0d6ccaf9e61a8401d82ba1ac32d7f4d3ee6dca8f92b377633f64",
}


def _releases() -> tuple[Release, ...]:
    out = []
    for s, (word, size) in _SIZES.items():
        licence = "Apache-2.0" if s == "vits" else _CC_BY_NC
        out.append(Release(f"da2_{s}", f"depth_anything_v2_{s}.pth", size, licence,
                           repo=f"depth-anything/Depth-Anything-V2-{word}", sha256=SHA256[f"da2_{s}"]))
        for data, (repo, _) in _METRIC.items():
            name = f"da2_metric_{data}_{s}"
            out.append(Release(name, f"depth_anything_v2_metric_{data}_{s}.pth", size, licence,
                               repo=f"depth-anything/Depth-Anything-V2-Metric-{repo}-{word}", sha256=SHA256[name]))
        out.append(Release(f"da1_{s}", f"depth_anything_{s}14.pth", size, "Apache-2.0", repo="LiheYoung/Depth-Anything",
                           repo_type="space", subfolder="checkpoints", sha256=SHA256[f"da1_{s}"]))
    return tuple(out)


def _video_releases() -> tuple[Release, ...]:
    """Video Depth Anything (its README): Small Apache-2.0, Base and Large CC-BY-NC-4.0; the metric models,
    listed there by the same base models, under the same terms."""
    out = []
    for s, (word, _) in _SIZES.items():
        licence = "Apache-2.0" if s == "vits" else _CC_BY_NC
        size = _VIDEO_SIZES[s]
        out.append(Release(f"vda_{s}", f"video_depth_anything_{s}.pth", size, licence,
                           repo=f"depth-anything/Video-Depth-Anything-{word}", sha256=SHA256[f"vda_{s}"]))
        out.append(Release(f"vda_metric_{s}", f"metric_video_depth_anything_{s}.pth", size, licence,
                           repo=f"depth-anything/Metric-Video-Depth-Anything-{word}", sha256=SHA256[f"vda_metric_{s}"]))
    return tuple(out)


#: tensor byte totals (float32 parameters and position tables) of the released files
_VIDEO_SIZES = {"vits": 116_140_548 + 4 * 32 * 2 * (192 + 384 + 64 + 64),
                "vitb": 457_765_636 + 4 * 32 * 2 * (384 + 768 + 128 + 128),
                "vitl": 1_537_561_348 + 4 * 32 * 2 * (1024 + 1024 + 256 + 256)}

#: Depth Anything 3 (monocular, metric): `model.safetensors` + config.json in each repository, Apache-2.0
#: (the DA3 README's model table); sizes from the reference manifests (334,171,394 float32 parameters).
#: Any-view: DA3-SMALL and DA3-BASE Apache-2.0, DA3-LARGE and DA3-GIANT CC-BY-NC-4.0 (their 1.1 retrains, the
#: defaults; the README's "-1.1" repositories). DA3-GIANT's size: 4 bytes x the 1,355,674,125 parameters of its
#: manifest (the Gaussian-splatting head included), as the others' (not a measured file).
DA3_RELEASES = tuple(Release(name, "model.safetensors", size, licence, repo=f"depth-anything/{repo}",
                             sha256=SHA256.get(name))
                     for name, repo, size, licence in (
                         ("da3_mono_large", "DA3MONO-LARGE", 1_336_685_576, "Apache-2.0"),
                         ("da3_metric_large", "DA3METRIC-LARGE", 1_336_685_576, "Apache-2.0"),
                         ("da3_small", "DA3-SMALL", 137_197_852, "Apache-2.0"),
                         ("da3_base", "DA3-BASE", 541_466_396, "Apache-2.0"),
                         ("da3_large", "DA3-LARGE-1.1", 1_643_767_068, _CC_BY_NC),
                         ("da3_giant", "DA3-GIANT-1.1", 5_422_696_500, _CC_BY_NC)))

# Prompt Depth Anything (DepthAnything/PromptDA README): model.ckpt in one Hub repo per model; the code
# and the Hub repositories are Apache-2.0. Sizes: the parameters of the full-size key check of the
# reference fixture (tests/fixtures/prompt_depth_anything) plus the two buffers, float32.
_PROMPT = {"pda_vits": ("prompt-depth-anything-vits", 100_332_316),
           "pda_vitl": ("prompt-depth-anything-vitl", 1_360_186_140),
           "pda_vits_transparent": ("prompt-depth-anything-vits-transparent", 100_332_316)}
# Distill-Any-Depth (Westlake-AGI-Lab/Distill-Any-Depth README): model.safetensors in sub-folders of
# one Hub repo. The code is MIT; the weights carry no licence of their own in the code repository,
# and the Hub repository xingyang1/Distill-Any-Depth is tagged apache-2.0. Sizes as V2's.
_DISTILLED = {"dad_vits": ("small", "vits"), "dad_vitb": ("base", "vitb"), "dad_vitl": ("large", "vitl"),
              "dad_da2_teacher_vitl": ("Distill-Any-Depth-Dav2-Teacher-Large-2w-iter", "vitl")}
_DAD_LICENCE = "Apache-2.0 (the Hub repository's licence tag; the code is MIT, the weights state none of their own)"
RELEASES = _releases() + _video_releases() + DA3_RELEASES + tuple(
    Release(name, "model.ckpt", size, "Apache-2.0", repo=f"depth-anything/{repo}")
    for name, (repo, size) in _PROMPT.items()) + tuple(
    Release(name, "model.safetensors", _SIZES[s][1], _DAD_LICENCE, repo="xingyang1/Distill-Any-Depth", subfolder=folder)
    for name, (folder, s) in _DISTILLED.items())
#: The official release files, by name: the only way a file tells its variant (its keys cannot). The Prompt
#: Depth Anything, Distill-Any-Depth and Depth Anything 3 files all have one name each (model.ckpt,
#: model.safetensors; DA3's config.json tells, `da3_release_name`).
RELEASE_FILES = {r.file: r.name for r in _releases() + _video_releases()}

#: The transformers-layout conversions on the Hub (transformers' own names: indoor, outdoor).
HF_REPOS = {
    **{f"da1_{s}": f"LiheYoung/depth-anything-{w.lower()}-hf" for s, (w, _) in _SIZES.items()},
    **{f"da2_{s}": f"depth-anything/Depth-Anything-V2-{w}-hf" for s, (w, _) in _SIZES.items()},
    **{f"da2_metric_{d}_{s}": f"depth-anything/Depth-Anything-V2-Metric-{where}-{w}-hf"
       for d, (_, where) in _METRIC.items() for s, (w, _) in _SIZES.items()},
    **{name: f"depth-anything/{repo}-hf" for name, (repo, _) in _PROMPT.items()},
    "dad_vits": "xingyang1/Distill-Any-Depth-Small-hf", "dad_vitl": "xingyang1/Distill-Any-Depth-Large-hf",
}

def keras_hub_model(config: DPTConfig, size: int):
    """KerasHub's DepthAnythingBackbone (Keras 3) with the architecture of a Depth Anything V1/V2 config, random
    weights, input size x size (its DINOv2 takes square images only); KerasHub has no prompt, temporal or DA3 model."""
    import keras_hub

    if config.prompt or config.is_temporal or _is_da3(config):
        raise ValueError(f"KerasHub has no counterpart of {config.name}")
    e = config.encoder
    encoder = keras_hub.models.DINOV2Backbone(
        patch_size=e.patch_size, num_layers=e.depth, hidden_dim=e.embed_dim, num_heads=e.num_heads,
        intermediate_dim=e.mlp_hidden, layer_scale_init_value=1.0, image_shape=(size, size, 3),
        position_embedding_shape=(e.native_grid[0] * e.patch_size, e.native_grid[1] * e.patch_size),
        apply_layernorm=True)  # the hooked outputs through the final norm, as Depth Anything
    return keras_hub.models.DepthAnythingBackbone(
        image_encoder=encoder, reassemble_factors=list(config.reassemble_factors),
        neck_hidden_dims=list(config.reassembly_features), fusion_hidden_dim=config.fusion_features,
        head_hidden_dim=config.head_features, head_in_index=-1, feature_keys=[f"stage{i + 1}" for i in e.hooks])


FAMILY = EncoderFamily(
    name="dinov2",
    title="Depth Anything (DINOv2)",
    config_class=Dinov2Config,
    encoder=Dinov2Encoder,
    outputs_tokens=True,
    presets=PRESETS,
    minis=MINIS,
    input_multiple=lambda c: c.patch_size,
    recognises=recognises,
    detect_config=detect_config,
    key_table=key_table,
    skipped=skipped,
    encoder_flops=vit_encoder_flops,
    encoder_peak_bytes=vit_encoder_peak_bytes,
    chooses_variant=True,
    source_keys=source_keys,
    # transformers' names of the metric models (indoor = Hypersim, outdoor = Virtual KITTI)
    aliases={f"da2_metric_{where.lower()}_{s}": f"da2_metric_{d}_{s}" for d, (_, where) in _METRIC.items()
             for s in _SIZES},
    releases=RELEASES,
    # DepthAnythingForDepthEstimation refuses attn_implementation="sdpa" (transformers 5.23), though its Dinov2 has it
    hf=HFLayout(model_type="depth_anything", backbone_type="dinov2", architecture="DepthAnythingForDepthEstimation",
                rules=hf_rules(), parse=parse_hf, config_json=hf_config_json, extra_tensors=hf_extra_tensors,
                default_attention="eager",
                fits=lambda config: not (config.prompt or config.is_temporal or _is_da3(config)),
                unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.", "backbone.embeddings.mask_token")),
    hf_more=(HFLayout(model_type="prompt_depth_anything", backbone_type="dinov2",
                      architecture="PromptDepthAnythingForDepthEstimation", rules=prompt_hf_rules(),
                      parse=parse_prompt_hf, config_json=prompt_hf_config_json, extra_tensors=hf_extra_tensors,
                      default_attention="eager", fits=lambda config: config.prompt,
                      unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.",
                                       "backbone.embeddings.mask_token")),),
    hf_repos=HF_REPOS,
    keras_hub=keras_hub_model,
)
