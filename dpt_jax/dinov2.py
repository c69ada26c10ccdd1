"""DINOv2 ViT encoder of Depth Anything (V1 and V2): 14 px patches and a learned absolute position table.

Patch embedding (14x14 conv, stride 14) -> prepend the cls token -> add the position table
(resized to the patch grid with DINOv2's bicubic + 0.1 offset rule) -> pre-norm blocks with
layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)). The outputs of four chosen blocks,
each passed through the shared final LayerNorm, feed the DPT neck; the residual stream
itself is never normed.

Intermediates are sown in the "intermediates" collection under the reference fixtures' names:
pos_embed, tokens0, block{i}_raw (i = block index), feat{k} / cls{k} (k = 1..4, normed).

The module ends with the released models on this encoder as DPTConfig presets (Depth Anything
V2 relative, V2 metric Hypersim / Virtual KITTI, V1; Video Depth Anything relative and metric)
and the reference minis; what is known about their files (the same keys within each line: the
variant is a choice) is in convert/dinov2.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .config import MAX_SIDE, MAX_WIDTH, DPTConfig, bounded, checked_fields, require
from .layers import Conv, Dense, LayerScaleBlock, attend, layer_norm, merge_heads, patch_grid, rematerialised
from .resize import _keys_far, _keys_near, resample_axis

Pair = tuple[int, int]
_F32 = np.float32


@dataclass(frozen=True)
class Dinov2Config:
    """DINOv2 ViT as built by Depth Anything (no registers, MLP feed-forward, LayerScale)."""

    embed_dim: int = bounded(1, MAX_WIDTH)
    depth: int = bounded(1, 64)
    num_heads: int = bounded(1, 256)
    mlp_hidden: int = bounded(1, 4 * MAX_WIDTH)
    hooks: tuple[int, int, int, int] = bounded(0, 63)  # 0-based blocks whose (normed) outputs feed the four DPT stages
    native_grid: Pair = bounded(1, MAX_SIDE // 14, default=(37, 37))  # grid of the stored position table (518 / 14)
    patch_size: int = bounded(1, 64, default=14)
    layer_norm_eps: float = bounded(1e-12, 1e-2, default=1e-6)
    interpolate_offset: float = bounded(0.0, 1.0, default=0.1)  # DINOv2 resizes the table by (g + offset) / N, not to g

    def __post_init__(self):
        checked_fields(self)
        require(self.embed_dim % self.num_heads == 0, "embed_dim must be a multiple of num_heads")
        require(list(self.hooks) == sorted(set(self.hooks)) and max(self.hooks) < self.depth,
                "hooks must be increasing block indices below depth")


# The released encoders (pos table 37x37). V2 feeds the DPT from fixed blocks; V1 from the last four.
DA2_VITS = Dinov2Config(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1536, hooks=(2, 5, 8, 11))
DA2_VITB = Dinov2Config(embed_dim=768, depth=12, num_heads=12, mlp_hidden=3072, hooks=(2, 5, 8, 11))
DA2_VITL = Dinov2Config(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096, hooks=(4, 11, 17, 23))
DA1_VITS = Dinov2Config(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1536, hooks=(8, 9, 10, 11))
DA1_VITB = Dinov2Config(embed_dim=768, depth=12, num_heads=12, mlp_hidden=3072, hooks=(8, 9, 10, 11))
DA1_VITL = Dinov2Config(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096, hooks=(20, 21, 22, 23))


# ---------------------------------------------------------------------------------------------
# Position table resize


@functools.lru_cache(maxsize=None)
def scaled_cubic_taps(in_size: int, scale_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(out, 4) indices and weights of F.interpolate(mode="bicubic", align_corners=False) given `scale_factor=`.

    With a scale factor (rather than a size) PyTorch samples at src = (dst + 0.5) * s - 0.5 where
    s = float32(1.0 / scale_factor) (the division in double), and the output size is
    int(in_size * scale_factor) (double). The rest is `resize.cubic_taps(..., "torch")`: src in
    float32, lower index floor(src) capped at in - 1, fraction clipped to [0, 1], Keys a = -0.75
    weights from the polynomial, taps floor(src) - 1 .. + 2 clamped to [0, in - 1].
    """
    out_size = int(in_size * scale_factor)
    scale = _F32(1.0 / scale_factor)
    src = scale * (np.arange(out_size, dtype=_F32) + _F32(0.5)) - _F32(0.5)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - i0.astype(_F32), _F32(0), _F32(1)).astype(_F32)
    one = _F32(1)
    w = np.stack([_keys_far(t + one), _keys_near(t), _keys_near(one - t), _keys_far((one - t) + one)], axis=1)
    idx = np.clip(i0[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return idx.astype(np.int32), w.astype(np.float32)


def interpolate_pos_embed(table: jnp.ndarray, native_grid: Pair, grid: Pair, offset: float = 0.1) -> jnp.ndarray:
    """The (1, 1 + h*w, C) position table for patch grid `grid` (h, w) from the stored (1, 1 + Nh*Nw, C) one.

    As DINOv2's `interpolate_pos_encoding`: the table is used as stored only when the token
    count is unchanged and the image is square (h*w == Nh*Nw and h == w); otherwise the patch
    part, as an (Nh, Nw) image, is resized in float32 by bicubic (a = -0.75, align_corners=False,
    no antialias) with scale factors (g + offset) / N per axis, which give output size g but
    sample at src = (dst + 0.5) * N / (g + offset) - 0.5. The cls entry is never resized.

    Against the original on the reference minis: <= 2.2e-6 absolute on values up to ~3.5 (about
    4 float32 ulps; an exact float64 evaluation of the same formula is as far, 1.8-2.6e-6).
    """
    (nh, nw), (h, w) = native_grid, grid
    if h * w == nh * nw and h == w:
        return table
    dtype = table.dtype
    dim = table.shape[-1]
    cls, patches = table[:, :1], table[0, 1:].astype(jnp.float32).reshape(nh, nw, dim)  # (Nh, Nw, C)
    for axis, n, g in ((1, nw, w), (0, nh, h)):  # columns, then rows (ATen: a row sum of column sums)
        idx, wts = scaled_cubic_taps(n, (g + offset) / n)
        if idx.shape[0] != g:
            raise ValueError(f"position table resize {n} -> {g} with offset {offset} gives {idx.shape[0]} rows")
        patches = resample_axis(patches, axis, idx, wts)  # also when g == n: scale n / (n + offset) moves samples
    patches = patches.reshape(1, h * w, dim).astype(dtype)  # row-major over the grid
    return jnp.concatenate([cls, patches], axis=1)  # (1, 1 + h*w, C)


# ---------------------------------------------------------------------------------------------
# Modules


class Attention(nn.Module):
    """Multi-head self-attention: one biased qkv Linear (q, k and v all biased), softmax(q k^T / sqrt(d)) v, proj."""

    num_heads: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, N, C)
        dim = x.shape[-1]
        qkv = Dense(3 * dim, dtype=self.dtype_mm, name="qkv")(x)  # (B, N, 3C)
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, dim // self.num_heads)  # (B, N, 3, heads, hd)
        qkv = jnp.moveaxis(qkv, -4, -2)  # (B, 3, heads, N, hd)
        q, k, v = qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]  # each (B, heads, N, hd)
        q = q * (q.shape[-1] ** -0.5)
        out = merge_heads(attend(q, k, v, 0.0, dtype_mm=self.dtype_mm))  # (B, N, C)
        return Dense(dim, dtype=self.dtype_mm, name="proj")(out)


class Dinov2Encoder(nn.Module):
    """Images (B, H, W, 3) -> the four hooked blocks' outputs after the final norm, each (B, 1 + h*w, C), cls first."""

    config: Dinov2Config
    dtype_mm: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, images):
        c = self.config
        p = c.patch_size
        grid = patch_grid(images, p, "DINOv2")  # (h, w)
        nh, nw = c.native_grid
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.embed_dim))
        table = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + nh * nw, c.embed_dim))

        x = Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype_mm,
                 name="patch_embed")(images)  # (B, h, w, C)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C), row-major over the grid
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.embed_dim)), x], axis=1)
        pos = interpolate_pos_embed(table, c.native_grid, grid, c.interpolate_offset)  # (1, 1 + h*w, C)
        self.sow("intermediates", "pos_embed", pos)
        x = x + pos.astype(x.dtype)  # (B, 1 + h*w, C)
        self.sow("intermediates", "tokens0", x)

        final_norm = layer_norm(c.layer_norm_eps, "norm")
        outputs = []
        for i in range(max(c.hooks) + 1):  # blocks after the last hook do not contribute
            Block = rematerialised(LayerScaleBlock, self.remat)
            x = Block(functools.partial(Attention, c.num_heads, self.dtype_mm), c.embed_dim, c.mlp_hidden,
                                c.layer_norm_eps, self.dtype_mm, name=f"blocks_{i}")(x)  # (B, 1 + h*w, C)
            if i in c.hooks:
                self.sow("intermediates", f"block{i}_raw", x)
                y = final_norm(x)  # the shared final norm, per hooked output; the stream stays raw
                k = len(outputs) + 1
                self.sow("intermediates", f"cls{k}", y[:, 0])
                self.sow("intermediates", f"feat{k}", y[:, 1:])
                outputs.append(y)
        return outputs



# ---------------------------------------------------------------------------------------------
# Presets: Depth Anything V2 (relative; metric Hypersim / Virtual KITTI), V1 and Video Depth Anything

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (features, out_channels) of the DPT head per encoder size, as the originals' model_configs
_WIDTHS = {"vits": (64, (48, 96, 192, 384)), "vitb": (128, (96, 192, 384, 768)),
           "vitl": (256, (256, 512, 1024, 1024))}


def depth_anything(name: str, encoder: Dinov2Config, features: int, out_channels, *, version: int,
                   max_depth: float = 0.0, native: int = 518) -> DPTConfig:
    """A Depth Anything model: DINOv2 -> DPT neck (cls token ignored) -> head resized to the input.

    Relative models (max_depth 0) end in ReLU (relative inverse depth); metric ones in
    max_depth * sigmoid (metres). Preprocessing as the originals' image2tensor: at least
    native x native keeping the aspect ratio, sides multiples of 14, ImageNet mean/std; the
    output goes back to the picture by bilinear resize, align_corners=True in V2's infer_image,
    False in V1's run.py.
    """
    return DPTConfig(
        name=name, encoder=encoder, reassembly_features=tuple(out_channels), reassemble_factors=(4, 2, 1, 0.5),
        readout="ignore", native_size=(native, native), keep_aspect_ratio=True, fusion_features=features,
        head="depth_anything", head_features=32, depth_activation="sigmoid" if max_depth else "relu",
        max_depth=float(max_depth), resize_rule="lower_bound", resize_multiple=encoder.patch_size,
        input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
        output_resize="bilinear_align_corners" if version == 2 else "bilinear",
    )


def video_depth_anything(name: str, encoder: Dinov2Config, features: int, out_channels, *,
                         metric: bool = False) -> DPTConfig:
    """Video Depth Anything: Depth Anything V2's network plus four temporal modules over up to 32 frames.

    Its metric models are the same network (ReLU head, no sigmoid, no max_depth) trained on metres.
    """
    return depth_anything(name, encoder, features, out_channels, version=2).replace(
        temporal_frames=32, depth_activation="relu_metres" if metric else "relu")


_V2 = {"vits": DA2_VITS, "vitb": DA2_VITB, "vitl": DA2_VITL}
_V1 = {"vits": DA1_VITS, "vitb": DA1_VITB, "vitl": DA1_VITL}
PRESETS = (
    tuple(depth_anything(f"da2_{s}", _V2[s], *_WIDTHS[s], version=2) for s in _V2)
    + tuple(depth_anything(f"da2_metric_{data}_{s}", _V2[s], *_WIDTHS[s], version=2, max_depth=depth)
            for data, depth in (("hypersim", 20.0), ("vkitti", 80.0)) for s in _V2)
    + tuple(depth_anything(f"da1_{s}", _V1[s], *_WIDTHS[s], version=1) for s in _V1)
    + tuple(video_depth_anything(f"vda{kind}_{s}", _V2[s], *_WIDTHS[s], metric=bool(kind))
            for kind in ("", "_metric") for s in _V2)
)

#: The reference minis (tests/fixtures/depth_anything): the real wiring at toy sizes, pos table 7x7.
_MINI_ENCODER = Dinov2Config(embed_dim=32, depth=8, num_heads=2, mlp_hidden=128, hooks=(1, 2, 4, 7), native_grid=(7, 7))
MINIS = (
    depth_anything("mini_da2", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2),
    depth_anything("mini_da2_metric", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2, max_depth=20.0),
    # tests/fixtures/video_depth_anything: temporal widths are multiples of the GroupNorm's 32 groups
    video_depth_anything("mini_vda", _MINI_ENCODER, 32, (8, 12, 64, 32)),
    video_depth_anything("mini_vda_metric", _MINI_ENCODER, 32, (8, 12, 64, 32), metric=True),
)
