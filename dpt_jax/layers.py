"""Small building blocks shared by both encoders and the DPT stages."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

#: The compute dtypes a model runs in, by the names the API and the CLI take.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_MATMUL_DTYPE: contextvars.ContextVar = contextvars.ContextVar("matmul_dtype", default=None)

#: Modules whose Dense layers stay float32 under mixed precision (SwinV2's position-bias MLP:
#: its output is squashed by 16 * sigmoid and added to logits scaled up to 100x).
FLOAT32_MODULES = frozenset({"cpb_mlp"})


@contextlib.contextmanager
def mixed_precision(dtype):
    """Trace the model with `dtype` (bfloat16) matmul operands and float32 everywhere else.

    Inside, every nn.Dense and nn.Conv takes its input cast to `dtype` and hands back float32,
    and `attend` multiplies in `dtype` with float32 accumulation. The residual stream, norms,
    softmax, position biases and resizes stay float32. Parameters of Dense/Conv layers are
    expected in `dtype` already (see `matmul_params`). A trace-time setting, like
    jax.default_matmul_precision: it applies to what is traced inside the block.
    """

    def cast_matmul_io(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv)):
            if getattr(context.module.parent, "name", None) in FLOAT32_MODULES:
                return next_fun(*args, **kwargs)
            return next_fun(args[0].astype(dtype), *args[1:], **kwargs).astype(jnp.float32)
        return next_fun(*args, **kwargs)

    token = _MATMUL_DTYPE.set(dtype)
    try:
        with nn.intercept_methods(cast_matmul_io):
            yield
    finally:
        _MATMUL_DTYPE.reset(token)


def matmul_params(params, dtype):
    """Cast the kernels and biases of Dense/Conv layers (dicts holding a "kernel") to `dtype`; keep the rest.

    Layers inside FLOAT32_MODULES keep float32, as `mixed_precision` runs them.
    """
    if isinstance(params, dict) or hasattr(params, "items"):
        if "kernel" in params:
            return {k: (v.astype(dtype) if k in ("kernel", "bias") else v) for k, v in params.items()}
        return {k: (v if k in FLOAT32_MODULES else matmul_params(v, dtype)) for k, v in params.items()}
    return params


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


class LayerScaleBlock(nn.Module):
    """x + g1 * attn(LN1(x)), then x + g2 * mlp(LN2(x)): the pre-norm ViT block with layer scale (BEiT, DINOv2).

    `attention` makes the block's attention module (called with name "attn"); extra call
    arguments go to it (BEiT's patch grid).
    """

    attention: Callable[..., nn.Module]
    embed_dim: int
    mlp_hidden: int
    layer_norm_eps: float
    gamma_init: float = 1.0

    @nn.compact
    def __call__(self, x, *attention_args):
        init = nn.initializers.constant(self.gamma_init)
        gamma_1 = self.param("gamma_1", init, (self.embed_dim,))
        gamma_2 = self.param("gamma_2", init, (self.embed_dim,))
        x = x + gamma_1 * self.attention(name="attn")(layer_norm(self.layer_norm_eps, "norm1")(x), *attention_args)
        return x + gamma_2 * Mlp(self.mlp_hidden, name="mlp")(layer_norm(self.layer_norm_eps, "norm2")(x))


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


def attend(q, k, v, bias, *, float32_logits: bool = False):
    """softmax(q k^T + bias) v over (..., heads, N, hd); logits and softmax in float32.

    `float32_logits`: also multiply q k^T in float32 (SwinV2's scaled cosine attention, where
    logits are cosines times up to 100 and bfloat16 operands would cost ~0.4 in every logit).
    """
    dtype = _MATMUL_DTYPE.get() or q.dtype
    qk_dtype = jnp.float32 if float32_logits else dtype
    q, k, v = q.astype(qk_dtype), k.astype(qk_dtype), v.astype(dtype)
    logits = jnp.einsum("...qd,...kd->...qk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    return jnp.einsum("...qk,...kd->...qd", weights, v, preferred_element_type=jnp.float32)


def merge_heads(x):
    """(..., heads, N, hd) -> (..., N, heads*hd)."""
    x = jnp.moveaxis(x, -3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
