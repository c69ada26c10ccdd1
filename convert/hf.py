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

Everything family-specific comes from the family's `HFLayout` (family.py; written in
convert/<family>.py): its rename table of (original, HF) name templates read in both directions
(`{i}`, `{j}`, `{u}`, `{c}` are integers copied as they are, `{p}` is weight or bias), its
config.json reader and writer. The layouts are passed in (`layouts`): this module knows none.
Semantics stay the original's: an imported model computes what MiDaS / Depth Anything compute,
not where transformers deviates (README, "Hugging Face checkpoints").
"""

from __future__ import annotations

import dataclasses
import functools
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

from ..atomic import atomic_write, partial_prefix
from ..errors import CheckpointError, ConversionError
from .files import read_state_dict
from .keys import INVERSE_LAYOUTS
from .safetensors_io import write_safetensors

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


def same_names(orig: str, hf: str) -> Rename:
    """A module whose weight and bias keep their names: `orig.{p}` <-> `hf.{p}`."""
    return Rename(f"{orig}.{{p}}", f"{hf}.{{p}}")


def fusion_rules(orig_prefix: str) -> list:
    """refinenet{k} (k = 1 finest .. 4 deepest) <-> neck.fusion_stage.layers.{4-k} (order reversed)."""
    rules = []
    for k in range(1, 5):
        o, h = f"{orig_prefix}refinenet{k}", f"neck.fusion_stage.layers.{4 - k}"
        rules += [same_names(f"{o}.out_conv", f"{h}.projection"),
                  same_names(f"{o}.resConfUnit{{u}}.conv{{c}}", f"{h}.residual_layer{{u}}.convolution{{c}}")]
    return rules


def qkv_rules(o: str, h: str, bias: bool) -> list:
    parts = ("query", "key", "value")
    rules = [Split(f"{o}.qkv.weight", tuple(f"{h}.{x}.weight" for x in parts))]
    if bias:  # DINOv2: one fused bias
        rules.append(Split(f"{o}.qkv.bias", tuple(f"{h}.{x}.bias" for x in parts)))
    else:  # BEiT, SwinV2: q and v biases, none for the keys
        rules += [Rename(f"{o}.q_bias", f"{h}.query.bias"), Rename(f"{o}.v_bias", f"{h}.value.bias")]
    return rules


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

    kind: str  # the layout's model_type/backbone_type
    rules: tuple = field(repr=False)

    @classmethod
    def of(cls, layout) -> "Renamer":
        return _compiled_renamer(layout)

    @classmethod
    def _compile(cls, layout) -> "Renamer":
        compiled = []
        for r in layout.rules:
            hf = r.hf if isinstance(r, Split) else (r.hf,)
            compiled.append(_Compiled(r, _regex(r.orig), tuple(_regex(h) for h in hf)))
        return cls(f"{layout.model_type}/{layout.backbone_type}", tuple(compiled))

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


@functools.lru_cache(maxsize=None)
def _compiled_renamer(layout) -> Renamer:
    return Renamer._compile(layout)


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


#: Other models stored in transformers' layout, named in the refusal.
_UNSUPPORTED_TYPES = {
    "zoedepth": "ZoeDepth", "glpn": "GLPN", "depth_pro": "Depth Pro",
    "dinov2_with_registers": "a ViT with registers (dinov2_with_registers)", "vitmatte": "ViTMatte",
    "upernet": "UperNet",
}


#: Models of a supported model_type that have no backbone_config (a plain ViT of their own).
_NO_BACKBONE = {"dpt": "DPT-Large / DPT-Base (plain ViT backbone, MiDaS v3.0)"}


@dataclass(frozen=True)
class HFModel:
    """What dpt-jax takes from a transformers config.json."""

    path: str  # the config.json
    options: dict  # detect options: what the original checkpoint file does not hold
    hooks: tuple[int, ...] | None  # 0-based blocks feeding the neck (out_indices - 1)
    metric: bool = False
    max_depth: float = 0.0
    expected: dict = field(default_factory=dict)  # config field -> (encoder attribute, value) to cross-check
    # (only fields config.json states: a default transformers would fill in is no evidence)
    layout: object = None  # the family.HFLayout whose config.json this is (set by parse_config)


class Fields:
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

    def sub(self, name) -> "Fields":
        v = self.d.get(name)
        if not isinstance(v, dict):
            raise self.error(name, f"must be an object; got {type(v).__name__}")
        return Fields(v, self.path, f"{self.prefix}{name}.")


def load_json(path, limit: int) -> dict:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if size > limit:
        raise CheckpointError(path, f"is {size} bytes; at most {limit} are accepted for this file")
    try:
        with open(path, "rb") as f:
            d = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(path, f"is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(d, dict):
        raise CheckpointError(path, "must hold a JSON object")
    return d


def parse_config(path, families) -> tuple:
    """(family, HFModel): the model a transformers config.json describes, read by the family whose
    `HFLayout` has its model_type and backbone type; an unsupported model is named in the error."""
    path = os.fspath(path)
    top = Fields(load_json(path, MAX_CONFIG_BYTES), path)
    implemented = ", ".join(f.title for f in families if f.hf_layouts)
    model_type = top.d.get("model_type")
    layouts = [(f, layout) for f in families for layout in f.hf_layouts]
    candidates = [(f, layout) for f, layout in layouts if layout.model_type == model_type]
    if not candidates:
        if isinstance(model_type, str) and model_type in _UNSUPPORTED_TYPES:
            raise CheckpointError(path, f"{_UNSUPPORTED_TYPES[model_type]} (model_type {model_type!r}) is not "
                                        f"supported: dpt-jax implements {implemented}")
        types = ", ".join(sorted({repr(layout.model_type) for _, layout in layouts}))
        raise CheckpointError(path, f"field model_type: {str(model_type)[:40]!r} is not a model dpt-jax implements "
                                    f"(model_type {types}: {implemented})")
    if top.d.get("is_hybrid"):
        raise CheckpointError(path, f"DPT-Hybrid (ViT-hybrid backbone) is not supported: dpt-jax implements "
                                    f"{implemented}")
    if not isinstance(top.d.get("backbone_config"), dict):
        what = _NO_BACKBONE.get(model_type, f"a {model_type!r} model without a backbone_config object")
        raise CheckpointError(path, f"{what} is not supported: dpt-jax implements {implemented}")
    backbone = top.sub("backbone_config")
    kind = backbone.d.get("model_type")
    family, layout = next(((f, layout) for f, layout in candidates if layout.backbone_type == kind), (None, None))
    if family is None:
        known = ", ".join(repr(layout.backbone_type) for _, layout in candidates)
        raise CheckpointError(path, f"a {model_type!r} model with a {str(kind)[:40]!r} backbone (field "
                                    f"backbone_config.model_type) is not supported; dpt-jax implements {known} there")
    architectures = top.d.get("architectures", [])
    if architectures is not None:
        if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
            raise top.error("architectures", f"must be a list of class names; got {type(architectures).__name__}")
        if architectures and layout.architecture not in architectures:
            shown = ", ".join(repr(a[:60]) for a in architectures[:5])
            raise top.error("architectures", f"{shown} is not supported; dpt-jax implements depth estimation "
                                             f"({layout.architecture})")
    return family, dataclasses.replace(layout.parse(top, backbone), layout=layout)


def hooks_of(backbone: Fields, depth: int) -> tuple[int, ...] | None:
    if backbone.d.get("out_indices") is None:
        return None
    indices = backbone.ints("out_indices", lo=1, hi=depth, length=4)
    if list(indices) != sorted(set(indices)):
        raise backbone.error("out_indices", f"must be increasing; got {list(indices)}")
    return tuple(i - 1 for i in indices)  # hidden_states[0] is the embedding


# ---------------------------------------------------------------------------------------------
# Reading a folder


def is_hf_folder(path) -> bool:
    """A folder holding config.json (or a path to a config.json / index file)."""
    p = Path(os.fspath(path))
    if p.is_dir():
        return (p / CONFIG_NAME).is_file()
    return p.name in (CONFIG_NAME, INDEX_NAME) and p.is_file()


def _inside(folder: Path, path: Path) -> Path:
    """`path` once it is known to resolve inside `folder` (a link to another file is refused: its first bytes
    must not reach a message)."""
    if Path(os.path.realpath(folder)) not in Path(os.path.realpath(path)).parents:
        raise CheckpointError(path, f"is a link to a file outside {folder}; pass that file itself if it is meant")
    return path


def read_weights(folder: Path) -> dict:
    """key -> TensorRef of model.safetensors, or of every shard of model.safetensors.index.json."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return read_state_dict(_inside(folder, single))
    if index.is_file():
        return _read_shards(_inside(folder, index))
    if (folder / TORCH_WEIGHTS_NAME).is_file():
        return read_state_dict(_inside(folder, folder / TORCH_WEIGHTS_NAME))
    raise CheckpointError(folder, f"holds {CONFIG_NAME} but no weights: neither {WEIGHTS_NAME} nor {INDEX_NAME} "
                                  f"(nor {TORCH_WEIGHTS_NAME})")


_SHARD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}\.(safetensors|bin)")


def _read_shards(index: Path) -> dict:
    d = load_json(index, MAX_INDEX_BYTES)
    weight_map = d.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index, "field weight_map must be a non-empty object (tensor name -> shard file)")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(index, "field weight_map must map tensor names to shard file names (strings)")
    shards = sorted(set(weight_map.values()))
    bad = [s for s in shards if not _SHARD_NAME.fullmatch(s) or s.startswith(".")]
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
        for key, ref in read_state_dict(_inside(index.parent, index.parent / shard)).items():
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
    family: object  # the EncoderFamily whose layout it is
    model: HFModel
    state: dict
    renamer: Renamer

    @property
    def options(self) -> dict:
        return dict(self.model.options)

    def shown(self, key: str) -> str:
        return self.renamer.shown(key)


def read(path, families) -> Source:
    """The HF checkpoint in folder `path` (or whose config.json / index file `path` is), renamed to original keys.

    `families`: the encoder families to recognise its config.json by (registry.FAMILIES.values()).
    """
    p = Path(os.fspath(path))
    folder = p if p.is_dir() else p.parent
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(folder, f"no {CONFIG_NAME}: not a Hugging Face checkpoint folder")
    family, model = parse_config(_inside(folder, folder / CONFIG_NAME), families)
    renamer = Renamer.of(model.layout)
    return Source(str(folder), family, model, to_original(read_weights(folder), renamer), renamer)


def finish(config, source: Source):
    """`config` (detected from the renamed weights) with what only config.json says, cross-checked.

    The hooks come from out_indices, metric depth from depth_estimation_type / max_depth; a
    field that config.json and the weights both determine must agree (ConversionError naming it).
    """

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
    return config.replace(depth_activation="sigmoid" if model.metric else "relu",
                          max_depth=model.max_depth if model.metric else 0.0)


# ---------------------------------------------------------------------------------------------
# Writing


def layout_of(config):
    """The family's HFLayout that writes `config` (its `fits`); ValueError when there is none."""
    family = config.family
    if not family.hf_layouts:
        raise ValueError(f"{config.name}: no Hugging Face layout is known for the {family.title} family")
    layout = family.hf_layout_of(config)
    if layout is None:
        raise ValueError(f"{config.name}: transformers has no layout for this model; save a dpt-jax .safetensors "
                         "file instead")
    return layout


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
    layout = config.family.hf_layout_of(config)
    return {**out, **(layout.extra_tensors(config, out) if layout is not None else {})}


def hf_state(config, params) -> dict[str, np.ndarray]:
    """The HF-named tensors of a model: the original tensors renamed, the fused q/k/v split in three."""
    renamer = Renamer.of(layout_of(config))
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
#: The fields transformers' save_pretrained writes into every (backbone) config.
PRETRAINED_FIELDS = {"_name_or_path": "", "architectures": None, "chunk_size_feed_forward": 0, "dtype": "float32",
                     "initializer_range": 0.02, "is_encoder_decoder": False, "output_attentions": False,
                     "output_hidden_states": False, "problem_type": None, "return_dict": True, **_LABELS}


def stage_fields(out_indices, n: int) -> dict:
    """A transformers backbone's stage fields: the stages feeding the neck (1-based, 0 is the embedding) of n."""
    return {"out_indices": list(out_indices), "out_features": [f"stage{i}" for i in out_indices],
            "stage_names": ["stem"] + [f"stage{i}" for i in range(1, n + 1)]}


def as_transformers_factors(factors) -> list:
    """Reassemble factors as transformers writes them: integers for the (transposed) convolutions, 0.5 as is."""
    return [int(f) if float(f).is_integer() else f for f in factors]


def hf_config(config) -> dict:
    """The transformers config.json of a model (the fields and values transformers' save_pretrained writes)."""
    top = layout_of(config).config_json(config)
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
    files are written into a temporary folder beside it; a new folder then takes its place, an
    existing one gets the two files (each replaced atomically): nothing else in it is touched.
    """
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
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(), suffix=".hf", dir=folder.parent))
    try:
        with atomic_write(tmp / CONFIG_NAME) as f:
            f.write(text.encode())
        write_safetensors(tmp / WEIGHTS_NAME, tensors, {"format": "pt"})
        os.chmod(tmp, 0o755)
        if folder.exists():
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                os.replace(tmp / name, folder / name)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder

