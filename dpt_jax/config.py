"""Model configurations: one frozen dataclass per encoder, one for the whole DPT, and named presets.

The six presets describe the released MiDaS v3.1 checkpoints. Every number here is an
architectural fact of those files (read back from the modules the original code builds);
nothing is learned or guessed at run time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Union

Pair = tuple[int, int]


@dataclass(frozen=True)
class BeitConfig:
    """BEiT encoder: a plain ViT with pre-norm blocks, layer scale and a relative position bias per block."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    hooks: tuple[int, ...]  # indices of the blocks whose outputs feed the four DPT stages
    native_grid: Pair  # patch grid the relative position tables were made for (img_size // 16)
    patch_size: int = 16
    layer_norm_eps: float = 1e-6

    family = "beit"


@dataclass(frozen=True)
class SwinV2Config:
    """SwinV2 encoder: windowed scaled-cosine attention, res-post-norm blocks, patch merging."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    # Not stored in checkpoints: (12, 12, 12, 6) for base/large 384, zeros for tiny 256.
    pretrained_window_sizes: tuple[int, ...]
    native_size: Pair  # (H, W) the original was built for
    patch_size: int = 4
    mlp_ratio: int = 4
    cpb_hidden: int = 512
    layer_norm_eps: float = 1e-5

    family = "swinv2"

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


EncoderConfig = Union[BeitConfig, SwinV2Config]


@dataclass(frozen=True)
class DPTConfig:
    """A whole DPT depth model: encoder, reassembly widths, fusion width and head."""

    name: str
    encoder: EncoderConfig
    reassembly_features: tuple[int, ...]  # channels of the four reassembled maps (before the fusion projections)
    native_size: Pair  # (H, W) of the preprocessing target
    keep_aspect_ratio: bool  # MiDaS preprocessing: BEiT keeps the aspect ratio, SwinV2 resizes to a square
    fusion_features: int = 256
    head_features: int = 32

    @property
    def family(self) -> str:
        return self.encoder.family

    @property
    def input_multiple(self) -> int:
        """Image sides must be multiples of this: the patch size (BEiT) or patch size x 2^3 merges (SwinV2)."""
        return 16 if self.family == "beit" else 32

    def check_input_size(self, height: int, width: int) -> None:
        m = self.input_multiple
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"{self.name} takes images whose height and width are multiples of {m}; got {height}x{width} (HxW). "
                "Resize the image first (model.predict does this for you)."
            )

    # -- (de)serialisation, used for the metadata of converted files --------------------------
    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["encoder"]["family"] = self.family
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DPTConfig":
        d = json.loads(text)
        enc = dict(d.pop("encoder"))
        family = enc.pop("family")
        enc_cls = {"beit": BeitConfig, "swinv2": SwinV2Config}[family]
        enc = enc_cls(**{k: _tuplify(v) for k, v in enc.items()})
        return cls(encoder=enc, **{k: _tuplify(v) for k, v in d.items()})

    def replace(self, **changes) -> "DPTConfig":
        return dataclasses.replace(self, **changes)


def _tuplify(v):
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


# ---------------------------------------------------------------------------------------------
# Presets: the six MiDaS v3.1 checkpoints.


def _beit(name, *, size, embed_dim, depth, num_heads, hooks, reassembly):
    return DPTConfig(
        name=name,
        encoder=BeitConfig(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_hidden=4 * embed_dim,
            hooks=hooks,
            native_grid=(size // 16, size // 16),
        ),
        reassembly_features=reassembly,
        native_size=(size, size),
        keep_aspect_ratio=True,
    )


def _swin2(name, *, size, embed_dim, depths, num_heads, window, pretrained_windows):
    enc = SwinV2Config(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window,
        pretrained_window_sizes=pretrained_windows,
        native_size=(size, size),
    )
    return DPTConfig(
        name=name,
        encoder=enc,
        reassembly_features=enc.stage_dims,
        native_size=(size, size),
        keep_aspect_ratio=False,
    )


PRESETS: dict[str, DPTConfig] = {
    c.name: c
    for c in [
        _beit("dpt_beit_large_512", size=512, embed_dim=1024, depth=24, num_heads=16,
              hooks=(5, 11, 17, 23), reassembly=(256, 512, 1024, 1024)),
        _beit("dpt_beit_large_384", size=384, embed_dim=1024, depth=24, num_heads=16,
              hooks=(5, 11, 17, 23), reassembly=(256, 512, 1024, 1024)),
        _beit("dpt_beit_base_384", size=384, embed_dim=768, depth=12, num_heads=12,
              hooks=(2, 5, 8, 11), reassembly=(96, 192, 384, 768)),
        _swin2("dpt_swin2_large_384", size=384, embed_dim=192, depths=(2, 2, 18, 2),
               num_heads=(6, 12, 24, 48), window=24, pretrained_windows=(12, 12, 12, 6)),
        _swin2("dpt_swin2_base_384", size=384, embed_dim=128, depths=(2, 2, 18, 2),
               num_heads=(4, 8, 16, 32), window=24, pretrained_windows=(12, 12, 12, 6)),
        _swin2("dpt_swin2_tiny_256", size=256, embed_dim=96, depths=(2, 2, 6, 2),
               num_heads=(3, 6, 12, 24), window=16, pretrained_windows=(0, 0, 0, 0)),
    ]
}


def get_config(name: str) -> DPTConfig:
    """A preset by name; accepts the short form too ("beit_large_512" for "dpt_beit_large_512")."""
    key = name if name in PRESETS else f"dpt_{name}"
    if key not in PRESETS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]
