"""Small building blocks shared by both encoders and the DPT stages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn


def gelu(x):
    """The exact (erf) GELU used everywhere in the original; jax.nn.gelu defaults to the tanh form."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """LayerNorm with PyTorch's two-pass variance (the fast E[x^2]-E[x]^2 form loses digits)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        return nn.Dense(dim, name="fc2")(gelu(nn.Dense(self.hidden, name="fc1")(x)))


class QKV(nn.Module):
    """One bias-free Linear to q, k, v plus the learned q and v biases (k has none).

    Returns q, k, v as (..., heads, N, head_dim).
    """

    num_heads: int

    @nn.compact
    def __call__(self, x):  # (..., N, C)
        dim = x.shape[-1]
        q_bias = self.param("q_bias", nn.initializers.zeros, (dim,))
        v_bias = self.param("v_bias", nn.initializers.zeros, (dim,))
        qkv = nn.Dense(3 * dim, use_bias=False, name="qkv")(x)  # (..., N, 3C)
        qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, dim // self.num_heads)  # (..., N, 3, heads, hd)
        qkv = jnp.moveaxis(qkv, -4, -2)  # (..., 3, heads, N, hd)
        return qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]


def attend(q, k, v, bias):
    """softmax(q k^T + bias) v over (..., heads, N, hd); the softmax runs in float32."""
    logits = jnp.einsum("...qd,...kd->...qk", q, k).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("...qk,...kd->...qd", weights, v)


def merge_heads(x):
    """(..., heads, N, hd) -> (..., N, heads*hd)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
