"""The DPT model configuration: one frozen dataclass for the neck and head, one per encoder family.

`DPTConfig` holds what every DPT depth model shares (reassembly, fusion, head, the input and
output geometry) as data; `encoder` is the config of an encoder family (`BeitConfig` in beit.py,
`SwinV2Config` in swinv2.py), and `registry.py` knows which family a config belongs to. Every
config validates its fields when it is built (`checked_fields`): a converted file whose metadata
was tampered with is refused field by field instead of allocating or tracing what it declares.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

Pair = tuple[int, int]

#: The largest input side any config may declare as native (pixels), and the widest layer.
MAX_SIDE = 4096
MAX_WIDTH = 16384


def bounded(lo, hi, **kw):
    """A dataclass field whose value (or each element, for tuples) must lie in [lo, hi]."""
    return field(metadata={"range": (lo, hi)}, **kw)


def choice(*options, **kw):
    """A dataclass field whose value must be one of `options`."""
    return field(metadata={"choices": options}, **kw)


def _check_value(name: str, value, hint, meta) -> None:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, tuple):
            raise ConfigError(f"{name} must be a list of values; got {type(value).__name__}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise ConfigError(f"{name} must have {len(args)} values; got {len(value)}")
            items = [(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args))]
        if len(items) > 64:
            raise ConfigError(f"{name} has {len(items)} values; at most 64 are allowed")
        for n, v, a in items:
            _check_value(n, v, a, meta)
        return
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            if len(args) == len(typing.get_args(hint)):
                raise ConfigError(f"{name} must not be null")
            return
        hint = args[0]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false; got {type(value).__name__}")
        return
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer; got {type(value).__name__}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            shown = value if isinstance(value, (int, float)) else type(value).__name__
            raise ConfigError(f"{name} must be a finite number; got {shown}")
    elif hint is str:
        if not isinstance(value, str) or len(value) > 200:
            raise ConfigError(f"{name} must be a short string; got {type(value).__name__}")
        if not value.isprintable():  # a name printed in status lines must not carry newlines or escapes
            raise ConfigError(f"{name} must be printable text; got {value[:40]!r}")
    if "range" in meta:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise ConfigError(f"{name} = {value} is outside [{lo}, {hi}]")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, meta['choices']))}; got {value!r}")


def checked_fields(config) -> None:
    """Check every field of a config dataclass against its type hint and its `bounded`/`choice` metadata.

    Nested config dataclasses are checked when they are built, so only their type is checked here.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{f.name} must be a {hint.__name__}; got {type(value).__name__}")
            continue
        if hint is Any:
            continue
        _check_value(f.name, value, hint, f.metadata)


def require(condition: bool, message: str) -> None:
    """A cross-field rule of a config (checked after the fields one by one)."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DPTConfig:
    """A whole DPT depth model: an encoder, then the neck and head of figure 1 of the DPT paper, as data.

    Neck: each of the four encoder outputs is reassembled into a map (readout of the cls token,
    1x1 projection to `reassembly_features[i]`, resampling by `reassemble_factors[i]`: 4 and 2 by
    transposed convolution, 1 kept, 0.5 by a strided 3x3 conv), projected to `fusion_features`,
    then fused coarse to fine; `fusion_residual[i]` says whether fusion block i+1 takes its own map
    through a residual unit (the deepest block has none: its map is its input).
    Head: `head` names the layout ("midas": 3x3 conv, x2 upsampling, 3x3 conv, ReLU, 1x1 conv;
    "depth_anything": the same convs, the upsampling to the input's size); `depth_activation` is
    "relu" (relative inverse depth), "sigmoid" (times `max_depth`: metric depth in metres),
    "relu_metres" (a ReLU head trained on metres: Video Depth Anything's metric models) or "exp"
    (depth, Depth Anything 3; in metres as focal * depth / `focal_metric_divisor` where that is set);
    `sky_head` adds Depth Anything 3's sky branch (sky pixels get the depth of the far background).
    `temporal_frames` > 0: a video model whose neck attends across up to that many frames.
    Around the network: `resize_rule` ("minimal": native size, sides to the nearest multiple;
    "lower_bound": at least the native size; "at_most": only pictures larger than the native
    size shrink), `input_resize`, `input_mean`/`input_std`, `output_resize`.
    `prompt`: the fusion blocks take a metric depth prompt (Prompt Depth Anything): each adds a
    conv branch of the prompt, min/max-normalised per sample, and the head's sigmoid is mapped
    back onto the prompt's [min, max] in metres (prompt.py); False leaves the model as it was.
    """

    name: str
    encoder: Any  # an encoder family's config (its class names its family)
    reassembly_features: tuple[int, int, int, int] = bounded(1, MAX_WIDTH)
    reassemble_factors: tuple[float, float, float, float] = choice(4, 2, 1, 0.5)
    readout: str = choice("project", "ignore", "none")  # the cls token: projected in (BEiT), dropped, or absent
    native_size: Pair = bounded(14, MAX_SIDE)  # (H, W) of the preprocessing target
    keep_aspect_ratio: bool = True  # MiDaS: BEiT keeps the aspect ratio, SwinV2 resizes to a square
    fusion_features: int = bounded(1, MAX_WIDTH, default=256)
    fusion_residual: tuple[bool, bool, bool, bool] = (True, True, True, False)
    head: str = choice("midas", "depth_anything", "dualdpt", default="midas")  # dualdpt: dualdpt.py (DA3 any-view)
    head_features: int = bounded(1, MAX_WIDTH, default=32)
    depth_activation: str = choice("relu", "sigmoid", "relu_metres", "exp", default="relu")
    max_depth: float = bounded(0.0, 1e6, default=0.0)  # metres, for depth_activation="sigmoid"
    #: Video Depth Anything: > 0 puts a temporal module (frames attending to each other, a position
    #: table of this many frames) on reassembled maps 3 and 4 and after fusion blocks 4 and 3
    temporal_frames: int = bounded(0, 256, default=0)
    #: a second head branch on the same upsampled features: the sky map (Depth Anything 3 monocular)
    sky_head: bool = False
    #: > 0: metric depth in metres is focal (pixels, at the network input) * output / this (DA3 metric: 300)
    focal_metric_divisor: float = bounded(0.0, 1e6, default=0.0)
    # Pre- and postprocessing (preprocess.py): the size rule, the input normalisation, the output resize.
    #: MiDaS Resize's resize_method ("minimal", "lower_bound"), "at_most" (Prompt Depth Anything: only
    #: larger pictures shrink) or "upper_bound" (Depth Anything 3: the longer side to the native size,
    #: two OpenCV resizes of the uint8 picture)
    resize_rule: str = choice("minimal", "lower_bound", "at_most", "upper_bound", default="minimal")
    resize_multiple: int = bounded(1, 1024, default=32)  # its ensure_multiple_of (MiDaS: 32 for every encoder)
    input_mean: tuple[float, float, float] = bounded(-10.0, 10.0, default=(0.5, 0.5, 0.5))  # RGB in [0, 1]
    input_std: tuple[float, float, float] = bounded(1e-6, 10.0, default=(0.5, 0.5, 0.5))
    #: how the prediction is resized back to the picture: bicubic (MiDaS run.py), bilinear with
    #: align_corners=True (Depth Anything V2 infer_image) or False (Depth Anything V1 run.py)
    output_resize: str = choice("bicubic", "bilinear_align_corners", "bilinear", default="bicubic")
    #: how the picture is resized to the network: OpenCV bicubic (MiDaS, Depth Anything) or OpenCV's
    #: area average (Prompt Depth Anything's load_image, which only ever shrinks)
    input_resize: str = choice("bicubic", "area", default="bicubic")
    prompt: bool = False  # a depth prompt enters every fusion block (see the docstring)

    def __post_init__(self):
        checked_fields(self)
        require(self.fusion_residual[3] is False,
                "fusion_residual[3] must be false: the deepest fusion block has no input before it")
        require(self.depth_activation != "sigmoid" or self.max_depth > 0 or self.prompt,
                "a metric model with depth_activation 'sigmoid' needs max_depth > 0")
        require(self.depth_activation == "sigmoid" or self.max_depth == 0,
                f"max_depth applies to depth_activation 'sigmoid'; this model's is {self.depth_activation!r}")
        require(not self.prompt or (self.depth_activation == "sigmoid" and self.max_depth == 0),
                "a prompted model takes its depth range from the prompt: depth_activation 'sigmoid', max_depth 0")
        require(self.focal_metric_divisor == 0 or self.depth_activation == "exp",
                "focal_metric_divisor applies to depth_activation 'exp' (Depth Anything 3)")
        require(all(s % self.resize_multiple == 0 for s in self.native_size) or self.resize_rule != "lower_bound",
                "with resize_rule 'lower_bound' the native size must be a multiple of resize_multiple")
        family = getattr(type(self.encoder), "family", None)
        if family is not None:  # sizes the preprocessing makes must be sizes the encoder takes
            multiple = family.input_multiple(self.encoder)
            require(self.resize_multiple % multiple == 0, f"resize_multiple {self.resize_multiple} must be a multiple "
                    f"of {multiple}, the sides the encoder takes (otherwise every picture fails)")

    @property
    def family(self):
        """The encoder family (an `EncoderFamily`, see family.py): each family marks its config class."""
        return type(self.encoder).family

    @property
    def input_multiple(self) -> int:
        """Image sides must be multiples of this (16 for BEiT, 32 for SwinV2, 14 for DINOv2)."""
        return self.family.input_multiple(self.encoder)

    @property
    def is_metric(self) -> bool:
        """Metric depth in metres (True) or relative depth / inverse depth (False)."""
        return self.depth_activation in ("sigmoid", "relu_metres") or self.focal_metric_divisor > 0

    @property
    def predicts_depth(self) -> bool:
        """Larger is farther (depth, metric or relative) rather than relative inverse depth."""
        return self.depth_activation != "relu"

    @property
    def is_temporal(self) -> bool:
        """A video model: its frames attend to each other (`predict_video`); pictures alone are refused."""
        return self.temporal_frames > 0

    def check_input_size(self, height: int, width: int) -> None:
        m = self.input_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"{self.name} takes images whose height and width are multiples of {m}; got {height}x{width} (HxW). "
                "Resize the image first (model.predict does this for you)."
            )

    def replace(self, **changes) -> "DPTConfig":
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation, used for the metadata of converted files (registry.config_from_json reads it)
    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["encoder"]["family"] = self.family.name
        return json.dumps(d, sort_keys=True)


def from_dict(cls, d: dict, where: str = "config"):
    """Build config dataclass `cls` from a JSON-like dict; unknown or missing fields and bad values: ConfigError."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be an object; got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(d) - names):
        raise ConfigError(f"{where} has unknown fields: {', '.join(map(str, unknown[:10]))}")
    try:
        return cls(**{k: _tuplify(k, v) for k, v in d.items()})
    except (TypeError, ConfigError) as e:  # a missing required field, or a bad value
        raise ConfigError(f"{where}: {e}") from None


def _tuplify(name, v, depth=0):
    if isinstance(v, list):
        if depth > 1 or len(v) > 64:
            raise ConfigError(f"{name}: config lists are at most 64 values, one level deep")
        return tuple(_tuplify(name, x, depth + 1) for x in v)
    return v
