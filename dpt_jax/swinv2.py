"""SwinV2 encoder of the DPT model (timm 0.6 layout, as wired by MiDaS v3.1).

    image (B, H, W, 3)
      -> patch embedding: 4x4 stride-4 conv + LayerNorm                 (B, H/4, W/4, C)
      -> stage 0: blocks -> hook 1 -> patch merging                     (B, H/8, W/8, 2C)
      -> stage 1: blocks -> hook 2 -> patch merging                     (B, H/16, W/16, 4C)
      -> stage 2: blocks -> hook 3 -> patch merging                     (B, H/32, W/32, 8C)
      -> stage 3: blocks -> hook 4

Every block is res-post-norm, `x = x + LN1(attn(x)); x = x + LN2(mlp(x))`, with windowed
scaled-cosine attention: cos(q, k) * exp(min(logit_scale, ln 100)) + 16 * sigmoid(cpb),
where the continuous position bias `cpb` is a small MLP of the log-spaced (dy, dx) offsets
inside the window. Odd blocks see windows shifted by half a window (a cyclic roll of the
token grid); tokens that the roll brought together from opposite borders get -100 added to
their logits (the "shift mask").

Window rule (any input size)
----------------------------
The original accepts only its native square size. Here any H, W that are multiples of 32
work (patch size 4 times three 2x patch merges); anything else raises ValueError. Each
stage's token grid (h, w) = (H, W) / (4 * 2^s) is cut into windows by a fixed rule, per axis,
with W the configured window (`window_size`: 16 for swin2_tiny_256, 24 for
swin2_base/large_384) and g the number of tokens along the axis:

* window:  ws = min(W, g);
* shift:   s = 0 if g <= W, else W // 2 (odd blocks only; even blocks never shift);
* padding: g is padded at the bottom / right up to Gp, the next multiple of ws. Padded
  tokens are zeros that no real token attends to (their keys get -1e9 added to the logits;
  a query that is itself padding still gets finite weights), and they are cropped off right
  after the attention: norms, MLPs, patch merging and the hooks only see real tokens;
* shifted blocks pad first, then roll the padded grid by -s, and give every position of the
  rolled, padded axis one of the original's three labels, [0, Gp-ws), [Gp-ws, Gp-s),
  [Gp-s, Gp); token pairs of one window whose labels differ on either axis get -100 added
  to their logits. No window straddles Gp-ws, so this separates exactly the tokens the roll
  wrapped around from those they landed next to. Windows are enumerated row-major.

At the native size nothing is padded and windows, shifts and masks are the original's
(swin2_tiny_256: windows 16/16/16/8, shifts 8/8/0/0; base/large 384: 24/24/24/12,
12/12/0/0). At other sizes no window exceeds W, so the cost stays linear in the tokens.
Examples, swin2_tiny_256 at 256x384 (grids 64x96, 32x48, 16x24, 8x12): stage 2 uses 16x16
windows shifted by (0, 8) on a 16x32 padded grid; stage 3 uses one 8x12 window, no shift.

Position bias: the MLP sees the actual window's offsets, dy in [-(ws_h-1), ws_h-1] and
dx in [-(ws_w-1), ws_w-1], each divided on its own axis by (pretrained window - 1), times
8, then sign(t) log2(1 + |t|) / 3. A stage with no pretrained window (0, as in
swin2_tiny_256) takes its native window, min(W, native grid), as the pretrained one. At the
native size that is the original's "divide by the window's own size - 1"; at other sizes
it keeps the bias of every offset what it was at the native size (the way SwinV2 transfers
a position bias to other windows) instead of stretching it with the window.

Masks and biases come from static shapes only: NumPy tables cached per shape
(`functools.lru_cache`): the (N, N) offset index and the offsets of each window size, and
per-axis region labels and padding flags ((nWh, N) and (nWw, N) integers), so nothing grows
with the image area; the (windows, N, N) masks are formed inside the compiled attention,
where XLA fuses them into the logits. `shift_window_mask` builds the full array for tests.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import MAX_SIDE, MAX_WIDTH, DPTConfig, Pair, bounded, checked_fields, require
from .layers import QKV, Conv, Dense, Mlp, attend, layer_norm, merge_heads, rematerialised


@dataclass(frozen=True)
class SwinV2Config:
    """SwinV2 encoder: windowed scaled-cosine attention, res-post-norm blocks, patch merging."""

    embed_dim: int = bounded(1, MAX_WIDTH)
    depths: tuple[int, ...] = bounded(1, 64)
    num_heads: tuple[int, ...] = bounded(1, 256)
    window_size: int = bounded(1, 64)
    # Not stored in checkpoints: (12, 12, 12, 6) for base/large 384, zeros for tiny 256.
    pretrained_window_sizes: tuple[int, ...] = bounded(0, 64)
    native_size: Pair = bounded(32, MAX_SIDE)  # (H, W) the original was built for
    patch_size: int = bounded(1, 16, default=4)
    mlp_ratio: int = bounded(1, 16, default=4)
    cpb_hidden: int = bounded(1, 4096, default=512)
    layer_norm_eps: float = bounded(1e-12, 1e-2, default=1e-5)

    def __post_init__(self):
        checked_fields(self)
        require(len(self.depths) <= 8, f"a SwinV2 has at most 8 stages; got {len(self.depths)}")
        require(max(self.stage_dims) <= MAX_WIDTH, f"the last stage's width embed_dim * 2^(stages - 1) = "
                f"{max(self.stage_dims)} is over {MAX_WIDTH}")
        require(len(self.num_heads) == len(self.depths) == len(self.pretrained_window_sizes),
                f"depths, num_heads and pretrained_window_sizes must have one value per stage "
                f"({len(self.depths)}); got {len(self.num_heads)} and {len(self.pretrained_window_sizes)}")
        require(all(d % h == 0 for d, h in zip(self.stage_dims, self.num_heads)),
                "every stage's width (embed_dim * 2^stage) must be a multiple of its num_heads")

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    @property
    def input_multiple(self) -> int:
        """patch size x 2^3 patch merges."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

SHIFT_MASK_VALUE = -100.0  # between tokens the shift brought together from opposite borders
PAD_MASK_VALUE = -1e9  # for padded keys: exp underflows to exactly 0 next to any real key
LOGIT_SCALE_MAX = math.log(100.0)  # the clamp on the learned temperature, 1 / 0.01


# ---------------------------------------------------------------------------------------------
# The window rule and the static tables it implies (NumPy, cached per shape).


class WindowLayout(NamedTuple):
    """How one stage's token grid is cut into windows."""

    window: Pair  # (ws_h, ws_w)
    shift: Pair  # (s_h, s_w) of the odd blocks
    padded: Pair  # (Gp_h, Gp_w): the grid after bottom/right padding to whole windows


def window_layout(grid: Pair, window_size: int) -> WindowLayout:
    """The window rule: per axis, window min(W, g); shift 0 if g <= W else W // 2; pad g up to whole windows."""
    window = tuple(min(window_size, g) for g in grid)
    shift = tuple(0 if g <= window_size else window_size // 2 for g in grid)
    padded = tuple(-(-g // w) * w for g, w in zip(grid, window))
    return WindowLayout(window, shift, padded)


@functools.lru_cache(maxsize=None)
def _axis_tokens(length: int, padded: int, window: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift label and validity of each position of one axis, after padding and rolling by -shift.

    Returns two (num_windows, window) arrays. Labels follow the original's slices
    [0, Gp-ws) -> 0, [Gp-ws, Gp-s) -> 1, [Gp-s, Gp) -> 2 of the padded length Gp (all 0 without
    a shift); a position is valid when the token rolled there is a real one, not padding.
    """
    if padded % window or padded < length:
        raise ValueError(f"padded length {padded} is not a multiple of the window {window} covering {length}")
    pos = np.arange(padded)
    label = np.zeros(padded, np.int32)
    if shift:
        label += (pos >= padded - window).astype(np.int32) + (pos >= padded - shift).astype(np.int32)
    valid = (pos + shift) % padded < length
    return label.reshape(-1, window), valid.reshape(-1, window)


def _window_tokens(grid: Pair, padded: Pair, window: Pair, shift: Pair):
    """Per axis, the label and validity of every token of every window: (rows: (nWh, N), cols: (nWw, N)).

    Token n of a window sits at row n // ws_w and column n % ws_w of it (row-major).
    """
    (wh, ww) = window
    rows, cols = np.divmod(np.arange(wh * ww), ww)
    label_h, valid_h = _axis_tokens(grid[0], padded[0], wh, shift[0])
    label_w, valid_w = _axis_tokens(grid[1], padded[1], ww, shift[1])
    return (label_h[:, rows], valid_h[:, rows]), (label_w[:, cols], valid_w[:, cols])


def shift_window_mask(grid_hw: Pair, window_hw: Pair, shift_hw: Pair) -> np.ndarray:
    """The shifted-window mask (num_windows, N, N), float32: -100 between tokens of different regions, else 0.

    Windows are enumerated row-major over the (padded) grid, N = ws_h * ws_w. At a native grid
    this equals the original's `attn_mask` buffer. It holds only the shift mask: padded keys are
    excluded separately (see `attention_mask`). The model never builds this array; it forms the
    same comparisons per window inside the attention.
    """
    padded = tuple(-(-g // w) * w for g, w in zip(grid_hw, window_hw))
    (lh, _), (lw, _) = _window_tokens(tuple(grid_hw), padded, tuple(window_hw), tuple(shift_hw))
    same = (lh[:, None, :, None] == lh[:, None, None, :]) & (lw[None, :, :, None] == lw[None, :, None, :])
    mask = np.where(same, 0.0, SHIFT_MASK_VALUE).astype(np.float32)  # (nWh, nWw, N, N)
    return mask.reshape(-1, *mask.shape[2:])


def attention_mask(grid: Pair, layout: WindowLayout, shift: Pair) -> Optional[jnp.ndarray]:
    """Additive mask (nWh, nWw, 1, N, N) or (nWh, nWw, 1, 1, N) for one block, or None when nothing is masked.

    -100 between shift regions (when `shift` is non-zero), -1e9 on padded keys. Built from
    per-axis labels, (nWh, N) and (nWw, N) integers; the comparisons broadcast to the full size
    only inside the compiled attention.
    """
    (lh, vh), (lw, vw) = _window_tokens(tuple(grid), tuple(layout.padded), tuple(layout.window), tuple(shift))
    mask = None
    if any(shift):
        same = (jnp.asarray(lh)[:, None, :, None] == jnp.asarray(lh)[:, None, None, :]) & (
            jnp.asarray(lw)[None, :, :, None] == jnp.asarray(lw)[None, :, None, :]
        )  # (nWh, nWw, N, N)
        mask = jnp.where(same, 0.0, SHIFT_MASK_VALUE)
    if not (vh.all() and vw.all()):
        valid = jnp.asarray(vh)[:, None, None, :] & jnp.asarray(vw)[None, :, None, :]  # (nWh, nWw, 1, N): keys
        pad = jnp.where(valid, 0.0, PAD_MASK_VALUE)
        mask = pad if mask is None else mask + pad
    return None if mask is None else mask[:, :, None].astype(jnp.float32)  # heads axis


@functools.lru_cache(maxsize=None)
def relative_position_index(window: Pair) -> np.ndarray:
    """(N, N) row of the (2ws_h-1)(2ws_w-1) offset table for each (query, key) pair of a window.

    (y_i - y_j + ws_h - 1) * (2 ws_w - 1) + (x_i - x_j + ws_w - 1), as the original.
    """
    wh, ww = window
    ys, xs = np.divmod(np.arange(wh * ww), ww)
    return ((ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)).astype(
        np.int32
    )


@functools.lru_cache(maxsize=None)
def relative_coords_table(window: Pair, divisor: Pair) -> np.ndarray:
    """(2ws_h-1, 2ws_w-1, 2) log-spaced offsets (dy, dx) fed to the position-bias MLP, float32.

    t = 8 * offset / divisor per axis, then sign(t) * log2(|t| + 1) / log2(8). Float32 steps in
    the original's order.
    """
    wh, ww = window
    dy = np.arange(-(wh - 1), wh, dtype=np.float32) / np.float32(divisor[0])
    dx = np.arange(-(ww - 1), ww, dtype=np.float32) / np.float32(divisor[1])
    t = np.stack(np.meshgrid(dy, dx, indexing="ij"), axis=-1) * np.float32(8)
    return (np.sign(t) * np.log2(np.abs(t) + np.float32(1)) / np.float32(math.log2(8))).astype(np.float32)


def position_divisor(config: SwinV2Config, stage: int) -> Pair:
    """Per axis, what the stage's window offsets are divided by (before x8): pretrained window - 1.

    A stage with no pretrained window (0) uses its native window, min(W, native grid), instead:
    identical to the original at the native size, and independent of the input size.
    """
    pretrained = config.pretrained_window_sizes[stage]
    if pretrained > 0:
        base = (pretrained, pretrained)
    else:
        scale = config.patch_size * 2**stage
        base = tuple(min(config.window_size, n // scale) for n in config.native_size)
    return tuple(max(b - 1, 1) for b in base)  # a 1-wide window has only offset 0: avoid 0 / 0


# ---------------------------------------------------------------------------------------------
# Modules


class PatchEmbed(nn.Module):
    """4x4 stride-4 conv with bias, then LayerNorm: (B, H, W, 3) -> (B, H/4, W/4, C)."""

    config: SwinV2Config
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        c = self.config
        p = c.patch_size
        x = Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype_mm, name="proj")(images)
        return layer_norm(c.layer_norm_eps, "norm")(x)


class ContinuousPositionBias(nn.Module):
    """Linear(2 -> 512) -> ReLU -> Linear(512 -> heads, no bias) of the (dy, dx) offsets; 16 sigmoid of it.

    Returns the (heads, N, N) bias of one window. Always float32: its output is squashed by 16 sigmoid
    and added to logits scaled up to 100x, where bfloat16 products would cost whole units.
    """

    num_heads: int
    hidden: int

    @nn.compact
    def __call__(self, window: Pair, divisor: Pair):
        coords = jnp.asarray(relative_coords_table(tuple(window), tuple(divisor)))  # (2wh-1, 2ww-1, 2)
        hidden = nn.relu(Dense(self.hidden, dtype=jnp.float32, name="fc1")(coords))
        table = Dense(self.num_heads, use_bias=False, dtype=jnp.float32, name="fc2")(hidden)
        table = 16.0 * jax.nn.sigmoid(table.reshape(-1, self.num_heads).astype(jnp.float32))  # (offsets, heads)
        # squash the (2wh-1)(2ww-1) offsets, then gather (heads, N, N): the same values, N^2/offsets fewer sigmoids
        return jnp.take(table.T, jnp.asarray(relative_position_index(tuple(window))), axis=1)


class WindowAttention(nn.Module):
    """Scaled cosine attention inside each window, plus the position bias and the block's mask."""

    num_heads: int
    cpb_hidden: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, windows, window: Pair, divisor: Pair, mask):  # windows: (B, nWh, nWw, N, C)
        logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(10.0)), (self.num_heads, 1, 1))
        q, k, v = QKV(self.num_heads, self.dtype_mm, name="qkv")(windows)  # (B, nWh, nWw, heads, N, hd)
        q = _l2_normalize(q) * jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), LOGIT_SCALE_MAX))
        k = _l2_normalize(k)
        bias = ContinuousPositionBias(self.num_heads, self.cpb_hidden, name="cpb_mlp")(window, divisor)  # (heads, N, N)
        if mask is not None:
            bias = bias + mask  # (nWh, nWw, heads, N, N)
        out = merge_heads(attend(q, k, v, bias, dtype_mm=self.dtype_mm, float32_logits=True))  # (B, nWh, nWw, N, C)
        return Dense(windows.shape[-1], dtype=self.dtype_mm, name="proj")(out)


def _l2_normalize(x, eps=1e-12):
    """x / max(|x|, eps) along the last axis, in float32 (torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def partition_windows(x, window: Pair):
    """(B, Gh, Gw, C) -> (B, nWh, nWw, ws_h * ws_w, C), windows and their tokens row-major."""
    b, gh, gw, c = x.shape
    wh, ww = window
    x = x.reshape(b, gh // wh, wh, gw // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh // wh, gw // ww, wh * ww, c)


def merge_windows(windows, window: Pair):
    """(B, nWh, nWw, ws_h * ws_w, C) -> (B, Gh, Gw, C); inverse of `partition_windows`."""
    b, nh, nw, _, c = windows.shape
    wh, ww = window
    x = windows.reshape(b, nh, nw, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, nh * wh, nw * ww, c)


WindowRule = Callable[[Pair, int], WindowLayout]


class SwinV2Block(nn.Module):
    """x + LN1(window attention(x)), then x + LN2(mlp(x)): res-post-norm."""

    config: SwinV2Config
    num_heads: int
    shifted: bool  # odd blocks: the windows move by the layout's shift
    divisor: Pair
    window_rule: WindowRule = window_layout
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, h, w, C)
        c = self.config
        _, h, w, dim = x.shape
        layout = self.window_rule((h, w), c.window_size)
        shift = layout.shift if self.shifted else (0, 0)
        (ph, pw), (sh, sw) = layout.padded, shift

        y = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))  # (B, Gp_h, Gp_w, C)
        if sh or sw:
            y = jnp.roll(y, (-sh, -sw), axis=(1, 2))
        y = partition_windows(y, layout.window)  # (B, nWh, nWw, N, C)
        mask = attention_mask((h, w), layout, shift)
        attention = WindowAttention(self.num_heads, c.cpb_hidden, self.dtype_mm, name="attn")
        y = attention(y, layout.window, self.divisor, mask)
        y = merge_windows(y, layout.window)  # (B, Gp_h, Gp_w, C)
        if sh or sw:
            y = jnp.roll(y, (sh, sw), axis=(1, 2))
        y = y[:, :h, :w]  # (B, h, w, C)

        x = x + layer_norm(c.layer_norm_eps, "norm1")(y)
        return x + layer_norm(c.layer_norm_eps, "norm2")(Mlp(dim * c.mlp_ratio, self.dtype_mm, name="mlp")(x))


class PatchMerging(nn.Module):
    """Each 2x2 group of tokens -> one: concat (4C) -> Linear(4C -> 2C, no bias) -> LayerNorm(2C)."""

    config: SwinV2Config
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, h, w, C)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = Dense(x.shape[-1] // 2, use_bias=False, dtype=self.dtype_mm, name="reduction")(x)  # (B, h/2, w/2, 2C)
        return layer_norm(self.config.layer_norm_eps, "norm")(x)


class SwinV2Stage(nn.Module):
    """The blocks of one stage, then (stages 0-2) the patch merging. Returns (last block's output, merged)."""

    config: SwinV2Config
    stage: int
    window_rule: WindowRule = window_layout
    dtype_mm: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, x):  # (B, h, w, C)
        c = self.config
        divisor = position_divisor(c, self.stage)
        for b in range(c.depths[self.stage]):
            shifted = b % 2 == 1
            Block = rematerialised(SwinV2Block, self.remat)
            x = Block(c, c.num_heads[self.stage], shifted, divisor, self.window_rule, self.dtype_mm,
                            name=f"blocks_{b}")(x)
        merged = PatchMerging(c, self.dtype_mm, name="downsample")(x) if self.stage < len(c.depths) - 1 else None
        return x, merged  # (B, h, w, C), (B, h/2, w/2, 2C)


class SwinV2Encoder(nn.Module):
    """Images (B, H, W, 3) -> the four stage outputs (B, H/4, W/4, C), (B, H/8, W/8, 2C), ... , (B, H/32, W/32, 8C).

    H and W must be multiples of 32; see the module docstring for the window rule.
    `window_rule` maps (stage grid, window_size) to the stage's WindowLayout; the default is that
    rule (tests swap in variants, e.g. one that pads more than needed, to check the padding).
    """

    config: SwinV2Config
    dtype_mm: Any = jnp.float32
    window_rule: WindowRule = window_layout
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, images):
        c = self.config
        multiple = c.input_multiple
        height, width = images.shape[1:3]
        if height <= 0 or width <= 0 or height % multiple or width % multiple:
            raise ValueError(
                f"SwinV2 needs image sides that are positive multiples of {multiple} "
                f"(patch size {c.patch_size} and {len(c.depths) - 1} 2x patch merges); got {height}x{width} (HxW)"
            )
        x = PatchEmbed(c, self.dtype_mm, name="patch_embed")(images)  # (B, H/4, W/4, C)
        hooks = []
        for s in range(len(c.depths)):
            hook, x = SwinV2Stage(c, s, self.window_rule, self.dtype_mm, self.remat, name=f"layers_{s}")(x)
            hooks.append(hook)  # (B, h_s, w_s, C_s)
        return hooks


# ---------------------------------------------------------------------------------------------
# Presets: the three MiDaS v3.1 SwinV2 checkpoints.


def _preset(name, *, size, embed_dim, depths, num_heads, window, pretrained_windows):
    enc = SwinV2Config(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window,
                       pretrained_window_sizes=pretrained_windows, native_size=(size, size))
    return DPTConfig(name=name, encoder=enc, reassembly_features=enc.stage_dims, reassemble_factors=(1, 1, 1, 1),
                     readout="none", native_size=(size, size), keep_aspect_ratio=False)


PRESETS = (
    _preset("dpt_swin2_large_384", size=384, embed_dim=192, depths=(2, 2, 18, 2),
            num_heads=(6, 12, 24, 48), window=24, pretrained_windows=(12, 12, 12, 6)),
    _preset("dpt_swin2_base_384", size=384, embed_dim=128, depths=(2, 2, 18, 2),
            num_heads=(4, 8, 16, 32), window=24, pretrained_windows=(12, 12, 12, 6)),
    _preset("dpt_swin2_tiny_256", size=256, embed_dim=96, depths=(2, 2, 6, 2),
            num_heads=(3, 6, 12, 24), window=16, pretrained_windows=(0, 0, 0, 0)),
)

#: The real wiring at toy sizes, for smoke runs and tests.
MINI = DPTConfig(
    name="mini_swin2",
    encoder=SwinV2Config(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=8,
                         pretrained_window_sizes=(0, 0, 0, 0), native_size=(128, 128)),
    reassembly_features=(32, 64, 128, 256), reassemble_factors=(1, 1, 1, 1), readout="none",
    native_size=(128, 128), keep_aspect_ratio=False, fusion_features=64,
)


def encoder_peak_bytes(c: SwinV2Config, height: int, width: int, batch: int) -> int:
    """A lower bound of the encoder's activation bytes at once (float32), the largest stage's MLP input and
    hidden layer (B, h*w, C (1 + mlp_ratio)); the window attention logits are not counted (XLA may fuse them)."""
    h, w = height // c.patch_size, width // c.patch_size
    peak = 0
    for C in c.stage_dims:
        peak = max(peak, 4 * batch * h * w * C * (1 + c.mlp_ratio))
        h, w = h // 2, w // 2
    return peak


def encoder_flops(c: SwinV2Config, height: int, width: int, batch: int, add) -> list[Pair]:
    """Adds the encoder's FLOPs (2 x MACs) to `add(component, flops)`; returns the four stage grids.

    Attention is counted on the padded window grid the model computes; the position-bias MLP once
    per block (it does not depend on the batch).
    """
    B = batch
    h, w = height // c.patch_size, width // c.patch_size
    add("encoder.patch_embed", 2 * B * h * w * 3 * c.patch_size**2 * c.embed_dim)
    grids = []
    for s, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
        C = c.stage_dims[s]
        layout = window_layout((h, w), c.window_size)
        Np = layout.padded[0] * layout.padded[1]  # tokens of the padded grid the attention runs on
        Nw = layout.window[0] * layout.window[1]  # tokens per window
        K = (2 * layout.window[0] - 1) * (2 * layout.window[1] - 1)  # position-bias table rows
        add("encoder.qkv_proj", depth * (2 * B * Np * C * 3 * C + 2 * B * Np * C * C))
        add("encoder.attention", depth * 2 * (2 * B * Np * Nw * C))
        add("encoder.mlp", depth * 2 * (2 * B * h * w * C * c.mlp_ratio * C))
        add("encoder.cpb_mlp", depth * (2 * K * 2 * c.cpb_hidden + 2 * K * c.cpb_hidden * heads))
        grids.append((h, w))
        if s < len(c.depths) - 1:
            add("encoder.patch_merging", 2 * B * (h // 2) * (w // 2) * (4 * C) * (2 * C))
            h, w = h // 2, w // 2
    return grids
