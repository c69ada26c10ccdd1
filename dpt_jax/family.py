"""What an encoder family is: everything family-specific, in one object the rest of dpt-jax asks.

A family lives in two files: `dpt_jax/<family>.py` (the network: config, encoder module,
presets, minis, FLOP terms) and `convert/<family>.py` (what is known about its files: key
tables, detection, the Hugging Face layout, the release files), which ends with one
`EncoderFamily`. `registry.py` finds every such object; nothing else names a family. The DPT
neck asks `config.family.encoder`, the checkpoint service asks the family that `recognises` a
file, the hub asks for `releases`, the CLI and `load` for `options`, the benchmarks for `hf`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Option:
    """A choice a checkpoint cannot tell (a `load` keyword, a CLI flag `--<name with dashes>`)."""

    name: str
    help: str
    parse: Callable[[str], Any]  # the CLI text -> the value (ValueError with a message when it is bad)
    metavar: str = "VALUE"


@dataclass(frozen=True)
class Release:
    """One downloadable original checkpoint: a file at an HTTP URL, or a file of a Hub repository."""

    name: str  # the preset name it holds (the registry name and the cache file's stem)
    file: str  # the file's name as published (Depth Anything's names tell the variant)
    approx_bytes: int  # the tensor byte total (the file is slightly larger): messages and progress only
    licence: str
    url: str | None = None  # fetched by dpt-jax's resumable HTTP download
    repo: str | None = None  # or: fetched from this Hugging Face Hub repository with huggingface_hub,
    repo_type: str = "model"  # ("model" or "space")
    subfolder: str = ""  # the file's folder in the repository
    holds: str | None = None  # the preset the file holds, when not `name` (a mirror under another name)
    sha256: str | None = None  # the published file's SHA-256 (64 lowercase hex digits); None: not pinned

    def __post_init__(self):
        if self.sha256 is not None and not (len(self.sha256) == 64 and set(self.sha256) <= set("0123456789abcdef")):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")


@dataclass(frozen=True)
class HFLayout:
    """A family in the Hugging Face transformers layout: names, config.json in both directions.

    `rules` rename original keys to transformers' (convert.hf.Rename / Split); `parse(top,
    backbone)` reads a config.json (convert.hf.Fields of the top level and of backbone_config)
    into a convert.hf.HFModel; `config_json(config)` writes the config.json transformers'
    from_pretrained takes; `extra_tensors(config, state)` adds the tensors transformers' files
    hold that the forward never uses.
    """

    model_type: str  # config.json "model_type"
    backbone_type: str  # config.json "backbone_config.model_type"
    architecture: str  # the transformers class, e.g. "DPTForDepthEstimation"
    rules: tuple
    parse: Callable[..., Any]
    config_json: Callable[[Any], dict]
    extra_tensors: Callable[[Any, dict], dict] = lambda config, state: {}
    #: what the benchmarks' PyTorch side asks of transformers: the attention it offers ("sdpa"
    #: or "eager"), and the parameter names its forward never calls
    default_attention: str = "eager"
    unused_prefixes: tuple[str, ...] = ()
    #: which of the family's models this layout holds (DPTConfig -> bool); a model no layout of its family
    #: fits has none in transformers (Video Depth Anything); a family may have several (`EncoderFamily.hf_more`)
    fits: Callable[[Any], bool] = lambda config: True


@dataclass(frozen=True)
class EncoderFamily:
    name: str  # recorded in converted files
    title: str  # how messages name its models, e.g. "MiDaS v3.1 DPT-BEiT"
    config_class: type  # the frozen encoder config dataclass
    encoder: type  # Flax module: Encoder(config, dtype_mm[, remat=True])(images (B, H, W, 3)) -> four features
    #: True: the features are token sequences (B, 1 + h*w, C) on the patch grid, cls token first, and
    #: the neck reassembles them into maps; False: they are maps (B, h_i, w_i, C_i) at four scales already.
    outputs_tokens: bool
    presets: tuple  # DPTConfig of every released checkpoint of the family
    input_multiple: Callable[[Any], int]  # encoder config -> image sides must be multiples of this
    recognises: Callable[[Mapping], bool]  # state dict (key -> .shape) -> is it of this family?
    #: (state dict, path, **options) -> DPTConfig read off the keys and shapes (reads no tensor data)
    detect_config: Callable[..., Any]
    key_table: Callable[[Any], list]  # DPTConfig -> [convert.keys.Entry] for the whole model
    skipped: Callable[[Any], list]  # DPTConfig -> [convert.keys.Skip]: keys in released files the model does not use
    encoder_flops: Callable[..., Any]  # (encoder config, height, width, batch, add) -> the neck's input sizes
    #: (encoder config, height, width, batch) -> a lower bound of the bytes the encoder's activations hold at
    #: once (memory.activation_bytes); 0 where the family does not say
    encoder_peak_bytes: Callable[..., int] = lambda c, height, width, batch: 0
    minis: tuple = ()  # the family's wiring at toy sizes (DPTConfig), for smoke runs and tests
    options: tuple[Option, ...] = ()  # choices its files cannot tell
    #: True where the keys cannot tell the variant (detect_config takes variant=); else they can and must
    chooses_variant: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)  # other names of presets -> preset names
    releases: tuple[Release, ...] = ()
    hf: HFLayout | None = None
    #: further transformers layouts of the family's models (another model_type), read and written like `hf`
    hf_more: tuple[HFLayout, ...] = ()
    hf_repos: Mapping[str, str] = field(default_factory=dict)  # preset name -> Hub repo in transformers' layout
    #: (config, size) -> KerasHub's model of the same architecture at size x size, random weights, for the
    #: side-by-side benchmark (benchmarks/keras_hub_side.py); None where KerasHub has none
    keras_hub: Callable[..., Any] | None = None
    #: fields version-1 converted files did not store, with the values the family implied then
    v1_fields: Mapping[str, Any] = field(default_factory=dict)
    #: a file's state dict under the names its key table uses, where a released file wraps them
    #: otherwise (a training wrapper's key prefix, another module layout); the same mapping when not
    source_keys: Callable[[Mapping], Mapping] = lambda state: state

    def __post_init__(self):
        # Every config of the family answers `type(config).family`: no lookup table, no import of the registry.
        self.config_class.family = self

    def __repr__(self) -> str:
        return f"EncoderFamily({self.name!r})"

    @property
    def hf_layouts(self) -> tuple[HFLayout, ...]:
        """Every transformers layout of the family: `hf` first, then `hf_more`."""
        return ((self.hf,) if self.hf is not None else ()) + tuple(self.hf_more)

    def hf_layout_of(self, config) -> HFLayout | None:
        """The layout that holds `config` (its `fits`), or None where transformers has none for it."""
        return next((layout for layout in self.hf_layouts if layout.fits(config)), None)


def vit_encoder_peak_bytes(c, height: int, width: int, batch: int) -> int:
    """A lower bound of a plain ViT encoder's activation bytes at once (float32): an MLP's input and hidden
    layer (B, N, C + hidden), N counting the cls token. The attention logits are not counted: XLA fuses the
    softmax with its two products and need not hold them (measured on CPU: DINOv2 at 2072x2072 holds less
    than one head's logits)."""
    n = (height // c.patch_size) * (width // c.patch_size) + 1
    return 4 * batch * n * (c.embed_dim + c.mlp_hidden)


def vit_encoder_flops(c, height: int, width: int, batch: int, add) -> tuple[int, int]:
    """A plain ViT encoder's FLOPs (2 x MACs) into `add(component, flops)`; returns the patch grid.

    Patch embedding, then per block the q/k/v and output projections, both attention products
    over the tokens and the cls token, and the MLP; the encoder stops after its last hooked block.
    """
    p = c.patch_size
    h, w = height // p, width // p
    T, C = h * w, c.embed_dim
    N = T + 1  # with the cls token
    blocks = max(c.hooks) + 1
    add("encoder.patch_embed", 2 * batch * T * 3 * p * p * C)
    add("encoder.qkv_proj", blocks * (2 * batch * N * C * 3 * C + 2 * batch * N * C * C))
    add("encoder.attention", blocks * 2 * (2 * batch * N * N * C))
    ffn_layers = 3 if getattr(c, "ffn", "mlp") == "swiglu" else 2  # SwiGLU: w12 (2 x hidden) and w3
    add("encoder.mlp", blocks * ffn_layers * (2 * batch * N * C * c.mlp_hidden))
    return h, w
