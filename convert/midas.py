"""MiDaS v3.1 checkpoints -> dpt-jax parameter trees.

Three pieces:
- `detect_config(state)`: the model configuration read off the keys and shapes of a state dict.
- `key_table(config)`: every source key the model uses, with its target path in the Flax tree
  and how the array is laid out differently (linear and conv weights are transposed).
- `convert_state_dict(state, config)`: applies the table, checking everything at once: a
  checkpoint with missing, unexpected or mis-shaped keys is refused with the complete list.

Keys that the released files hold but the MiDaS forward never uses are skipped on purpose and
reported (`SKIPPED`): timm classifier leftovers, the deepest fusion block's unused residual unit,
BEiT's `relative_position_index` buffers (~200 MB in BEiT-L-512, never read from disk) and
SwinV2's `attn_mask` buffers (the model rebuilds the shifted-window masks).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from dpt_jax.atomic import atomic_write
from dpt_jax.config import PRESETS, BeitConfig, DPTConfig, SwinV2Config

from .torch_zip import CheckpointError, TensorRef, read_safetensors_metadata, read_state_dict

# How a PyTorch array becomes a Flax one.
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,  # (out, in) -> (in, out)
    "conv": lambda a: a.transpose(2, 3, 1, 0),  # (out, in, kh, kw) -> (kh, kw, in, out)
    "conv_transpose": lambda a: a.transpose(2, 3, 0, 1),  # (in, out, k, k) -> (k, k, in, out)
}
_SHAPE_OF = {
    "copy": lambda s: s,
    "linear": lambda s: s[::-1],
    "conv": lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None,
    "conv_transpose": lambda s: (s[2], s[3], s[0], s[1]) if len(s) == 4 else None,
}

# Present in the released files, deliberately not loaded (see the module docstring).
SKIPPED = {
    "beit": [
        r"pretrained\.model\.blocks\.\d+\.attn\.relative_position_index",
        r"pretrained\.model\.fc_norm\.(weight|bias)",
        r"pretrained\.model\.head\.(weight|bias)",
        r"scratch\.refinenet4\.resConfUnit1\.conv[12]\.(weight|bias)",
    ],
    "swinv2": [
        r"pretrained\.model\.layers\.\d+\.blocks\.\d+\.attn_mask",
        r"pretrained\.model\.layers\.\d+\.blocks\.\d+\.attn\.(relative_coords_table|relative_position_index)",
        r"pretrained\.model\.norm\.(weight|bias)",
        r"pretrained\.model\.head\.(weight|bias)",
        r"scratch\.refinenet4\.resConfUnit1\.conv[12]\.(weight|bias)",
    ],
}


@dataclass(frozen=True)
class Entry:
    source: str  # PyTorch state-dict key
    target: str  # "/"-joined path in the Flax params tree
    layout: str  # key of LAYOUTS


class ConversionError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model; lists every problem at once."""


# ---------------------------------------------------------------------------------------------
# Key tables


def _weights(src, dst, layout, bias=True):
    """A Linear or Conv: weight -> kernel (re-laid out), bias -> bias."""
    out = [Entry(f"{src}.weight", f"{dst}/kernel", layout)]
    return out + ([Entry(f"{src}.bias", f"{dst}/bias", "copy")] if bias else [])


def _linear(src, dst, bias=True):
    return _weights(src, dst, "linear", bias)


def _conv(src, dst, bias=True, layout="conv"):
    return _weights(src, dst, layout, bias)


def _norm(src, dst):
    return [Entry(f"{src}.weight", f"{dst}/scale", "copy"), Entry(f"{src}.bias", f"{dst}/bias", "copy")]


def _qkv_and_mlp(s, d):
    """The pieces both encoders' blocks share: layers.QKV and layers.Mlp."""
    return [
        Entry(f"{s}.attn.q_bias", f"{d}/attn/qkv/q_bias", "copy"),
        Entry(f"{s}.attn.v_bias", f"{d}/attn/qkv/v_bias", "copy"),
        Entry(f"{s}.attn.qkv.weight", f"{d}/attn/qkv/qkv/kernel", "linear"),
    ] + _linear(f"{s}.mlp.fc1", f"{d}/mlp/fc1") + _linear(f"{s}.mlp.fc2", f"{d}/mlp/fc2")


def _beit_encoder(c: BeitConfig) -> list[Entry]:
    t = [Entry("pretrained.model.cls_token", "encoder/cls_token", "copy")]
    t += _conv("pretrained.model.patch_embed.proj", "encoder/patch_embed")
    for i in range(max(c.hooks) + 1):
        s, d = f"pretrained.model.blocks.{i}", f"encoder/blocks_{i}"
        t += [Entry(f"{s}.gamma_1", f"{d}/gamma_1", "copy"), Entry(f"{s}.gamma_2", f"{d}/gamma_2", "copy")]
        t += _norm(f"{s}.norm1", f"{d}/norm1") + _norm(f"{s}.norm2", f"{d}/norm2")
        t.append(Entry(f"{s}.attn.relative_position_bias_table", f"{d}/attn/relative_position_bias_table", "copy"))
        t += _qkv_and_mlp(s, d) + _linear(f"{s}.attn.proj", f"{d}/attn/proj")
    return t


def _swinv2_encoder(c: SwinV2Config) -> list[Entry]:
    t = _conv("pretrained.model.patch_embed.proj", "encoder/patch_embed/proj")
    t += _norm("pretrained.model.patch_embed.norm", "encoder/patch_embed/norm")
    for s_i, depth in enumerate(c.depths):
        stage_s, stage_d = f"pretrained.model.layers.{s_i}", f"encoder/layers_{s_i}"
        for b in range(depth):
            s, d = f"{stage_s}.blocks.{b}", f"{stage_d}/blocks_{b}"
            t.append(Entry(f"{s}.attn.logit_scale", f"{d}/attn/logit_scale", "copy"))
            t += _qkv_and_mlp(s, d)
            t += _linear(f"{s}.attn.cpb_mlp.0", f"{d}/attn/cpb_mlp/fc1")
            t += _linear(f"{s}.attn.cpb_mlp.2", f"{d}/attn/cpb_mlp/fc2", bias=False)
            t += _linear(f"{s}.attn.proj", f"{d}/attn/proj")
            t += _norm(f"{s}.norm1", f"{d}/norm1") + _norm(f"{s}.norm2", f"{d}/norm2")
        if s_i < len(c.depths) - 1:  # timm 0.6 layout: the merge closes stages 0-2
            t += _linear(f"{stage_s}.downsample.reduction", f"{stage_d}/downsample/reduction", bias=False)
            t += _norm(f"{stage_s}.downsample.norm", f"{stage_d}/downsample/norm")
    return t


def _reassemble_fusion_head(c: DPTConfig) -> list[Entry]:
    t = []
    for i in range(1, 5):
        if c.family == "beit":
            s = f"pretrained.act_postprocess{i}"
            t += _linear(f"{s}.0.project.0", f"reassemble/readout_{i}/dense")
            t += _conv(f"{s}.3", f"reassemble/project_{i}")
            if i in (1, 2):
                t += _conv(f"{s}.4", f"reassemble/resample_{i}", layout="conv_transpose")
            elif i == 4:
                t += _conv(f"{s}.4", f"reassemble/resample_{i}")
        t += _conv(f"scratch.layer{i}_rn", f"reassemble/to_fusion_{i}", bias=False)
    for i in range(1, 5):
        s, d = f"scratch.refinenet{i}", f"fusion/block_{i}"
        for unit in (1, 2) if i < 4 else (2,):
            for conv in (1, 2):
                t += _conv(f"{s}.resConfUnit{unit}.conv{conv}", f"{d}/rcu{unit}/conv{conv}")
        t += _conv(f"{s}.out_conv", f"{d}/out_conv")
    for src, dst in ((0, 1), (2, 2), (4, 3)):
        t += _conv(f"scratch.output_conv.{src}", f"head/conv{dst}")
    return t


def key_table(config: DPTConfig) -> list[Entry]:
    """Every source key the model needs, with its target path and layout."""
    enc = _beit_encoder(config.encoder) if config.family == "beit" else _swinv2_encoder(config.encoder)
    return enc + _reassemble_fusion_head(config)


# ---------------------------------------------------------------------------------------------
# Variant detection


def _count(state: Mapping, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.fullmatch(k))})


def _shape(state: Mapping, key: str, path) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(path, f"not a MiDaS v3.1 BEiT/SwinV2 DPT checkpoint: key {key!r} is missing")
    return tuple(state[key].shape)


def detect_family(state: Mapping, path="<state dict>") -> str:
    if "pretrained.model.blocks.0.attn.relative_position_bias_table" in state:
        return "beit"
    if "pretrained.model.layers.0.blocks.0.attn.cpb_mlp.0.weight" in state:
        return "swinv2"
    hint = ""
    if any(k.startswith("backbone.") or k.startswith("dpt.") for k in state):
        hint = " (this looks like a Hugging Face transformers checkpoint; use the original MiDaS .pt file)"
    raise ConversionError(
        path, "not a MiDaS v3.1 BEiT or SwinV2 DPT checkpoint: found neither BEiT relative position "
        f"tables nor SwinV2 position-bias MLPs among its {len(state)} keys{hint}"
    )


def detect_config(state: Mapping, path="<state dict>", pretrained_window_sizes=None) -> DPTConfig:
    """The configuration of the checkpoint `state` (key -> anything with `.shape`).

    Matches a preset when the architecture equals one; otherwise a custom config named after
    its family. SwinV2 `pretrained_window_sizes` are not stored in checkpoints: they come from
    the matching preset, from `pretrained_window_sizes` when given (which wins), or default to
    zeros (the window's own size, as dpt_swin2_tiny_256).
    """
    family = detect_family(state, path)
    shape = lambda key: _shape(state, key, path)  # noqa: E731
    fusion = shape("scratch.layer1_rn.weight")[0]
    head = shape("scratch.output_conv.2.weight")[0]
    if family == "beit":
        embed = shape("pretrained.model.cls_token")[-1]
        depth = _count(state, r"pretrained\.model\.blocks\.(\d+)\..*")
        rows, heads = shape("pretrained.model.blocks.0.attn.relative_position_bias_table")
        side = math.isqrt(rows - 3)
        if side * side != rows - 3 or side % 2 == 0:
            raise ConversionError(path, f"relative_position_bias_table has {rows} rows, not (2G-1)^2 + 3")
        grid = (side + 1) // 2
        hooks = tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))  # the last block of each quarter
        encoder = BeitConfig(
            embed_dim=embed, depth=depth, num_heads=heads,
            mlp_hidden=shape("pretrained.model.blocks.0.mlp.fc1.weight")[0],
            hooks=hooks, native_grid=(grid, grid),
        )
        reassembly = tuple(shape(f"pretrained.act_postprocess{i}.3.weight")[0] for i in range(1, 5))
        native = (grid * 16, grid * 16)
    else:
        embed = shape("pretrained.model.patch_embed.proj.weight")[0]
        stages = _count(state, r"pretrained\.model\.layers\.(\d+)\..*")
        depths = tuple(_count(state, rf"pretrained\.model\.layers\.{s}\.blocks\.(\d+)\..*") for s in range(stages))
        heads = tuple(shape(f"pretrained.model.layers.{s}.blocks.0.attn.logit_scale")[0] for s in range(stages))
        # The first stage's shift mask (num_windows, ws*ws, ws*ws) gives the window and the native size.
        mask_key = "pretrained.model.layers.0.blocks.1.attn_mask"
        if mask_key not in state:
            raise ConversionError(path, f"cannot tell the window size and native input size: {mask_key!r} is missing")
        num_windows, ws2, _ = shape(mask_key)
        window = math.isqrt(ws2)
        res = window * math.isqrt(num_windows)
        size = res * 4
        preset_pw = _matching_swin_preset_windows(embed, depths, heads, window, size)
        encoder = SwinV2Config(
            embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
            pretrained_window_sizes=tuple(pretrained_window_sizes or preset_pw or (0,) * stages),
            native_size=(size, size),
        )
        reassembly = encoder.stage_dims
        native = (size, size)
    config = DPTConfig(
        name=f"custom_{family}", encoder=encoder, reassembly_features=reassembly, native_size=native,
        keep_aspect_ratio=family == "beit", fusion_features=fusion, head_features=head,
    )
    for preset in PRESETS.values():
        if preset.replace(name=config.name) == config:
            return preset
    return config


def _matching_swin_preset_windows(embed, depths, heads, window, size):
    for p in PRESETS.values():
        e = p.encoder
        if p.family == "swinv2" and (e.embed_dim, e.depths, e.num_heads, e.window_size, e.native_size) == (
            embed, depths, heads, window, (size, size)
        ):
            return e.pretrained_window_sizes
    return None


# ---------------------------------------------------------------------------------------------
# Conversion


@dataclass
class Conversion:
    config: DPTConfig
    params: dict  # nested Flax tree of NumPy arrays
    skipped: list[str]  # source keys deliberately not loaded


def skipped_keys(state: Mapping, family: str) -> list[str]:
    rx = [re.compile(p) for p in SKIPPED[family]]
    return [k for k in state if any(r.fullmatch(k) for r in rx)]


def check_state_dict(state: Mapping, config: DPTConfig, expected_shapes: Mapping[str, tuple]) -> list[str]:
    """Every way `state` fails to fit the model (missing, unexpected, mis-shaped keys); reads no tensor data."""
    table = key_table(config)
    known = {e.source for e in table} | set(skipped_keys(state, config.family))
    missing = [e.source for e in table if e.source not in state]
    unexpected = [k for k in state if k not in known]
    untargeted = sorted(set(expected_shapes) - {e.target for e in table})
    mis_shaped = []
    for e in table:
        if e.source in state:
            got = _SHAPE_OF[e.layout](tuple(state[e.source].shape))
            want = tuple(expected_shapes.get(e.target, ()))
            if got != want:
                mis_shaped.append(f"{e.source}: shape {tuple(state[e.source].shape)} does not fit {e.target} {want}")
    return [
        f"{len(items)} {title}:\n    " + "\n    ".join(items)
        for title, items in (
            ("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped),
            ("model parameters with no source", untargeted),
        )
        if items
    ]


def convert_state_dict(
    state: Mapping[str, TensorRef], config: DPTConfig, expected_shapes: Mapping[str, tuple], path="<state dict>"
) -> Conversion:
    """Map `state` onto the Flax tree whose leaf shapes are `expected_shapes` ("/"-joined path -> shape).

    Reads only the tensors the model uses. Raises ConversionError listing every missing,
    unexpected and mis-shaped key.
    """
    problems = check_state_dict(state, config, expected_shapes)
    if problems:
        raise ConversionError(path, f"does not fit {config.name} ({config.family}):\n  " + "\n  ".join(problems))
    table = key_table(config)
    params: dict = {}
    for e in table:
        array = np.ascontiguousarray(LAYOUTS[e.layout](state[e.source].read()))
        node = params
        *parents, leaf = e.target.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = array
    return Conversion(config=config, params=params, skipped=skipped_keys(state, config.family))


# ---------------------------------------------------------------------------------------------
# Files: original checkpoints in, converted safetensors out (and back in).

FORMAT = "dpt-jax"  # value of the "format" metadata entry of converted files
FORMAT_VERSION = "1"


def convert_checkpoint(path, pretrained_window_sizes=None) -> Conversion:
    """Read an original MiDaS `.pt` or `.safetensors` checkpoint and convert it (lazily: unused tensors stay on disk)."""
    from dpt_jax.dpt import param_shapes

    state = read_state_dict(path)
    config = detect_config(state, path, pretrained_window_sizes)
    return convert_state_dict(state, config, param_shapes(config), path)


def is_converted(path) -> bool:
    try:
        return read_safetensors_metadata(path).get("format") == FORMAT
    except CheckpointError:
        return False


def write_converted(path, config: DPTConfig, params: Mapping) -> None:
    """Write params (nested dict of arrays) as safetensors with the config in the metadata, atomically."""
    from flax import traverse_util

    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
    write_safetensors(path, flat, metadata)


def read_converted(path, pretrained_window_sizes=None) -> tuple[DPTConfig, dict]:
    """Config and parameter tree of a converted file; every shape is checked against the model."""
    from flax import traverse_util

    from dpt_jax.dpt import param_shapes

    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "not a dpt-jax converted file (no 'format: dpt-jax' metadata)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(path, f"converted with format version {meta.get('format_version')!r}; "
                              f"this dpt-jax reads version {FORMAT_VERSION}: convert the original again")
    try:
        config = DPTConfig.from_json(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"the config in its metadata is unreadable: {e}") from None
    if pretrained_window_sizes is not None and config.family == "swinv2":
        config = config.replace(encoder=dataclasses.replace(
            config.encoder, pretrained_window_sizes=tuple(pretrained_window_sizes)))
    state = read_state_dict(path)
    want = param_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    mis_shaped = [f"{k}: {tuple(state[k].shape)}, expected {want[k]}"
                  for k in want if k in state and tuple(state[k].shape) != want[k]]
    problems = [f"{len(v)} {t}:\n    " + "\n    ".join(v)
                for t, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)) if v]
    if problems:
        raise ConversionError(path, f"does not fit {config.name}:\n  " + "\n  ".join(problems))
    params = traverse_util.unflatten_dict({k: state[k].read() for k in want}, sep="/")
    return config, params


_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
                       "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors(path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Stream `arrays` into a safetensors file, one array at a time, via a temporary file and a rename.

    A crash or a full disk leaves no partial file at `path`.
    """
    import json

    header, offset = {}, 0
    for key, a in arrays.items():
        header[key] = {"dtype": _SAFETENSORS_DTYPES[a.dtype.name], "shape": list(a.shape),
                       "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with atomic_write(path, ".safetensors") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
