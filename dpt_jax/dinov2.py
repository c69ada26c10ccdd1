"""DINOv2 ViT encoder of Depth Anything (V1 and V2): 14 px patches and a learned absolute position table.

Patch embedding (14x14 conv, stride 14) -> prepend the cls token -> add the position table
(resized to the patch grid with DINOv2's bicubic + 0.1 offset rule) -> pre-norm blocks with
layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)). The outputs of four chosen blocks,
each passed through the shared final LayerNorm, feed the DPT neck; the residual stream
itself is never normed.

Intermediates are sown in the "intermediates" collection under the reference fixtures' names:
pos_embed, tokens0, block{i}_raw (i = block index), feat{k} / cls{k} (k = 1..4, normed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from .layers import Mlp, attend, layer_norm, merge_heads
from .resize import _keys_far, _keys_near, resample_axis

Pair = tuple[int, int]
_F32 = np.float32


@dataclass(frozen=True)
class Dinov2Config:
    """DINOv2 ViT as built by Depth Anything (no registers, MLP feed-forward, LayerScale)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    hooks: tuple[int, ...]  # 0-based indices of the blocks whose (normed) outputs feed the four DPT stages
    native_grid: Pair = (37, 37)  # patch grid of the stored position table (img_size 518 / 14)
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    interpolate_offset: float = 0.1  # DINOv2 resizes the table by (g + offset) / N, not to g

    family = "dinov2"


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

    @nn.compact
    def __call__(self, x):  # (B, N, C)
        dim = x.shape[-1]
        qkv = nn.Dense(3 * dim, name="qkv")(x)  # (B, N, 3C)
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, dim // self.num_heads)  # (B, N, 3, heads, hd)
        qkv = jnp.moveaxis(qkv, -4, -2)  # (B, 3, heads, N, hd)
        q, k, v = qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]  # each (B, heads, N, hd)
        q = q * (q.shape[-1] ** -0.5)
        return nn.Dense(dim, name="proj")(merge_heads(attend(q, k, v, 0.0)))  # (B, N, C)


class Block(nn.Module):
    config: Dinov2Config

    @nn.compact
    def __call__(self, x):
        c = self.config
        gamma_1 = self.param("gamma_1", nn.initializers.ones, (c.embed_dim,))
        gamma_2 = self.param("gamma_2", nn.initializers.ones, (c.embed_dim,))
        x = x + gamma_1 * Attention(c.num_heads, name="attn")(layer_norm(c.layer_norm_eps, "norm1")(x))
        x = x + gamma_2 * Mlp(c.mlp_hidden, name="mlp")(layer_norm(c.layer_norm_eps, "norm2")(x))
        return x


class Dinov2Encoder(nn.Module):
    """Images (B, H, W, 3) -> the four hooked blocks' outputs after the final norm, each (B, 1 + h*w, C), cls first."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, images):
        c = self.config
        p = c.patch_size
        height, width = images.shape[1:3]
        if height % p or width % p:
            raise ValueError(f"DINOv2 needs image sides that are multiples of {p}; got {height}x{width} (HxW)")
        grid = (height // p, width // p)  # (h, w)
        nh, nw = c.native_grid
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.embed_dim))
        table = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + nh * nw, c.embed_dim))

        x = nn.Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(images)  # (B, h, w, C)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C), row-major over the grid
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.embed_dim)), x], axis=1)
        pos = interpolate_pos_embed(table, c.native_grid, grid, c.interpolate_offset)  # (1, 1 + h*w, C)
        self.sow("intermediates", "pos_embed", pos)
        x = x + pos.astype(x.dtype)  # (B, 1 + h*w, C)
        self.sow("intermediates", "tokens0", x)

        final_norm = layer_norm(c.layer_norm_eps, "norm")
        outputs = []
        for i in range(max(c.hooks) + 1):  # blocks after the last hook do not contribute
            x = Block(c, name=f"blocks_{i}")(x)
            if i in c.hooks:
                self.sow("intermediates", f"block{i}_raw", x)
                y = final_norm(x)  # the shared final norm, per hooked output; the stream stays raw
                k = len(outputs) + 1
                self.sow("intermediates", f"cls{k}", y[:, 0])
                self.sow("intermediates", f"feat{k}", y[:, 1:])
                outputs.append(y)
        return outputs

