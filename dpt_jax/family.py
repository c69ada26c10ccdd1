"""What an encoder family is: everything family-specific, in one object the rest of dpt-jax asks.

Each encoder module (beit.py, swinv2.py) ends with one `EncoderFamily`, and `registry.py` lists
them. The DPT neck (dpt.py), the converter (convert/), the model loader and the benchmarks
never compare family names: they ask the family of a config (`config.family`) for its encoder
module, its key table, its input multiple and so on. Adding a family is adding one module that
ends with such an object, and one line in registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class EncoderFamily:
    name: str  # "beit", "swinv2", ...: recorded in converted files
    config_class: type  # the frozen encoder config dataclass
    encoder: type  # Flax module: Encoder(config)(images (B, H, W, 3)) -> four features
    #: True: the features are token sequences (B, 1 + h*w, C) on the patch grid, cls token first, and
    #: the neck reassembles them into maps; False: they are maps (B, h_i, w_i, C_i) at four scales already.
    outputs_tokens: bool
    presets: tuple  # DPTConfig of every released checkpoint of the family
    input_multiple: Callable[[Any], int]  # encoder config -> image sides must be multiples of this
    recognises: Callable[[Mapping], bool]  # state dict (key -> .shape) -> is it of this family?
    #: (state dict, path, options) -> DPTConfig read off the keys and shapes (reads no tensor data);
    #: options are the user's choices a checkpoint cannot tell (e.g. pretrained_window_sizes).
    detect_config: Callable[..., Any]
    key_table: Callable[[Any], list]  # DPTConfig -> [convert.keys.Entry] for the whole model
    skipped: Callable[[Any], list]  # DPTConfig -> [convert.keys.Skip]: keys in released files the model does not use
    encoder_flops: Callable[..., Any]  # (encoder config, height, width, batch, add) -> the neck's input sizes
    minis: tuple = ()  # the family's wiring at toy sizes (DPTConfig), for smoke runs and tests
    #: the options detect_config understands, with their help text (shown in errors and the CLI)
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        # Every config of the family answers `type(config).family`: no lookup table, no import of the registry.
        self.config_class.family = self

    def __repr__(self) -> str:
        return f"EncoderFamily({self.name!r})"


def vit_encoder_flops(c, height: int, width: int, batch: int, add) -> tuple[int, int]:
    """A plain ViT encoder's FLOPs (2 x MACs: BEiT, DINOv2) into `add(component, flops)`; returns the patch grid.

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
    add("encoder.mlp", blocks * 2 * (2 * batch * N * C * c.mlp_hidden))
    return h, w
