"""Separable image resampling with the exact conventions of the original code.

Every resize here is written as, per axis, a small table of taps: for each output index the
input indices it reads and their weights. The tables depend only on the sizes, so they are
built once in NumPy at trace time and become constants of the compiled program; the data
path is a few gathers and multiply-adds, which XLA fuses.

`jax.image.resize` cannot be used for the model: it has no align_corners=True mode and it
antialiases when shrinking, where PyTorch's bilinear does not.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def linear_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """(out, 2) indices and weights of PyTorch's bilinear interpolation along one axis.

    align_corners=True maps the corner pixels onto each other: src = dst * (in - 1) / (out - 1).
    align_corners=False uses half-pixel centres: src = (dst + 0.5) * in / out - 0.5, clamped at 0.
    """
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    idx = np.stack([i0, i1], axis=1)
    w = np.stack([1.0 - frac, frac], axis=1)
    return idx.astype(np.int32), w.astype(np.float32)


def resample_axis(x: jnp.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> jnp.ndarray:
    """out[..., o, ...] = sum_t w[o, t] * x[..., idx[o, t], ...] along `axis`."""
    axis = axis % x.ndim
    bshape = [1] * x.ndim
    bshape[axis] = idx.shape[0]
    out = None
    for t in range(idx.shape[1]):
        term = jnp.take(x, jnp.asarray(idx[:, t]), axis=axis) * jnp.asarray(w[:, t], x.dtype).reshape(bshape)
        out = term if out is None else out + term
    return out


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], *, align_corners: bool, axes=(1, 2)) -> jnp.ndarray:
    """Bilinear resize of the two `axes` of `x` (NHWC by default) to `size`, as torch.nn.functional.interpolate."""
    out = x
    for axis, n in zip(axes, size):
        if x.shape[axis] == n:
            continue  # both conventions are the identity at equal size
        idx, w = linear_taps(x.shape[axis], n, align_corners)
        out = resample_axis(out, axis, idx, w)
    return out
