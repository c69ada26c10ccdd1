"""Small building blocks shared by the encoders and the DPT stages, and the one precision rule.

Precision: every module takes `dtype_mm`, the dtype its matrix products run in (float32, or
bfloat16 with float32 accumulation), as big_vision's ViT does; `Dense` and `Conv` cast their
operands to it and hand back float32, and `attend` multiplies in it. Everything else (the
residual stream, norms, softmax, position biases, resizes) is float32. A family keeps a part of
its network in float32 by passing float32 there (SwinV2's position-bias MLP).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

#: The compute dtypes a model runs in, by the names the API and the CLI take.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}



#: dot_general with a float32 result whatever the operands: bfloat16 products are summed and returned in
#: float32 (no rounding to bfloat16 between the matmul and its bias), and XLA's CPU backend runs a bfloat16 x
#: bfloat16 -> float32 dot on the CPU's bfloat16 matrix units (AMX, AVX512-BF16), where a bfloat16 -> bfloat16 dot
#: is widened to float32 first (5x slower on a CPU with AMX; benchmarks/results/bf16-side-*).
dot_float32 = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)


class Dense(nn.Dense):
    """nn.Dense whose matmul runs in its `dtype` (the model's dtype_mm: operands cast to it) and
    hands back float32, so the residual stream, norms and softmax stay float32."""

    dot_general: Callable = dot_float32

    def __call__(self, x):
        return super().__call__(x).astype(jnp.float32)


def conv_or_dot(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None):
    """lax.conv_general_dilated (NHWC, HWIO), but a 1x1 convolution without stride or padding is a matmul.

    XLA's CPU convolution is slow for few output channels (a 1x1 conv to 1 channel at 518x518: 30 ms,
    single-threaded, where the matmul takes 4 ms); as a matmul it sums the same products.
    """
    trivial = (rhs.shape[:-2] == (1,) * (rhs.ndim - 2) and set(window_strides) <= {1} and feature_group_count == 1
               and (padding in ("VALID", "SAME") or all(tuple(p) == (0, 0) for p in padding))
               and set(lhs_dilation or (1,)) <= {1} and set(rhs_dilation or (1,)) <= {1})
    if trivial:
        return dot_float32(lhs, rhs.reshape(rhs.shape[-2:]), (((lhs.ndim - 1,), (0,)), ((), ())), precision=precision)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision,
                                        preferred_element_type=jnp.float32)


class Conv(nn.Conv):
    """nn.Conv in its `dtype` (the model's dtype_mm), handing back float32, as `Dense`; 1x1 by `conv_or_dot`."""

    conv_general_dilated: Callable = conv_or_dot

    def __call__(self, x):
        return super().__call__(x).astype(jnp.float32)


def patch_grid(images, patch: int, what: str) -> tuple[int, int]:
    """The (h, w) patch grid of images (B, H, W, 3); a ValueError naming the encoder (`what`) unless the
    sides are multiples of `patch`."""
    height, width = images.shape[1:3]
    if height % patch or width % patch:
        raise ValueError(f"{what} needs image sides that are multiples of {patch}; got {height}x{width} (HxW)")
    return height // patch, width // patch


def gelu(x):
    """The exact (erf) GELU used everywhere in the original; jax.nn.gelu defaults to the tanh form."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """LayerNorm with PyTorch's two-pass variance (the fast E[x^2]-E[x]^2 form loses digits)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    hidden: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        hidden = gelu(Dense(self.hidden, dtype=self.dtype_mm, name="fc1")(x))
        return Dense(dim, dtype=self.dtype_mm, name="fc2")(hidden)


class SwiGLU(nn.Module):
    """One Linear to two halves x1, x2 of `hidden` each -> silu(x1) * x2 -> Linear (DINOv2's ViT-g feed-forward)."""

    hidden: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        x1, x2 = jnp.split(Dense(2 * self.hidden, dtype=self.dtype_mm, name="w12")(x), 2, axis=-1)  # (..., hidden) x 2
        return Dense(dim, dtype=self.dtype_mm, name="w3")(jax.nn.silu(x1) * x2)


#: The feed-forward kinds of a ViT block, by the name a config gives (`Dinov2Config.ffn`)
FEED_FORWARDS = {"mlp": Mlp, "swiglu": SwiGLU}


def rematerialised(block: type, remat: bool, static_argnums: tuple = ()) -> type:
    """`block` (a module class) whose activations are recomputed in the backward pass when `remat` (training
    memory: only each block's input is kept); the same class otherwise. Argument 0 of `static_argnums` is the module."""
    return nn.remat(block, static_argnums=static_argnums) if remat else block


class LayerScaleBlock(nn.Module):
    """x + g1 * attn(LN1(x)), then x + g2 * mlp(LN2(x)): the pre-norm ViT block with layer scale (BEiT, DINOv2).

    `attention` makes the block's attention module (called with name "attn"); extra call
    arguments go to it (BEiT's patch grid). `ffn`: the feed-forward kind (FEED_FORWARDS), named "mlp".
    """

    attention: Callable[..., nn.Module]
    embed_dim: int
    mlp_hidden: int
    layer_norm_eps: float
    dtype_mm: Any = jnp.float32
    gamma_init: float = 1.0
    ffn: str = "mlp"

    @nn.compact
    def __call__(self, x, *attention_args):
        init = nn.initializers.constant(self.gamma_init)
        gamma_1 = self.param("gamma_1", init, (self.embed_dim,))
        gamma_2 = self.param("gamma_2", init, (self.embed_dim,))
        x = x + gamma_1 * self.attention(name="attn")(layer_norm(self.layer_norm_eps, "norm1")(x), *attention_args)
        mlp = FEED_FORWARDS[self.ffn](self.mlp_hidden, self.dtype_mm, name="mlp")
        return x + gamma_2 * mlp(layer_norm(self.layer_norm_eps, "norm2")(x))


class QKV(nn.Module):
    """One bias-free Linear to q, k, v plus the learned q and v biases (k has none).

    Returns q, k, v as (..., heads, N, head_dim).
    """

    num_heads: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (..., N, C)
        dim = x.shape[-1]
        q_bias = self.param("q_bias", nn.initializers.zeros, (dim,))
        v_bias = self.param("v_bias", nn.initializers.zeros, (dim,))
        qkv = Dense(3 * dim, use_bias=False, dtype=self.dtype_mm, name="qkv")(x)  # (..., N, 3C)
        qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, dim // self.num_heads)  # (..., N, 3, heads, hd)
        qkv = jnp.moveaxis(qkv, -4, -2)  # (..., 3, heads, N, hd)
        return qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]


#: Queries per block of `attend` for long sequences: their logits (heads, block, N) stay in cache.
QUERY_BLOCK = 128
#: Sequences up to this long attend in one piece (blocks gained nothing at 577 tokens and cost SwinV2's
#: 576-token windows 7 %; at 1370 they halve the attention's time).
ONE_PIECE_MAX = 1024


def attend(q, k, v, bias, *, dtype_mm=jnp.float32, float32_logits: bool = False, blocks=None):
    """softmax(q k^T + bias) v over (..., heads, N, hd), products in `dtype_mm`; logits and softmax in float32.

    `bias` broadcasts against the logits (..., heads, N, N), or is a function (start, size) -> its rows
    start .. start + size (start may be traced) for a bias that should never exist whole (BEiT's).
    `float32_logits`: also multiply q k^T in float32 (SwinV2's scaled cosine attention, where logits are
    cosines times up to 100 and bfloat16 operands would cost ~0.4 in every logit).

    `blocks` = (first, size): the queries from `first` on go through in blocks of `size` (a loop), those
    before and after in one piece each; by default (0, QUERY_BLOCK) above ONE_PIECE_MAX queries, else one
    piece. Each query's row is computed exactly as in one piece, but the logits stay in the cache, where
    the whole (heads, N, N) would be streamed through memory by every step of the softmax (twice as fast
    at 1370 tokens on a 2-core CPU).
    """
    n = q.shape[-2]
    rows = bias if callable(bias) else _query_rows(jnp.asarray(bias), n)
    if blocks is None:
        if n <= ONE_PIECE_MAX:
            return _attend(q, k, v, rows(0, n), dtype_mm, float32_logits)
        blocks = (0, QUERY_BLOCK)
    lead = q.shape[:-3]
    if math.prod(lead) > 1 and (callable(bias) or jnp.ndim(bias) <= 3):  # one batch element at a time:
        # a block's logits (..., heads, size, N) stay in the cache only for one element (a 32-frame clip at
        # 518x518: 45 -> 21 s)
        def element(qkv):
            return attend(*qkv, bias, dtype_mm=dtype_mm, float32_logits=float32_logits, blocks=blocks)

        out = jax.lax.map(element, tuple(x.reshape(-1, *x.shape[-3:]) for x in (q, k, v)))  # (B', heads, N, hd)
        return out.reshape(*lead, *out.shape[-3:])
    first, size = blocks
    count = (n - first) // size
    end = first + count * size

    def one(i):
        start = first + i * size
        qb = jax.lax.dynamic_slice_in_dim(q, start, size, axis=-2)
        return _attend(qb, k, v, rows(start, size), dtype_mm, float32_logits)

    out = jnp.moveaxis(jax.lax.map(one, jnp.arange(count)), 0, -3)  # (..., count, size, hd)
    pieces = [out.reshape(*out.shape[:-3], count * size, out.shape[-1])]
    if first:
        pieces.insert(0, _attend(q[..., :first, :], k, v, rows(0, first), dtype_mm, float32_logits))
    if end < n:
        pieces.append(_attend(q[..., end:, :], k, v, rows(end, n - end), dtype_mm, float32_logits))
    return jnp.concatenate(pieces, axis=-2) if len(pieces) > 1 else pieces[0]  # (..., heads, N, hd)


def _query_rows(bias, n: int):
    """(start, size) -> the rows of `bias` for those queries: a slice where it has a query axis, else itself."""
    if bias.ndim >= 2 and bias.shape[-2] == n:
        return lambda start, size: jax.lax.dynamic_slice_in_dim(bias, start, size, axis=-2)
    return lambda start, size: bias


def _attend(q, k, v, bias, dtype_mm, float32_logits):
    """`attend` in one piece."""
    dtype = dtype_mm
    qk_dtype = jnp.float32 if float32_logits else dtype
    q, k, v = q.astype(qk_dtype), k.astype(qk_dtype), v.astype(dtype)
    logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("...qk,...kd->...qd", weights, v, preferred_element_type=jnp.float32)


def merge_heads(x):
    """(..., heads, N, hd) -> (..., N, heads*hd)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
