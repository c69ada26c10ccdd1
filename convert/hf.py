"""Hugging Face transformers checkpoints (config.json + model.safetensors) <-> the original checkpoint keys.

A transformers depth model is the original checkpoint under other names, with the fused
query/key/value projection split in three, and with some of the architecture moved from the
weights into config.json. This module only translates; converting stays one path:

    read(folder)   config.json is parsed and checked (`parse_config`), the weights (one file or
                   shards) are renamed back to the ORIGINAL keys (MiDaS `pretrained.model.*` /
                   `scratch.*`, Depth Anything `pretrained.*` / `depth_head.*`), q/k/v are joined
                   lazily (`ConcatRef`), and the choices the original file does not hold come back
                   as detect options (SwinV2 windows and size; the Depth Anything variant).
                   registry.detect_config and the family key tables then do the rest, exactly as
                   for an original file; HF keys that map to no original key keep their HF name,
                   so they are reported (unexpected) by that name.
    finish(config, source)   what config.json says and the weights cannot (the hooks, metric
                   depth), and the fields both say, checked against each other.
    write(folder, config, params)   the inverse: Flax tree -> original keys (INVERSE_LAYOUTS) ->
                   HF names (q/k/v split) + a config.json that transformers' from_pretrained takes.

The renames are one table per model kind (`RULES`) of (original, HF) name templates read in both
directions; `{i}`, `{j}`, `{u}`, `{c}` are integers copied as they are, `{p}` is weight or bias.
Semantics stay the original's: an imported model computes what MiDaS / Depth Anything compute,
not where transformers deviates (README, "Hugging Face checkpoints").
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import CheckpointError, ConversionError
from .files import read_state_dict
from .keys import INVERSE_LAYOUTS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"  # older repos; read by the same safe reader
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 64 << 20
MAX_SHARDS = 4096
EXPORT_MARK = "dpt-jax"  # config.json "exported_by" of folders written by `write`
TRANSFORMERS_VERSION = "5.23.0"  # the version whose from_pretrained/save_pretrained the fixtures were made with

# ---------------------------------------------------------------------------------------------
# Rename tables: (original template, HF template); Split: one fused original tensor, three HF ones.


@dataclass(frozen=True)
class Rename:
    orig: str
    hf: str


@dataclass(frozen=True)
class Split:
    """The fused [q; k; v] rows of `orig` are three HF tensors (query, key, value), in that order."""

    orig: str
    hf: tuple[str, str, str]


def _p(orig: str, hf: str) -> Rename:
    """A module whose weight and bias keep their names: `orig.{p}` <-> `hf.{p}`."""
    return Rename(f"{orig}.{{p}}", f"{hf}.{{p}}")


def _fusion(orig_prefix: str) -> list:
    """refinenet{k} (k = 1 finest .. 4 deepest) <-> neck.fusion_stage.layers.{4-k} (order reversed)."""
    rules = []
    for k in range(1, 5):
        o, h = f"{orig_prefix}refinenet{k}", f"neck.fusion_stage.layers.{4 - k}"
        rules += [_p(f"{o}.out_conv", f"{h}.projection"),
                  _p(f"{o}.resConfUnit{{u}}.conv{{c}}", f"{h}.residual_layer{{u}}.convolution{{c}}")]
    return rules


def _midas_neck() -> list:
    rules = []
    for n in range(1, 5):
        o, h = f"pretrained.act_postprocess{n}", "neck.reassemble_stage"
        rules += [_p(f"{o}.0.project.0", f"{h}.readout_projects.{n - 1}.0"),
                  _p(f"{o}.3", f"{h}.layers.{n - 1}.projection"), _p(f"{o}.4", f"{h}.layers.{n - 1}.resize"),
                  Rename(f"scratch.layer{n}_rn.weight", f"neck.convs.{n - 1}.weight")]
    return rules + _fusion("scratch.") + [_p(f"scratch.output_conv.{i}", f"head.head.{i}") for i in (0, 2, 4)]


def _qkv(o: str, h: str, bias: bool) -> list:
    parts = ("query", "key", "value")
    rules = [Split(f"{o}.qkv.weight", tuple(f"{h}.{x}.weight" for x in parts))]
    if bias:  # DINOv2: one fused bias
        rules.append(Split(f"{o}.qkv.bias", tuple(f"{h}.{x}.bias" for x in parts)))
    else:  # BEiT, SwinV2: q and v biases, none for the keys
        rules += [Rename(f"{o}.q_bias", f"{h}.query.bias"), Rename(f"{o}.v_bias", f"{h}.value.bias")]
    return rules


def _beit() -> list:
    o, h = "pretrained.model.blocks.{i}", "backbone.encoder.layer.{i}"
    return [
        Rename("pretrained.model.cls_token", "backbone.embeddings.cls_token"),
        _p("pretrained.model.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        Rename(f"{o}.gamma_1", f"{h}.lambda_1"), Rename(f"{o}.gamma_2", f"{h}.lambda_2"),
        _p(f"{o}.norm1", f"{h}.layernorm_before"), _p(f"{o}.norm2", f"{h}.layernorm_after"),
        _p(f"{o}.mlp.fc1", f"{h}.intermediate.dense"), _p(f"{o}.mlp.fc2", f"{h}.output.dense"),
        _p(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        Rename(f"{o}.attn.relative_position_bias_table",
               f"{h}.attention.attention.relative_position_bias.relative_position_bias_table"),
        # a buffer some transformers versions saved; the original holds it too and dpt-jax skips it
        Rename(f"{o}.attn.relative_position_index",
               f"{h}.attention.attention.relative_position_bias.relative_position_index"),
    ] + _qkv(f"{o}.attn", f"{h}.attention.attention", bias=False) + _midas_neck()


def _swinv2() -> list:
    o, h = "pretrained.model.layers.{i}.blocks.{j}", "backbone.encoder.layers.{i}.blocks.{j}"
    return [
        _p("pretrained.model.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        _p("pretrained.model.patch_embed.norm", "backbone.embeddings.norm"),
        Rename(f"{o}.attn.logit_scale", f"{h}.attention.self.logit_scale"),
        _p(f"{o}.attn.cpb_mlp.{{c}}", f"{h}.attention.self.continuous_position_bias_mlp.{{c}}"),
        _p(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        _p(f"{o}.norm1", f"{h}.layernorm_before"), _p(f"{o}.norm2", f"{h}.layernorm_after"),
        _p(f"{o}.mlp.fc1", f"{h}.intermediate.dense"), _p(f"{o}.mlp.fc2", f"{h}.output.dense"),
        Rename("pretrained.model.layers.{i}.downsample.reduction.weight",
               "backbone.encoder.layers.{i}.downsample.reduction.weight"),
        _p("pretrained.model.layers.{i}.downsample.norm", "backbone.encoder.layers.{i}.downsample.norm"),
        # buffers some transformers versions saved; the original holds them too and dpt-jax skips them
        Rename(f"{o}.attn.relative_coords_table", f"{h}.attention.self.relative_coords_table"),
        Rename(f"{o}.attn.relative_position_index", f"{h}.attention.self.relative_position_index"),
    ] + _qkv(f"{o}.attn", f"{h}.attention.self", bias=False) + _midas_neck()


def _dinov2() -> list:
    o, h = "pretrained.blocks.{i}", "backbone.encoder.layer.{i}"
    d = "depth_head"
    rules = [
        Rename("pretrained.cls_token", "backbone.embeddings.cls_token"),
        Rename("pretrained.mask_token", "backbone.embeddings.mask_token"),
        Rename("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
        _p("pretrained.patch_embed.proj", "backbone.embeddings.patch_embeddings.projection"),
        _p(f"{o}.norm1", f"{h}.norm1"), _p(f"{o}.norm2", f"{h}.norm2"),
        _p(f"{o}.mlp.fc1", f"{h}.mlp.fc1"), _p(f"{o}.mlp.fc2", f"{h}.mlp.fc2"),
        _p(f"{o}.attn.proj", f"{h}.attention.output.dense"),
        Rename(f"{o}.ls1.gamma", f"{h}.layer_scale1.lambda1"), Rename(f"{o}.ls2.gamma", f"{h}.layer_scale2.lambda1"),
        _p("pretrained.norm", "backbone.layernorm"),
    ] + _qkv(f"{o}.attn", f"{h}.attention.attention", bias=True)
    for n in range(4):
        rules.append(_p(f"{d}.projects.{n}", f"neck.reassemble_stage.layers.{n}.projection"))
    rules += [_p(f"{d}.resize_layers.{n}", f"neck.reassemble_stage.layers.{n}.resize") for n in (0, 1, 3)]
    rules += [Rename(f"{d}.scratch.layer{n}_rn.weight", f"neck.convs.{n - 1}.weight") for n in range(1, 5)]
    return rules + _fusion(f"{d}.scratch.") + [
        _p(f"{d}.scratch.output_conv1", "head.conv1"), _p(f"{d}.scratch.output_conv2.0", "head.conv2"),
        _p(f"{d}.scratch.output_conv2.2", "head.conv3")]


RULES: dict[str, list] = {"beit": _beit(), "swinv2": _swinv2(), "dinov2": _dinov2()}

_FIELD = re.compile(r"\{(\w+)\}")


def _regex(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in _FIELD.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        out.append(f"(?P<{m.group(1)}>weight|bias)" if m.group(1) == "p" else rf"(?P<{m.group(1)}>\d+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


@dataclass(frozen=True)
class _Compiled:
    rule: Rename | Split
    orig: re.Pattern
    hf: tuple  # one pattern per HF name


@dataclass(frozen=True)
class Renamer:
    """One model kind's rename table, compiled, for both directions."""

    kind: str
    rules: tuple = field(repr=False)

    @classmethod
    def of(cls, kind: str) -> "Renamer":
        compiled = []
        for r in RULES[kind]:
            hf = r.hf if isinstance(r, Split) else (r.hf,)
            compiled.append(_Compiled(r, _regex(r.orig), tuple(_regex(h) for h in hf)))
        return cls(kind, tuple(compiled))

    def from_hf(self, key: str) -> tuple[str, int | None] | None:
        """(original key, which third of it or None) of HF key `key`, or None when it maps to nothing."""
        for c in self.rules:
            for part, rx in enumerate(c.hf):
                if m := rx.fullmatch(key):
                    return c.rule.orig.format(**m.groupdict()), part if isinstance(c.rule, Split) else None
        return None

    def to_hf(self, key: str) -> tuple[str, ...] | None:
        """The HF name(s) of original key `key` (three for a fused q/k/v), or None."""
        for c in self.rules:
            if m := c.orig.fullmatch(key):
                names = c.rule.hf if isinstance(c.rule, Split) else (c.rule.hf,)
                return tuple(n.format(**m.groupdict()) for n in names)
        return None

    def shown(self, key: str) -> str:
        """How an original key is named in messages about an HF file: its HF name(s), then the original."""
        names = self.to_hf(key)
        return key if names is None else f"{' + '.join(names)} (original {key})"


# ---------------------------------------------------------------------------------------------
# Lazy concatenation


@dataclass(frozen=True)
class ConcatRef:
    """Tensors joined along their first axis; the shape is known without reading, read() concatenates."""

    key: str
    parts: tuple

    @property
    def shape(self) -> tuple[int, ...]:
        first = tuple(self.parts[0].shape)
        return (sum(int(p.shape[0]) for p in self.parts), *first[1:])

    @property
    def dtype(self):
        return self.parts[0].dtype

    def read(self) -> np.ndarray:
        return np.concatenate([p.read() for p in self.parts], axis=0)


def to_original(tensors: Mapping, renamer: Renamer) -> dict:
    """HF key -> ref, renamed to original key -> ref (q/k/v joined); unmapped HF keys keep their names."""
    state: dict = {}
    thirds: dict[str, list] = {}
    for key, ref in tensors.items():
        found = renamer.from_hf(key)
        if found is None:
            state[key] = ref  # reported as unexpected, by its HF name
        elif found[1] is None:
            state[found[0]] = ref
        else:
            thirds.setdefault(found[0], [None, None, None])[found[1]] = (key, ref)
    for orig, parts in thirds.items():
        present = [p for p in parts if p is not None]
        refs = [r for _, r in present]
        fits = (len(present) == 3 and all(len(r.shape) >= 1 for r in refs)
                and len({(tuple(r.shape[1:]), np.dtype(r.dtype)) for r in refs}) == 1)
        if fits:
            state[orig] = ConcatRef(orig, tuple(refs))
        else:  # an incomplete or inconsistent triple: the original key is missing, the parts unexpected
            state.update(present)
    return state


# ---------------------------------------------------------------------------------------------
# config.json


_UNSUPPORTED_TYPES = {
    "zoedepth": "ZoeDepth", "glpn": "GLPN", "depth_pro": "Depth Pro", "prompt_depth_anything": "Prompt Depth Anything",
    "dinov2_with_registers": "DINOv2 with registers", "vitmatte": "ViTMatte", "upernet": "UperNet",
}


@dataclass(frozen=True)
class HFModel:
    """What dpt-jax takes from a transformers config.json."""

    kind: str  # "beit", "swinv2" (DPTForDepthEstimation) or "dinov2" (DepthAnythingForDepthEstimation)
    path: str  # the config.json
    options: dict  # detect options: what the original checkpoint file does not hold
    hooks: tuple[int, ...] | None  # 0-based blocks feeding the neck (out_indices - 1)
    metric: bool = False
    max_depth: float = 0.0
    expected: dict = field(default_factory=dict)  # config field -> (encoder attribute, value) to cross-check
    # (only fields config.json states: a default transformers would fill in is no evidence)


class _Fields:
    """Typed, bounded reads of one JSON object; errors name the file and the field."""

    def __init__(self, d: dict, path: str, prefix: str = ""):
        self.d, self.path, self.prefix = d, path, prefix

    def error(self, name: str, message: str) -> CheckpointError:
        return CheckpointError(self.path, f"field {self.prefix}{name}: {message}")

    def int(self, name, default=None, lo=0, hi=1 << 20):
        v = self.d.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.error(name, f"must be an integer in [{lo}, {hi}]; got {str(v)[:40]}")
        return v

    def number(self, name, default=None, lo=0.0, hi=1e9):
        v = self.d.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise self.error(name, f"must be a number in [{lo:g}, {hi:g}]; got {str(v)[:40]}")
        return float(v)

    def ints(self, name, default=None, lo=0, hi=1 << 20, length=None):
        v = self.d.get(name, default)
        ok = (isinstance(v, list) and 0 < len(v) <= 64 and (length is None or len(v) == length)
              and all(not isinstance(x, bool) and isinstance(x, int) and lo <= x <= hi for x in v))
        if not ok:
            n = f"{length} " if length else ""
            raise self.error(name, f"must be a list of {n}integers in [{lo}, {hi}]; got {str(v)[:60]}")
        return tuple(v)

    def str(self, name, default=None):
        v = self.d.get(name, default)
        if not isinstance(v, str) or len(v) > 200:
            raise self.error(name, f"must be a short string; got {str(v)[:40]}")
        return v

    def bool(self, name, default=None):
        v = self.d.get(name, default)
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false; got {str(v)[:40]}")
        return v

    def side(self, name, default):
        """image_size: an int or a [h, w] pair."""
        v = self.d.get(name, default)
        if isinstance(v, list):
            return self.ints(name, lo=1, hi=1 << 15, length=2)
        s = self.int(name, default, lo=1, hi=1 << 15)
        return (s, s)

    def stated(self, checks: dict) -> dict:
        """The entries of {name: (attribute, value)} whose field this object states."""
        return {f"{self.prefix}{k}": v for k, v in checks.items() if self.d.get(k) is not None}

    def sub(self, name) -> "_Fields":
        v = self.d.get(name)
        if not isinstance(v, dict):
            raise self.error(name, f"must be an object; got {type(v).__name__}")
        return _Fields(v, self.path, f"{self.prefix}{name}.")


def load_json(path, limit: int) -> dict:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise CheckpointError(path, f"is {size} bytes; at most {limit} are accepted for this file")
        with open(path, "rb") as f:
            d = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(path, f"is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise CheckpointError(path, "must hold a JSON object")
    return d


def parse_config(path) -> HFModel:
    """The model a transformers config.json describes; an unsupported model is named in the error."""
    path = os.fspath(path)
    top = _Fields(load_json(path, MAX_CONFIG_BYTES), path)
    model_type = top.d.get("model_type")
    architectures = top.d.get("architectures") or []
    if model_type == "dpt":
        if top.d.get("is_hybrid"):
            raise CheckpointError(path, "DPT-Hybrid (ViT-hybrid backbone) is not supported: dpt-jax implements "
                                        "DPT-BEiT, DPT-SwinV2 and Depth Anything")
        if not isinstance(top.d.get("backbone_config"), dict):
            raise CheckpointError(path, "DPT-Large / DPT-Base (plain ViT backbone, MiDaS v3.0) is not supported: "
                                        "dpt-jax implements DPT-BEiT, DPT-SwinV2 and Depth Anything")
        backbone = top.sub("backbone_config")
        kind = backbone.d.get("model_type")
        if kind not in ("beit", "swinv2"):
            raise CheckpointError(path, f"DPT with a {str(kind)[:40]!r} backbone (field backbone_config.model_type) "
                                        "is not supported: dpt-jax implements DPT-BEiT, DPT-SwinV2 and Depth Anything")
        if architectures and "DPTForDepthEstimation" not in architectures:
            raise CheckpointError(path, f"field architectures: {str(architectures)[:80]} is not supported; "
                                        "dpt-jax implements depth estimation (DPTForDepthEstimation)")
        return _parse_beit(top, backbone) if kind == "beit" else _parse_swinv2(top, backbone)
    if model_type == "depth_anything":
        backbone = top.sub("backbone_config")
        if backbone.d.get("model_type") != "dinov2":
            raise CheckpointError(path, f"Depth Anything with a {str(backbone.d.get('model_type'))[:40]!r} backbone "
                                        "(field backbone_config.model_type) is not supported; only dinov2")
        return _parse_dinov2(top, backbone)
    if isinstance(model_type, str) and model_type in _UNSUPPORTED_TYPES:
        raise CheckpointError(path, f"{_UNSUPPORTED_TYPES[model_type]} (model_type {model_type!r}) is not "
                                    "supported: dpt-jax implements DPT-BEiT, DPT-SwinV2 and Depth Anything")
    raise CheckpointError(path, f"field model_type: {str(model_type)[:40]!r} is not a model dpt-jax implements "
                                "(DPT-BEiT and DPT-SwinV2: 'dpt'; Depth Anything: 'depth_anything')")


def _hooks(backbone: _Fields, depth: int) -> tuple[int, ...] | None:
    if backbone.d.get("out_indices") is None:
        return None
    indices = backbone.ints("out_indices", lo=1, hi=depth, length=4)
    if list(indices) != sorted(set(indices)):
        raise backbone.error("out_indices", f"must be increasing; got {list(indices)}")
    return tuple(i - 1 for i in indices)  # hidden_states[0] is the embedding


def _parse_beit(top: _Fields, b: _Fields) -> HFModel:
    depth = b.int("num_hidden_layers", 12, lo=1, hi=64)
    if b.d.get("use_absolute_position_embeddings") or b.d.get("use_shared_relative_position_bias"):
        raise b.error("use_absolute_position_embeddings", "BEiT with absolute or shared position embeddings is not "
                                                          "supported (MiDaS's BEiT has a relative bias per block)")
    patch = b.int("patch_size", 16, lo=1, hi=64)
    h, w = b.side("image_size", 224)
    expected = b.stated({"num_attention_heads": ("num_heads", b.int("num_attention_heads", 12, lo=1, hi=256)),
                         "hidden_size": ("embed_dim", b.int("hidden_size", 768, lo=1)),
                         "patch_size": ("patch_size", patch), "image_size": ("native_grid", (h // patch, w // patch))})
    return HFModel("beit", top.path, {}, _hooks(b, depth), expected=expected)


def _parse_swinv2(top: _Fields, b: _Fields) -> HFModel:
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
    return HFModel("swinv2", top.path, options, None, expected=expected)


def _parse_dinov2(top: _Fields, b: _Fields) -> HFModel:
    depth = b.int("num_hidden_layers", 12, lo=1, hi=64)
    if b.d.get("use_swiglu_ffn"):
        raise b.error("use_swiglu_ffn", "DINOv2 with a SwiGLU feed-forward (ViT-giant) is not supported")
    patch = b.int("patch_size", 14, lo=1, hi=64)
    h, w = b.side("image_size", 518)
    hooks = _hooks(b, depth)
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
    return HFModel("dinov2", top.path, options, hooks, kind == "metric", max_depth if kind == "metric" else 0.0,
                   expected)


# ---------------------------------------------------------------------------------------------
# Reading a folder


def is_hf_folder(path) -> bool:
    """A folder holding config.json (or a path to a config.json / index file)."""
    p = Path(os.fspath(path))
    if p.is_dir():
        return (p / CONFIG_NAME).is_file()
    return p.name in (CONFIG_NAME, INDEX_NAME) and p.is_file()


def read_weights(folder: Path) -> dict:
    """key -> TensorRef of model.safetensors, or of every shard of model.safetensors.index.json."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return read_state_dict(single)
    if index.is_file():
        return _read_shards(index)
    if (folder / TORCH_WEIGHTS_NAME).is_file():
        return read_state_dict(folder / TORCH_WEIGHTS_NAME)
    raise CheckpointError(folder, f"holds {CONFIG_NAME} but no weights: neither {WEIGHTS_NAME} nor {INDEX_NAME} "
                                  f"(nor {TORCH_WEIGHTS_NAME})")


_SHARD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}\.(safetensors|bin)")


def _read_shards(index: Path) -> dict:
    d = load_json(index, MAX_INDEX_BYTES)
    weight_map = d.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index, "field weight_map must be a non-empty object (tensor name -> shard file)")
    shards = sorted(set(weight_map.values()), key=str)
    bad = [s for s in shards if not isinstance(s, str) or not _SHARD_NAME.fullmatch(s) or s.startswith(".")]
    if bad:
        raise CheckpointError(index, f"field weight_map names shard files that are not plain file names in its "
                                     f"folder: {', '.join(repr(str(s)[:60]) for s in bad[:5])}")
    if len(shards) > MAX_SHARDS:
        raise CheckpointError(index, f"names {len(shards)} shard files; at most {MAX_SHARDS} are accepted")
    missing_files = [s for s in shards if not (index.parent / s).is_file()]
    if missing_files:
        raise CheckpointError(index, f"shard files missing next to it: {', '.join(missing_files[:10])}")
    tensors, problems = {}, []
    for shard in shards:
        for key, ref in read_state_dict(index.parent / shard).items():
            if key in tensors:
                problems.append(f"{key}: in more than one shard")
            elif weight_map.get(key) != shard:
                problems.append(f"{key}: in {shard}, but weight_map says {str(weight_map.get(key))[:60]}")
            tensors[key] = ref
    problems += [f"{k}: listed in weight_map ({v}) but not in that shard" for k, v in weight_map.items()
                 if k not in tensors]
    if problems:
        raise CheckpointError(index, f"does not match its shards ({len(problems)} problems):\n  "
                                     + "\n  ".join(problems[:50]))
    return tensors


@dataclass
class Source:
    """An HF checkpoint as an original one: original key -> ref, plus what config.json adds."""

    path: str  # the folder
    model: HFModel
    state: dict
    renamer: Renamer

    @property
    def options(self) -> dict:
        return dict(self.model.options)

    def shown(self, key: str) -> str:
        return self.renamer.shown(key)


def read(path) -> Source:
    """The HF checkpoint in folder `path` (or whose config.json / index file `path` is), renamed to original keys."""
    p = Path(os.fspath(path))
    folder = p if p.is_dir() else p.parent
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(folder, f"no {CONFIG_NAME}: not a Hugging Face checkpoint folder")
    model = parse_config(folder / CONFIG_NAME)
    renamer = Renamer.of(model.kind)
    return Source(str(folder), model, to_original(read_weights(folder), renamer), renamer)


def finish(config, source: Source):
    """`config` (detected from the renamed weights) with what only config.json says, cross-checked.

    The hooks come from out_indices, metric depth from depth_estimation_type / max_depth; a
    field that config.json and the weights both determine must agree (ConversionError naming it).
    """
    import dataclasses

    model = source.model
    encoder = config.encoder
    problems = []
    for name, (attribute, value) in model.expected.items():
        if hasattr(encoder, attribute) and tuple(np.atleast_1d(getattr(encoder, attribute))) != tuple(
                np.atleast_1d(value)):
            problems.append(f"field {name} is {value}, but the weights say {getattr(encoder, attribute)}")
    if problems:
        raise ConversionError(model.path, "disagrees with its weights:\n  " + "\n  ".join(problems))
    if model.hooks is not None and hasattr(encoder, "hooks") and tuple(encoder.hooks) != model.hooks:
        config = config.replace(encoder=dataclasses.replace(encoder, hooks=model.hooks))
    # depth_estimation_type / max_depth (Depth Anything; MiDaS configs say relative, as their weights)
    return config.replace(depth_activation="sigmoid" if model.metric else "relu",
                          max_depth=model.max_depth if model.metric else 0.0)


# ---------------------------------------------------------------------------------------------
# Writing


def kind_of(config) -> str:
    kind = config.family.name
    if kind not in RULES:
        raise ValueError(f"{config.name}: no Hugging Face layout is known for the {kind} family")
    return kind


def original_state(config, params) -> dict[str, np.ndarray]:
    """The Flax tree as the original checkpoint's tensors, plus the unused ones transformers also stores (zeros)."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(params), sep="/")
    out = {e.source: np.ascontiguousarray(INVERSE_LAYOUTS[e.layout](np.asarray(flat[e.target], np.float32)))
           for e in config.family.key_table(config)}
    for key in list(out):  # the deepest fusion block's first residual unit: never called, present in HF files
        if (m := re.fullmatch(r"(.*refinenet\d)\.resConfUnit2\.(.*)", key)) and \
                f"{m.group(1)}.resConfUnit1.{m.group(2)}" not in out:
            out[f"{m.group(1)}.resConfUnit1.{m.group(2)}"] = np.zeros_like(out[key])
    if kind_of(config) == "dinov2":  # DINOv2's masked-modelling token, never used for depth
        out["pretrained.mask_token"] = np.zeros((1, out["pretrained.cls_token"].shape[-1]), np.float32)
    return out


def hf_state(config, params) -> dict[str, np.ndarray]:
    """The HF-named tensors of a model: the original tensors renamed, the fused q/k/v split in three."""
    renamer = Renamer.of(kind_of(config))
    out = {}
    for key, array in original_state(config, params).items():
        names = renamer.to_hf(key)
        if names is None:
            raise ValueError(f"{config.name}: no Hugging Face name for {key}")
        if len(names) == 1:
            out[names[0]] = array
        else:
            rows = array.shape[0] // 3
            for i, name in enumerate(names):
                out[name] = np.ascontiguousarray(array[i * rows:(i + 1) * rows])
    return dict(sorted(out.items()))


_LABELS = {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
_PRETRAINED = {"_name_or_path": "", "architectures": None, "chunk_size_feed_forward": 0, "dtype": "float32",
               "initializer_range": 0.02, "is_encoder_decoder": False, "output_attentions": False,
               "output_hidden_states": False, "problem_type": None, "return_dict": True, **_LABELS}


def _stages(out_indices, n: int) -> dict:
    return {"out_indices": list(out_indices), "out_features": [f"stage{i}" for i in out_indices],
            "stage_names": ["stem"] + [f"stage{i}" for i in range(1, n + 1)]}


def _dpt_top(config, backbone: dict) -> dict:
    return {
        "add_projection": False, "architectures": ["DPTForDepthEstimation"], "attention_probs_dropout_prob": 0.0,
        "auxiliary_loss_weight": 0.4, "backbone_config": backbone, "backbone_featmap_shape": None,
        "backbone_out_indices": [2, 5, 8, 11], "dtype": "float32", "fusion_hidden_size": config.fusion_features,
        "head_in_index": -1, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 768, "image_size": 384,
        "initializer_range": 0.02, "intermediate_size": 3072, "is_hybrid": False, "layer_norm_eps": 1e-12,
        "model_type": "dpt", "neck_hidden_sizes": list(config.reassembly_features), "neck_ignore_stages": [],
        "num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": 12, "patch_size": 16,
        "pooler_act": "tanh", "pooler_output_size": 768, "qkv_bias": True, "readout_type": "project",
        "reassemble_factors": [4, 2, 1, 0.5], "semantic_classifier_dropout": 0.1, "semantic_loss_ignore_index": 255,
        "use_auxiliary_head": True, "use_batch_norm_in_fusion_residual": False, "use_bias_in_fusion_residual": None,
    }


def hf_config(config) -> dict:
    """The transformers config.json of a model (the fields and values transformers' save_pretrained writes)."""
    kind, e = kind_of(config), config.encoder
    if kind in ("beit", "swinv2") and config.head_features != 32:
        raise ValueError(f"{config.name}: transformers' DPT head has 32 hidden channels; this model has "
                         f"{config.head_features}, so it has no transformers equivalent")
    if kind == "beit":
        n = e.depth
        backbone = {**_PRETRAINED, "add_fpn": False, "attention_probs_dropout_prob": 0.0, "auxiliary_channels": 256,
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
                    **_stages([h + 1 for h in e.hooks], n)}
        if e.native_grid[0] != e.native_grid[1]:
            backbone["image_size"] = [g * e.patch_size for g in e.native_grid]
        top = _dpt_top(config, backbone)
    elif kind == "swinv2":
        n = len(e.depths)
        backbone = {**_PRETRAINED, "attention_probs_dropout_prob": 0.0, "depths": list(e.depths),
                    "drop_path_rate": 0.1, "embed_dim": e.embed_dim, "encoder_stride": 32, "hidden_act": "gelu",
                    "hidden_dropout_prob": 0.0, "hidden_size": e.stage_dims[-1], "image_size": e.native_size[0],
                    "layer_norm_eps": e.layer_norm_eps, "mlp_ratio": float(e.mlp_ratio), "model_type": "swinv2",
                    "num_channels": 3, "num_heads": list(e.num_heads), "num_layers": n, "patch_size": e.patch_size,
                    "pretrained_window_sizes": list(e.pretrained_window_sizes), "qkv_bias": True,
                    "use_absolute_embeddings": False, "window_size": e.window_size,
                    **_stages(range(1, n + 1), n)}
        top = _dpt_top(config, backbone)
    else:
        n = e.depth
        if e.mlp_hidden % e.embed_dim:
            raise ValueError(f"{config.name}: transformers' DINOv2 needs an integer mlp_ratio; "
                             f"mlp_hidden {e.mlp_hidden} / embed_dim {e.embed_dim}")
        backbone = {**_PRETRAINED, "apply_layernorm": True, "attention_probs_dropout_prob": 0.0,
                    "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
                    "hidden_size": e.embed_dim, "image_size": e.native_grid[0] * e.patch_size,
                    "layer_norm_eps": e.layer_norm_eps, "layerscale_value": 1.0,
                    "mlp_ratio": e.mlp_hidden // e.embed_dim, "model_type": "dinov2",
                    "num_attention_heads": e.num_heads, "num_channels": 3, "num_hidden_layers": n,
                    "patch_size": e.patch_size, "qkv_bias": True, "reshape_hidden_states": False,
                    "use_mask_token": True, "use_swiglu_ffn": False, **_stages([h + 1 for h in e.hooks], n)}
        top = {"architectures": ["DepthAnythingForDepthEstimation"], "backbone_config": backbone,
               "depth_estimation_type": "metric" if config.is_metric else "relative", "dtype": "float32",
               "fusion_hidden_size": config.fusion_features, "head_hidden_size": config.head_features,
               "head_in_index": -1, "initializer_range": 0.02,
               "max_depth": config.max_depth if config.is_metric else 1, "model_type": "depth_anything",
               "neck_hidden_sizes": list(config.reassembly_features), "patch_size": e.patch_size,
               "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": e.embed_dim}
    return {**dict(sorted(top.items())), "transformers_version": TRANSFORMERS_VERSION, "exported_by": EXPORT_MARK}


def is_previous_export(folder: Path) -> bool:
    """A folder holding only what `write` writes, whose config.json says dpt-jax wrote it."""
    names = {p.name for p in folder.iterdir()}
    if not names <= {CONFIG_NAME, WEIGHTS_NAME} or CONFIG_NAME not in names:
        return False
    try:
        return load_json(folder / CONFIG_NAME, MAX_CONFIG_BYTES).get("exported_by") == EXPORT_MARK
    except CheckpointError:
        return False


def write(folder, config, params, *, overwrite: bool = False) -> Path:
    """Write `folder`/config.json + model.safetensors (metadata {"format": "pt"}) in the transformers layout.

    A non-empty `folder` is refused unless it is a previous export or `overwrite` is set. The
    files are written into a temporary folder beside it, which then takes its place.
    """
    from dpt_jax.atomic import atomic_write
    from dpt_jax.checkpoint import write_safetensors

    folder = Path(os.fspath(folder))
    text = json.dumps(hf_config(config), indent=2, sort_keys=False) + "\n"
    tensors = hf_state(config, params)
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder}: exists and is not a folder")
        if any(folder.iterdir()) and not overwrite and not is_previous_export(folder):
            raise FileExistsError(f"{folder}: not empty and not a previous dpt-jax export; refusing to write into it "
                                  "(choose an empty or new folder, or pass --overwrite / overwrite=True)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with atomic_write(tmp / CONFIG_NAME) as f:
            f.write(text.encode())
        write_safetensors(tmp / WEIGHTS_NAME, tensors, {"format": "pt"})
        os.chmod(tmp, 0o755)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, old / "previous")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder

