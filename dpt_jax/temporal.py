"""Video Depth Anything's temporal module: self-attention across frames at every pixel of a DPT map.

`TemporalModule` is the original `TemporalModule` (AnimateDiff's motion module as Video Depth
Anything configures it: one transformer block of two attention blocks, 8 heads, a sinusoidal
position table of `config.temporal_frames` rows). On a map of T frames (B*T, h, w, C),
frames b-major:

    GroupNorm(32 groups, eps 1e-6) per frame -> proj_in -> for j in 0, 1:
    x + attend_j(LN_j(x) + pe[:T]) over the T frames of each pixel -> x + GEGLU-FF(LN(x))
    -> proj_out -> + the module's input (not normalised).

Streaming (`context`): the query is one new frame; keys and values cover the cached, normalised
states of earlier frames and the new one (the position table is added to all of them). Each
module reports the normalised states it attended from in the "temporal_states" collection
(`sow`), which is what a stream caches for the next frames.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .layers import Dense, attend, gelu, layer_norm, merge_heads

HEADS = 8  # hard-coded in the original DPTHeadTemporal
GROUPS = 32  # the GroupNorm's groups (TemporalModule's default, never overridden)


class TemporalAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v over frames; q, k, v from the normed input plus the sinusoidal table."""

    frames: int  # rows of the position table (the longest sequence)
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):  # x: (P, T, C) normed, P = pixels; context: (P, K, C) or None
        dim = x.shape[-1]
        table = self.param("pos_encoding", nn.initializers.zeros, (1, self.frames, dim))[0]  # the stored sinusoids
        seq = x if context is None else jnp.concatenate([context, x], axis=1)  # (P, K + T, C)
        if seq.shape[1] > self.frames:
            raise ValueError(f"temporal attention over {seq.shape[1]} frames; the position table has {self.frames}")
        seq = seq + table[: seq.shape[1]]  # (P, K + T, C)
        queries = seq[:, seq.shape[1] - x.shape[1]:]  # (P, T, C): the new frames only
        q = Dense(dim, use_bias=False, dtype=self.dtype_mm, name="to_q")(queries)
        k = Dense(dim, use_bias=False, dtype=self.dtype_mm, name="to_k")(seq)
        v = Dense(dim, use_bias=False, dtype=self.dtype_mm, name="to_v")(seq)
        split = lambda a: jnp.moveaxis(a.reshape(*a.shape[:2], HEADS, dim // HEADS), 2, 1)  # noqa: E731  (P, heads, n, hd)
        q, k, v = split(q) * (dim // HEADS) ** -0.5, split(k), split(v)
        out = merge_heads(attend(q, k, v, 0.0, dtype_mm=self.dtype_mm))  # (P, T, C)
        return Dense(dim, dtype=self.dtype_mm, name="to_out")(out)


class GegluFeedForward(nn.Module):
    """Linear(C -> 8C), split into h and gate, h * gelu(gate), Linear(4C -> C)."""

    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (P, T, C)
        dim = x.shape[-1]
        h, gate = jnp.split(Dense(8 * dim, dtype=self.dtype_mm, name="proj")(x), 2, axis=-1)  # 2 x (P, T, 4C)
        return Dense(dim, dtype=self.dtype_mm, name="out")(h * gelu(gate))


class TemporalModule(nn.Module):
    """(B*T, h, w, C) maps of T frames each, b-major -> the same shape, frames attending to each other per pixel."""

    frames: int  # the position table's rows (config.temporal_frames)
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x, t: int, context=None):  # x: (B*T, h, w, C); context: 2 x (B*h*w, K, C) or None
        n, h, w, c = x.shape
        b = n // t
        y = nn.GroupNorm(num_groups=GROUPS, epsilon=1e-6, use_fast_variance=False, name="norm")(x)  # per frame
        self.sow("intermediates", "groupnorm", y)
        y = Dense(c, dtype=self.dtype_mm, name="proj_in")(y.reshape(n, h * w, c))  # (B*T, h*w, C)
        self.sow("intermediates", "projected_in", y)
        y = y.reshape(b, t, h * w, c).transpose(0, 2, 1, 3).reshape(b * h * w, t, c)  # (B*h*w, T, C): per pixel
        for j in (0, 1):
            normed = layer_norm(1e-5, f"norm_{j}")(y)  # (B*h*w, T, C)
            self.sow("temporal_states", f"normed_{j}", normed)
            attended = TemporalAttention(self.frames, self.dtype_mm, name=f"attn_{j}")(
                normed, None if context is None else context[j])  # (B*h*w, T, C)
            self.sow("intermediates", f"attn{j}_out", attended)
            y = y + attended
        y = y + GegluFeedForward(self.dtype_mm, name="ff")(layer_norm(1e-5, "ff_norm")(y))  # (B*h*w, T, C)
        self.sow("intermediates", "block_out", y)
        y = y.reshape(b, h * w, t, c).transpose(0, 2, 1, 3).reshape(n, h * w, c)  # (B*T, h*w, C)
        y = Dense(c, dtype=self.dtype_mm, name="proj_out")(y)
        self.sow("intermediates", "projected_out", y)
        return x + y.reshape(n, h, w, c)  # (B*T, h, w, C)
