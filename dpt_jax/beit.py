"""BEiT encoder of the DPT model: 16 px patch embedding and a ViT with relative position bias.

Pre-norm blocks with layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)); no absolute
position embedding; every block owns a relative position bias table made for the native patch
grid, which is resized to the actual grid exactly as MiDaS does, so any input whose sides are
multiples of 16 works.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import MAX_SIDE, MAX_WIDTH, DPTConfig, Pair, bounded, checked_fields, require
from .family import vit_encoder_peak_bytes
from .layers import (
    ONE_PIECE_MAX,
    QKV,
    QUERY_BLOCK,
    Conv,
    Dense,
    LayerScaleBlock,
    attend,
    merge_heads,
    patch_grid,
    rematerialised,
)
from .resize import resize_bilinear


@dataclass(frozen=True)
class BeitConfig:
    """BEiT encoder: a plain ViT with pre-norm blocks, layer scale and a relative position bias per block."""

    embed_dim: int = bounded(1, MAX_WIDTH)
    depth: int = bounded(1, 64)
    num_heads: int = bounded(1, 256)
    mlp_hidden: int = bounded(1, 4 * MAX_WIDTH)
    hooks: tuple[int, int, int, int] = bounded(0, 63)  # indices of the blocks whose outputs feed the four DPT stages
    native_grid: Pair = bounded(1, MAX_SIDE // 16)  # patch grid the relative position tables were made for
    patch_size: int = bounded(1, 64, default=16)
    layer_norm_eps: float = bounded(1e-12, 1e-2, default=1e-6)

    def __post_init__(self):
        checked_fields(self)
        require(self.embed_dim % self.num_heads == 0, "embed_dim must be a multiple of num_heads")
        require(list(self.hooks) == sorted(set(self.hooks)) and max(self.hooks) < self.depth,
                "hooks must be increasing block indices below depth")


def sliding_rows(z: jnp.ndarray, rows: int, k: int) -> jnp.ndarray:
    """(..., (2 rows - 1) k) -> (..., rows, rows k): row i is z[..., (rows - 1 - i) k : (2 rows - 1 - i) k].

    Tiling and reshaping only, no gather and no index table: in z tiled end to end, a row
    stride of one period less k steps back one k-chunk per row, so row i of the strided view
    starts (rows - 1 - i) chunks into a period. XLA fuses it into the consumer's loop.
    """
    period = (2 * rows - 1) * k
    stride = period - k if rows > 1 else k  # = -k modulo the period, and at least rows k long
    start = (rows - 1) * k
    tiles = -(-(start + rows * stride) // period)
    tiled = jnp.tile(z, (1,) * (z.ndim - 1) + (tiles,))  # (..., tiles * period)
    view = tiled[..., start:start + rows * stride].reshape(*z.shape[:-1], rows, stride)
    return view[..., :rows * k]  # (..., rows, rows k)


def _offsets_by_x(table: jnp.ndarray, native_grid, grid) -> jnp.ndarray:
    """(heads, w, (2h-1) w): [xi, e w + xj] is the bias of patch offset (h-1-e, xi-xj), from the resized offsets.

    At another grid than `native_grid` the (2Gh-1, 2Gw-1) block of offsets is resized to (2h-1, 2w-1)
    with PyTorch's bilinear, align_corners=False and no antialiasing (also when shrinking).
    """
    (gh, gw), (h, w) = native_grid, grid
    heads = table.shape[-1]
    offsets = table[:-3].reshape(2 * gh - 1, 2 * gw - 1, heads)
    offsets = resize_bilinear(offsets, (2 * h - 1, 2 * w - 1), align_corners=False, axes=(0, 1))
    flipped = jnp.moveaxis(offsets, -1, 0)[:, ::-1, ::-1]  # (heads, 2h-1, 2w-1): [e, f] = offset (h-1-e, w-1-f)
    in_x = sliding_rows(flipped, w, 1)  # (heads, 2h-1, w, w): [e, xi, xj] = offset (h-1-e, xi-xj)
    return jnp.moveaxis(in_x, 2, 1).reshape(heads, w, (2 * h - 1) * w)  # (heads, xi, (e, xj))


def relative_position_bias(table: jnp.ndarray, native_grid, grid) -> jnp.ndarray:
    """The (heads, 1 + h*w, 1 + h*w) attention bias for patch grid `grid` from a table made for `native_grid`.

    Token 0 is cls; patch pair (i, j) reads the table's row (y_i - y_j + h - 1) (2w - 1) + (x_i - x_j + w - 1),
    and the three rows after the (2h-1)(2w-1) offsets serve cls->patch, patch->cls and cls->cls; the
    offsets are resized to the grid first (`_offsets_by_x`). All rows of `relative_position_bias_rows`.
    """
    return relative_position_bias_rows(table, native_grid, grid)(0, 1 + grid[0] * grid[1])


def relative_position_bias_rows(table: jnp.ndarray, native_grid, grid):
    """`relative_position_bias` a few query rows at a time, for `layers.attend`: (start, size) -> (heads, size, N).

    The whole bias (start 0, size N), the cls query's row (0, 1), or whole image rows of patch queries
    (start 1 + y w, size a multiple of w; start may be traced), each cut from one (heads, w, (2h-1) w)
    table: row y's queries see the contiguous slice from (h-1-y) w on.

    The patch block is Toeplitz in x within Toeplitz in y, so the whole of it is built by `sliding_rows`, once
    per axis, rather than gathered through an (N, N) index: nothing of size N^2 is a compile-time constant
    (XLA would fold it: minutes at 384x3072) and no gather runs per element.
    """
    h, w = grid
    n = 1 + h * w
    in_x = _offsets_by_x(table, native_grid, grid)  # (heads, xi, (e, xj))
    heads = in_x.shape[0]
    to_patch, to_cls, cls_cls = (table[i, :, None, None] for i in (-3, -2, -1))  # (heads, 1, 1) each

    def rows(start, size):
        if size == n:
            patches = jnp.moveaxis(sliding_rows(in_x, h, w), 2, 1)  # (heads, yi, xi, (yj, xj)): offset (yi-yj, xi-xj)
            patches = jnp.pad(patches.reshape(-1, n - 1, n - 1), ((0, 0), (1, 0), (1, 0)))  # (heads, N, N)
            row = jax.lax.broadcasted_iota(jnp.int32, (1, n, n), 1)
            col = jax.lax.broadcasted_iota(jnp.int32, (1, n, n), 2)
            return jnp.where(row == 0, jnp.where(col == 0, cls_cls, to_patch), jnp.where(col == 0, to_cls, patches))
        if isinstance(start, int) and start == 0 and size == 1:
            return jnp.concatenate([cls_cls, jnp.broadcast_to(to_patch, (heads, 1, n - 1))], axis=2)  # (heads, 1, N)
        first = (start - 1) // w  # the first image row
        parts = [jax.lax.dynamic_slice_in_dim(in_x, (h - 1 - first - r) * w, h * w, axis=2)
                 for r in range(size // w)]  # (heads, w, h*w) each
        patches = jnp.concatenate(parts, axis=1)  # (heads, size, h*w)
        return jnp.concatenate([jnp.broadcast_to(to_cls, (heads, size, 1)), patches], axis=2)  # (heads, size, N)

    return rows


def encoder_peak_bytes(c: BeitConfig, height: int, width: int, batch: int) -> int:
    """A lower bound of the encoder's activation bytes at once (float32): a ViT's MLP layers
    (family.vit_encoder_peak_bytes), or what a block's relative position bias is cut from whatever the
    batch: its (heads, w, (2h-1) w) table (`relative_position_bias_rows`), or the whole (heads, N, N)
    where the attention runs in one piece."""
    h, w = height // c.patch_size, width // c.patch_size
    n = h * w + 1
    bias = n * n if n <= ONE_PIECE_MAX else w * (2 * h - 1) * w
    return max(vit_encoder_peak_bytes(c, height, width, batch), 4 * c.num_heads * bias)


class Attention(nn.Module):
    config: BeitConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x, grid):  # (B, N, C), N = 1 + h*w
        c = self.config
        gh, gw = c.native_grid
        table = self.param(
            "relative_position_bias_table", nn.initializers.zeros, ((2 * gh - 1) * (2 * gw - 1) + 3, c.num_heads)
        )
        q, k, v = QKV(c.num_heads, self.dtype_mm, name="qkv")(x)  # (B, heads, N, hd)
        q = q * (q.shape[-1] ** -0.5)
        w = grid[1]
        bias = relative_position_bias_rows(table.astype(jnp.float32), c.native_grid, grid)  # (start, size) -> rows
        blocks = (1, w * max(1, QUERY_BLOCK // w)) if q.shape[-2] > ONE_PIECE_MAX else None  # whole image rows
        out = merge_heads(attend(q, k, v, bias, dtype_mm=self.dtype_mm, blocks=blocks))  # (B, N, C)
        return Dense(x.shape[-1], dtype=self.dtype_mm, name="proj")(out)


class BeitEncoder(nn.Module):
    """Images (B, H, W, 3) -> the outputs of the four hooked blocks, each (B, 1 + h*w, C), cls token first."""

    config: BeitConfig
    dtype_mm: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, images):
        c = self.config
        p = c.patch_size
        grid = patch_grid(images, p, "BEiT")  # (h, w)
        x = Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype_mm, name="patch_embed")(images)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C), row-major over the grid
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, c.embed_dim)).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.embed_dim)), x], axis=1)  # (B, 1 + h*w, C)
        hooks = []
        for i in range(c.depth):
            Block = rematerialised(LayerScaleBlock, self.remat, (2,))  # argument 2: the grid (static)
            block = Block(functools.partial(Attention, c, self.dtype_mm), c.embed_dim, c.mlp_hidden,
                                    c.layer_norm_eps, self.dtype_mm, gamma_init=0.1, name=f"blocks_{i}")
            x = block(x, grid)  # (B, 1 + h*w, C)
            if i in c.hooks:
                hooks.append(x)
            if i == max(c.hooks):
                break  # blocks after the last hook do not contribute to the depth
        return hooks


# ---------------------------------------------------------------------------------------------
# Presets: the three MiDaS v3.1 BEiT checkpoints.


def _preset(name, *, size, embed_dim, depth, num_heads, hooks, reassembly):
    return DPTConfig(
        name=name,
        encoder=BeitConfig(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_hidden=4 * embed_dim,
                           hooks=hooks, native_grid=(size // 16, size // 16)),
        reassembly_features=reassembly,
        reassemble_factors=(4, 2, 1, 0.5),
        readout="project",
        native_size=(size, size),
        keep_aspect_ratio=True,
    )


PRESETS = (
    _preset("dpt_beit_large_512", size=512, embed_dim=1024, depth=24, num_heads=16,
            hooks=(5, 11, 17, 23), reassembly=(256, 512, 1024, 1024)),
    _preset("dpt_beit_large_384", size=384, embed_dim=1024, depth=24, num_heads=16,
            hooks=(5, 11, 17, 23), reassembly=(256, 512, 1024, 1024)),
    _preset("dpt_beit_base_384", size=384, embed_dim=768, depth=12, num_heads=12,
            hooks=(2, 5, 8, 11), reassembly=(96, 192, 384, 768)),
)

#: The real wiring at toy sizes, for smoke runs and tests.
MINI = DPTConfig(
    name="mini_beit",
    encoder=BeitConfig(embed_dim=128, depth=4, num_heads=4, mlp_hidden=512, hooks=(0, 1, 2, 3), native_grid=(8, 8)),
    reassembly_features=(32, 64, 128, 128), reassemble_factors=(4, 2, 1, 0.5), readout="project",
    native_size=(128, 128), keep_aspect_ratio=True, fusion_features=64,
)
