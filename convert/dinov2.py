"""Depth Anything (V1 / V2, relative and metric) checkpoints: key tables, the variant choice, the
Hugging Face layout, releases.

The original state dict has two halves: `pretrained.*` (the DINOv2 ViT, `dpt_jax.dinov2`) and
`depth_head.*` (the DPT neck and head). The neck reuses the MiDaS targets (reassemble/project_i,
resample_i, to_fusion_i, fusion/block_i, head/conv1..3), so the one DPT module loads it; Depth
Anything differs from MiDaS only in behaviour (readout ignored, head resize to the patch-multiple
size, final activation), not in names.

V1 and V2 files hold the same keys and shapes (nothing in a file tells them apart), and the
metric V2 files the same as the relative ones: the variant is a choice (`detect_config`), given,
said by a Hugging Face config.json, or read off an official release file name.
"""

from __future__ import annotations

import math
import os
import re

from .. import dualdpt  # noqa: F401 (registers the DualDPT head its Depth Anything 3 any-view models use)
from ..config import DPTConfig
from ..dinov2 import MINIS, PRESETS, Dinov2Config, Dinov2Encoder
from ..errors import ConversionError
from ..family import EncoderFamily, HFLayout, Release, vit_encoder_flops
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
    version = "V1" if config.output_resize == "bilinear" else "V2"
    if config.is_metric:
        return f"{version}, metric depth in metres (max {config.max_depth:g} m)"
    return f"{version}, relative inverse depth"


#: The two file layouts: (encoder prefix, neck and head prefix) of Depth Anything V1/V2 and of Depth Anything 3
#: (`DepthAnything3.save_pretrained`: "model." + DepthAnything3Net's names)
DA2_LAYOUT = ("pretrained", "depth_head")
DA3_LAYOUT = ("model.backbone.pretrained", "model.head")


def layout_of(state) -> tuple[str, str] | None:
    """The (encoder, head) key prefixes of a Depth Anything state dict, or None: not one (a nested DA3 model,
    "model.da3.*" and "model.da3_metric.*", counts as the DA3 layout: detection names it)."""
    if "model.da3.head.projects.0.weight" in state:
        return DA3_LAYOUT
    return next((layout for layout in (DA2_LAYOUT, DA3_LAYOUT) if f"{layout[0]}.blocks.0.ls1.gamma" in state
                 and f"{layout[1]}.projects.0.weight" in state), None)


def recognises(state) -> bool:
    return layout_of(state) is not None


def _is_da3(config: DPTConfig) -> bool:
    return config.sky_head or config.head == "dualdpt"


def _architecture_of_keys(state, path, layout=DA2_LAYOUT) -> dict:
    """What the keys and shapes of a Depth Anything state dict say (everything but the heads and the variant)."""
    shape = lambda key, ndim: shape_of(state, key, path, ndim, "Depth Anything checkpoint")  # noqa: E731
    enc, head = layout
    rx = re.compile(re.escape(enc) + r"\.blocks\.(\d+)\..*")
    tokens = shape(f"{enc}.pos_embed", 3)[1] - 1
    side = math.isqrt(max(tokens, 0))
    if tokens < 1 or side * side != tokens:
        raise ConversionError(path, f"{enc}.pos_embed holds {tokens} patch positions, not a square grid")
    return {
        "embed_dim": shape(f"{enc}.cls_token", 3)[-1],
        "depth": len({m.group(1) for k in state if (m := rx.fullmatch(k))}),
        "mlp_hidden": shape(f"{enc}.blocks.0.mlp.fc1.weight", 2)[0],
        "patch_size": shape(f"{enc}.patch_embed.proj.weight", 4)[-1],
        "native_grid": (side, side),
        "reassembly_features": tuple(shape(f"{head}.projects.{i}.weight", 4)[0] for i in range(4)),
        "fusion_features": shape(f"{head}.scratch.layer1_rn.weight", 4)[0],
        "head_features": shape(f"{head}.scratch.output_conv2.0.weight", 4)[0],
        "any_view": "model.cam_dec.fc_t.weight" in state,
    }


def _architecture_of_config(c: DPTConfig) -> dict:
    e = c.encoder
    return {"embed_dim": e.embed_dim, "depth": e.depth, "mlp_hidden": e.mlp_hidden, "patch_size": e.patch_size,
            "native_grid": e.native_grid, "reassembly_features": c.reassembly_features,
            "fusion_features": c.fusion_features, "head_features": c.head_features, "any_view": c.head == "dualdpt"}


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
                                  "dpt-jax implements DA3MONO/METRIC-LARGE and DA3-SMALL/BASE/LARGE")
        if "model.backbone.pretrained.blocks.0.mlp.w12.weight" in state:
            raise ConversionError(path, "Depth Anything 3 with a ViT-g encoder (DA3-GIANT, SwiGLU feed-forward): "
                                  "not implemented; dpt-jax implements DA3MONO/METRIC-LARGE and DA3-SMALL/BASE/LARGE")
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
    if variant is None:
        what = ", ".join(f"{k} {v}" for k, v in arch.items())
        if not fitting:
            raise ConversionError(path, f"a Depth Anything checkpoint of no released architecture ({what}): "
                                  "dpt-jax knows no variant for it")
        choices = "\n    ".join(f"{c.name}: {describe_variant(c)}" for c in fitting)
        raise ConversionError(path, (
            "a Depth Anything checkpoint whose keys cannot tell V1 from V2, relative from metric, or "
            "Hypersim (indoor) from Virtual KITTI (outdoor), and whose file name is not an official release "
            "name. Choose its variant: dpt_jax.load(path, variant=...) or --variant on the command line; "
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
        if not config.is_metric:
            raise ConversionError(path, f"max_depth applies to metric models; {variant} is relative")
        config = config.replace(max_depth=float(max_depth))
    return config


FUSION_BLOCK = "depth_head.scratch.refinenet{i}"


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
    """The whole model's table: encoder then neck and head (Depth Anything 3: its names, and the sky branch)."""
    if not _is_da3(config):
        return encoder_key_table(config.encoder) + head_key_table(config)
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
    return t


def skipped(config: DPTConfig) -> list[Skip]:
    """Keys present in released files that the forward never uses, with the reason."""
    if config.head == "dualdpt":
        return [
            Skip(r"model\.head\.scratch\.(output_conv1_aux\.[0-2]\.\d|output_conv2_aux\.[0-2]\.[05])\.(weight|bias)",
                 "DualDPT's coarser ray levels: computed by the original, used by no output"),
            Skip(SHARED_RAY_NORM, "the ray head's LayerNorm, one module shared by the four levels (files store it "
                 "once, as output_conv2_aux.0.2)"),
            Skip(r"model\.cam_enc\..*", "the camera encoder: known camera poses of several views, not implemented"),
        ]
    if _is_da3(config):  # no mask token, and no first residual unit in the deepest fusion block
        return []
    return [Skip(r"pretrained\.mask_token", "DINOv2's masked-image-modelling token; the depth forward never masks")
            ] + unused_fusion_units(config, FUSION_BLOCK)


#: Depth Anything 3's model names (config.json "model_name", as its registry spells them) -> presets
DA3_MODEL_NAMES = {"da3mono-large": "da3_mono_large", "da3metric-large": "da3_metric_large",
                   "da3-small": "da3_small", "da3-base": "da3_base", "da3-large": "da3_large",
                   "mini_da3_mono": "mini_da3_mono", "mini_da3_metric": "mini_da3_metric",
                   "mini_da3_anyview": "mini_da3_anyview"}


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
    if b.d.get("use_swiglu_ffn"):
        raise b.error("use_swiglu_ffn", "DINOv2 with a SwiGLU feed-forward (ViT-giant) is not supported")
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
    if _is_da3(config):
        raise ValueError(f"{config.name}: transformers has no Depth Anything 3 model (no layout to export to); "
                         "save() writes dpt-jax's own safetensors file, with its config")
    e = config.encoder
    n = e.depth
    if e.mlp_hidden % e.embed_dim:
        raise ValueError(f"{config.name}: transformers' DINOv2 needs an integer mlp_ratio; "
                         f"mlp_hidden {e.mlp_hidden} / embed_dim {e.embed_dim}")
    backbone = {**PRETRAINED_FIELDS, "apply_layernorm": True, "attention_probs_dropout_prob": 0.0,
                "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                "hidden_size": e.embed_dim, "image_size": e.native_grid[0] * e.patch_size,
                "layer_norm_eps": e.layer_norm_eps, "layerscale_value": 1.0,
                "mlp_ratio": e.mlp_hidden // e.embed_dim, "model_type": "dinov2",
                "num_attention_heads": e.num_heads, "num_channels": 3, "num_hidden_layers": n,
                "patch_size": e.patch_size, "qkv_bias": True, "reshape_hidden_states": False,
                "use_mask_token": True, "use_swiglu_ffn": False, **stage_fields([h + 1 for h in e.hooks], n)}
    return {"architectures": ["DepthAnythingForDepthEstimation"], "backbone_config": backbone,
            "depth_estimation_type": "metric" if config.is_metric else "relative", "dtype": "float32",
            "fusion_hidden_size": config.fusion_features, "head_hidden_size": config.head_features,
            "head_in_index": -1, "initializer_range": 0.02,
            "max_depth": config.max_depth if config.is_metric else 1, "model_type": "depth_anything",
            "neck_hidden_sizes": list(config.reassembly_features), "patch_size": e.patch_size,
            "reassemble_factors": as_transformers_factors(config.reassemble_factors),
            "reassemble_hidden_size": e.embed_dim}


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


def _releases() -> tuple[Release, ...]:
    out = []
    for s, (word, size) in _SIZES.items():
        licence = "Apache-2.0" if s == "vits" else _CC_BY_NC
        out.append(Release(f"da2_{s}", f"depth_anything_v2_{s}.pth", size, licence,
                           repo=f"depth-anything/Depth-Anything-V2-{word}"))
        for data, (repo, _) in _METRIC.items():
            out.append(Release(f"da2_metric_{data}_{s}", f"depth_anything_v2_metric_{data}_{s}.pth", size, licence,
                               repo=f"depth-anything/Depth-Anything-V2-Metric-{repo}-{word}"))
        out.append(Release(f"da1_{s}", f"depth_anything_{s}14.pth", size, "Apache-2.0",
                           repo="LiheYoung/Depth-Anything", repo_type="space", subfolder="checkpoints"))
    return tuple(out)


#: The official release files, by name: the only way a file tells its variant (its keys cannot).
RELEASE_FILES = {r.file: r.name for r in _releases()}
#: Depth Anything 3 (monocular, metric): `model.safetensors` + config.json in each repository, Apache-2.0
#: (the DA3 README's model table); sizes from the reference manifests (334,171,394 float32 parameters).
#: Any-view: DA3-SMALL and DA3-BASE Apache-2.0, DA3-LARGE CC-BY-NC-4.0 (its 1.1 retrain, the default).
DA3_RELEASES = tuple(Release(name, "model.safetensors", size, licence, repo=f"depth-anything/{repo}")
                     for name, repo, size, licence in (
                         ("da3_mono_large", "DA3MONO-LARGE", 1_336_685_576, "Apache-2.0"),
                         ("da3_metric_large", "DA3METRIC-LARGE", 1_336_685_576, "Apache-2.0"),
                         ("da3_small", "DA3-SMALL", 137_197_852, "Apache-2.0"),
                         ("da3_base", "DA3-BASE", 541_466_396, "Apache-2.0"),
                         ("da3_large", "DA3-LARGE-1.1", 1_643_767_068, _CC_BY_NC)))
RELEASES = _releases() + DA3_RELEASES

#: The transformers-layout conversions on the Hub (transformers' own names: indoor, outdoor).
HF_REPOS = {
    **{f"da1_{s}": f"LiheYoung/depth-anything-{w.lower()}-hf" for s, (w, _) in _SIZES.items()},
    **{f"da2_{s}": f"depth-anything/Depth-Anything-V2-{w}-hf" for s, (w, _) in _SIZES.items()},
    **{f"da2_metric_{d}_{s}": f"depth-anything/Depth-Anything-V2-Metric-{where}-{w}-hf"
       for d, (_, where) in _METRIC.items() for s, (w, _) in _SIZES.items()},
}

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
    chooses_variant=True,
    # transformers' names of the metric models (indoor = Hypersim, outdoor = Virtual KITTI)
    aliases={f"da2_metric_{where.lower()}_{s}": f"da2_metric_{d}_{s}" for d, (_, where) in _METRIC.items()
             for s in _SIZES},
    releases=RELEASES,
    # DepthAnythingForDepthEstimation refuses attn_implementation="sdpa" (transformers 5.23), though its Dinov2 has it
    hf=HFLayout(model_type="depth_anything", backbone_type="dinov2", architecture="DepthAnythingForDepthEstimation",
                rules=hf_rules(), parse=parse_hf, config_json=hf_config_json, extra_tensors=hf_extra_tensors,
                default_attention="eager",
                unused_prefixes=("neck.fusion_stage.layers.0.residual_layer1.", "backbone.embeddings.mask_token")),
    hf_repos=HF_REPOS,
)
