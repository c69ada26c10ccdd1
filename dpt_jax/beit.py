"""BEiT encoder of the DPT model: 16 px patch embedding and a ViT with relative position bias.

Pre-norm blocks with layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)); no absolute
position embedding; every block owns a relative position bias table made for the native patch
grid, which is resized to the actual grid exactly as MiDaS does, so any input whose sides are
multiples of 16 works.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from .config import BeitConfig
from .layers import QKV, Mlp, attend, layer_norm, merge_heads
from .resize import resize_bilinear


@functools.lru_cache(maxsize=None)
def relative_position_index(h: int, w: int) -> np.ndarray:
    """(1 + h*w, 1 + h*w) rows of the bias table for every (query, key) token pair; token 0 is cls.

    Patch pair (i, j): (y_i - y_j + h - 1) * (2w - 1) + (x_i - x_j + w - 1).
    The three rows after the (2h-1)(2w-1) offsets serve cls->patch, patch->cls and cls->cls.
    """
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    offsets = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    n = (2 * h - 1) * (2 * w - 1)
    index = np.empty((h * w + 1, h * w + 1), np.int32)
    index[1:, 1:] = offsets
    index[0, :] = n  # cls -> patch
    index[:, 0] = n + 1  # patch -> cls
    index[0, 0] = n + 2  # cls -> cls
    return index


def relative_position_bias(table: jnp.ndarray, native_grid, grid) -> jnp.ndarray:
    """The (heads, 1 + h*w, 1 + h*w) attention bias for patch grid `grid` from a table made for `native_grid`.

    At another grid the (2Gh-1, 2Gw-1) block of offsets is resized to (2h-1, 2w-1) with PyTorch's
    bilinear, align_corners=False and no antialiasing (also when shrinking); the three cls rows stay.
    """
    (gh, gw), (h, w) = native_grid, grid
    heads = table.shape[-1]
    offsets = table[:-3].reshape(2 * gh - 1, 2 * gw - 1, heads)
    offsets = resize_bilinear(offsets, (2 * h - 1, 2 * w - 1), align_corners=False, axes=(0, 1))
    table = jnp.concatenate([offsets.reshape(-1, heads), table[-3:]], axis=0)  # ((2h-1)(2w-1) + 3, heads)
    # Gathering from the transposed table gives (heads, N, N) directly: no (N, N, heads) copy to transpose.
    return jnp.take(table.T, jnp.asarray(relative_position_index(h, w)), axis=1)  # (heads, N, N)


class Attention(nn.Module):
    config: BeitConfig

    @nn.compact
    def __call__(self, x, grid):  # (B, N, C), N = 1 + h*w
        c = self.config
        gh, gw = c.native_grid
        table = self.param(
            "relative_position_bias_table", nn.initializers.zeros, ((2 * gh - 1) * (2 * gw - 1) + 3, c.num_heads)
        )
        q, k, v = QKV(c.num_heads, name="qkv")(x)  # (B, heads, N, hd)
        q = q * (q.shape[-1] ** -0.5)
        bias = relative_position_bias(table, c.native_grid, grid).astype(jnp.float32)  # (heads, N, N)
        out = merge_heads(attend(q, k, v, bias))  # (B, N, C)
        return nn.Dense(x.shape[-1], name="proj")(out)


class Block(nn.Module):
    config: BeitConfig

    @nn.compact
    def __call__(self, x, grid):
        c = self.config
        gamma_1 = self.param("gamma_1", nn.initializers.constant(0.1), (c.embed_dim,))
        gamma_2 = self.param("gamma_2", nn.initializers.constant(0.1), (c.embed_dim,))
        x = x + gamma_1 * Attention(c, name="attn")(layer_norm(c.layer_norm_eps, "norm1")(x), grid)
        x = x + gamma_2 * Mlp(c.mlp_hidden, name="mlp")(layer_norm(c.layer_norm_eps, "norm2")(x))
        return x


class BeitEncoder(nn.Module):
    """Images (B, H, W, 3) -> the outputs of the four hooked blocks, each (B, 1 + h*w, C), cls token first."""

    config: BeitConfig

    @nn.compact
    def __call__(self, images):
        c = self.config
        p = c.patch_size
        height, width = images.shape[1:3]
        if height % p or width % p:
            raise ValueError(f"BEiT needs image sides that are multiples of {p}; got {height}x{width} (HxW)")
        grid = (height // p, width // p)
        x = nn.Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(images)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C), row-major over the grid
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, c.embed_dim)).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.embed_dim)), x], axis=1)  # (B, 1 + h*w, C)
        hooks = []
        for i in range(c.depth):
            x = Block(c, name=f"blocks_{i}")(x, grid)
            if i in c.hooks:
                hooks.append(x)
            if i == max(c.hooks):
                break  # blocks after the last hook do not contribute to the depth
        return hooks
