"""Separable image resampling with the exact conventions of the original code.

Every resize here is written as, per axis, a small table of taps: for each output index the
input indices it reads and their weights. The tables depend only on the sizes, so they are
built once in NumPy at trace time and become constants of the compiled program; the data
path is a few gathers and multiply-adds, which XLA fuses.

The tables reproduce the libraries' own arithmetic, not just their formulas: PyTorch computes
the source coordinate in float32 for float32 tensors, OpenCV in float64 rounded to float32.
Where that matters (coordinates in the hundreds and beyond) the two differ by more than float32
noise, so each convention is built the way its library builds it.

`jax.image.resize` cannot be used for the model: it has no align_corners=True mode and it
antialiases when shrinking, where PyTorch's bilinear does not.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
import numpy as np

_F32 = np.float32
CUBIC_A = -0.75  # the Keys cubic parameter of both OpenCV's INTER_CUBIC and PyTorch's bicubic


def _torch_source_index(in_size: int, out_size: int, align_corners: bool, cubic: bool) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's (lower input index, fraction) per output index, for float32 tensors and `size=` given.

    Follows ATen's area_pixel_compute_scale, area_pixel_compute_source_index and
    guard_index_and_lambda step by step in float32, the precision torch uses for float32 tensors:
      align_corners=True:  src = ((in - 1) / (out - 1)) * dst   (scale 0 when out == 1)
      align_corners=False: src = (in / out) * (dst + 0.5) - 0.5, clamped at 0 for linear but not
                           for cubic.
    The lower index is floor(src) capped at in - 1, and the fraction src - index is clipped to [0, 1].

    Torch's vectorised CPU kernels (AVX2/AVX512 builds) and CUDA may fuse `scale * x - 0.5` into
    one FMA; that moves src by at most one float32 ulp (weights by ~1e-5 at coordinates in the
    thousands, nothing measurable at model sizes). This follows the source as written, which is
    what torch computes with ATEN_CPU_CAPABILITY=default.
    """
    dst = np.arange(out_size, dtype=_F32)
    if align_corners:
        scale = _F32(in_size - 1) / _F32(out_size - 1) if out_size > 1 else _F32(0)
        src = scale * dst
    else:
        scale = _F32(in_size) / _F32(out_size)
        src = scale * (dst + _F32(0.5)) - _F32(0.5)
        if not cubic:
            src = np.maximum(src, _F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    frac = np.clip(src - i0.astype(_F32), _F32(0), _F32(1))
    return i0, frac.astype(_F32)


@functools.lru_cache(maxsize=None)
def linear_taps(in_size: int, out_size: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """(out, 2) indices and weights of PyTorch's bilinear interpolation along one axis.

    align_corners=True maps the corner pixels onto each other: src = dst * (in - 1) / (out - 1).
    align_corners=False uses half-pixel centres: src = (dst + 0.5) * in / out - 0.5, clamped at 0.
    Computed in float32 exactly as torch does for float32 tensors (see `_torch_source_index`),
    so the weights are bit-identical to torch's.
    """
    i0, frac = _torch_source_index(in_size, out_size, align_corners, cubic=False)
    i1 = np.minimum(i0 + 1, in_size - 1)
    idx = np.stack([i0, i1], axis=1)
    w = np.stack([_F32(1) - frac, frac], axis=1)
    return idx.astype(np.int32), w.astype(np.float32)


def _keys_near(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel for |x| <= 1: ((A + 2) x - (A + 3)) x^2 + 1, evaluated in float32."""
    a = _F32(CUBIC_A)
    return ((a + _F32(2)) * x - (a + _F32(3))) * x * x + _F32(1)


def _keys_far(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel for 1 <= |x| <= 2: ((A x - 5A) x + 8A) x - 4A, evaluated in float32."""
    a = _F32(CUBIC_A)
    return ((a * x - _F32(5) * a) * x + _F32(8) * a) * x - _F32(4) * a


def _opencv_cubic_source(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's (floor, fraction) of the cubic source coordinate (cv::resize, resizeGeneric setup).

    scale = 1 / (out / in) and src = (dst + 0.5) * scale - 0.5 in float64, then rounded to float32
    before the floor. No clamping: the taps left of 0 or right of in - 1 are replicated later.
    """
    scale = 1.0 / (out_size / in_size)
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(_F32)
    floor = np.floor(src)
    return floor.astype(np.int64), (src - floor).astype(_F32)


@functools.lru_cache(maxsize=None)
def cubic_taps(in_size: int, out_size: int, convention: str) -> tuple[np.ndarray, np.ndarray]:
    """(out, 4) indices and weights of bicubic interpolation along one axis.

    Both conventions are the same interpolant: the Keys kernel with a = -0.75, half-pixel
    centres src = (dst + 0.5) * in / out - 0.5 (not clamped before the floor), taps
    floor(src) - 1 .. floor(src) + 2 with indices clamped to [0, in - 1] (border replicate), and
    no antialiasing when shrinking. They differ only in floating-point details, which are
    reproduced here so that each matches its library to float32 rounding:

    "opencv": cv2.resize(..., interpolation=cv2.INTER_CUBIC) on float32 and float64 images
        (MiDaS resizes its float64 input this way). The scale is 1 / (out / in) and src is
        computed in float64, then rounded to float32; the weights are float32 for either image
        dtype, and the fourth is 1 minus the other three, so every row sums to 1.
    "torch": F.interpolate(mode="bicubic", align_corners=False) with `size=` on float32 tensors
        (run.py's resize of the prediction). The scale in / out and src are float32
        (see `_torch_source_index`), and all four weights come from the kernel polynomial.

    The float32 coordinate error of "torch" grows with the coordinate: weights of the two
    conventions differ by ~1e-6 at a few dozen pixels, ~4e-5 for 384 -> 4000 and ~3e-4 for
    4000 -> 384, so neither convention stands in for the other.
    """
    if convention == "opencv":
        i0, t = _opencv_cubic_source(in_size, out_size)
    elif convention == "torch":
        i0, t = _torch_source_index(in_size, out_size, align_corners=False, cubic=True)
    else:
        raise ValueError(f"unknown bicubic convention {convention!r}; expected 'opencv' or 'torch'")
    one = _F32(1)
    w0 = _keys_far(t + one)
    w1 = _keys_near(t)
    w2 = _keys_near(one - t)
    w3 = one - w0 - w1 - w2 if convention == "opencv" else _keys_far((one - t) + one)
    idx = np.clip(i0[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return idx.astype(np.int32), np.stack([w0, w1, w2, w3], axis=1).astype(np.float32)


def resample_axis(x: jnp.ndarray, axis: int, idx: np.ndarray, w: np.ndarray, *,
                  rounded_products: bool = False) -> jnp.ndarray:
    """out[..., o, ...] = sum_t w[o, t] * x[..., idx[o, t], ...] along `axis`.

    `rounded_products`: each product rounded to float32 before it is added, as OpenCV's loops do;
    XLA's CPU code generator otherwise fuses a product and the sum it feeds into one multiply-add
    (one rounding), which moves results by an ulp and uint8 results by a level now and then.
    min(p, float32 max) is p itself, but no multiply-add can take it.
    """
    axis = axis % x.ndim
    bshape = [1] * x.ndim
    bshape[axis] = idx.shape[0]
    out = None
    for t in range(idx.shape[1]):
        term = jnp.take(x, jnp.asarray(idx[:, t]), axis=axis) * jnp.asarray(w[:, t], x.dtype).reshape(bshape)
        if rounded_products:
            term = jnp.minimum(term, jnp.finfo(term.dtype).max)
        out = term if out is None else out + term
    return out


def _resize_separable(x: jnp.ndarray, size, axes, taps: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                      rounded_products: bool = False) -> jnp.ndarray:
    """Resamples each of `axes` to the matching entry of `size` with the tap tables `taps(in, out)`."""
    out = x
    for axis, n in zip(axes, size):
        if x.shape[axis] == n:
            continue  # every convention here is the identity at equal size
        idx, w = taps(x.shape[axis], n)
        out = resample_axis(out, axis, idx, w, rounded_products=rounded_products)
    return out


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], *, align_corners: bool, axes=(1, 2)) -> jnp.ndarray:
    """Bilinear resize of the two `axes` of `x` (NHWC by default) to `size`, as torch.nn.functional.interpolate."""
    return _resize_separable(x, size, axes, lambda n_in, n_out: linear_taps(n_in, n_out, align_corners))


def resize_bicubic(x: jnp.ndarray, size: tuple[int, int], *, convention: str, axes=(1, 2),
                   rounded_products: bool = False) -> jnp.ndarray:
    """Bicubic resize (a = -0.75, no antialiasing) of the two `axes` of `x` (NHWC by default) to `size`.

    convention="opencv" matches cv2.resize(INTER_CUBIC) (MiDaS's input resize), "torch" matches
    F.interpolate(mode="bicubic", align_corners=False) (run.py's output resize); see `cubic_taps`;
    `rounded_products`: see `resample_axis`.
    """
    return _resize_separable(x, size, axes, lambda n_in, n_out: cubic_taps(n_in, n_out, convention),
                             rounded_products)


@functools.lru_cache(maxsize=None)
def area_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(out, k) indices and weights of OpenCV's INTER_AREA shrinking along one axis (out_size <= in_size).

    As cv2's computeResizeAreaTab: output pixel d covers the source interval [d s, (d + 1) s)
    with s = 1 / (out / in) in float64; whole source pixels weigh 1 / cell, the partly covered
    ones at either end their covered fraction / cell (ignored below 1e-3), cell = min(s, in - d s);
    the weights are rounded to float32. Rows with fewer taps are padded with weight 0.
    """
    if not 0 < out_size <= in_size:
        raise ValueError(f"area resampling shrinks: {in_size} -> {out_size}")
    scale = 1.0 / (out_size / in_size)
    rows = []
    for d in range(out_size):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, in_size - f1)
        s2 = min(int(np.floor(f2)), in_size - 1)
        s1 = min(int(np.ceil(f1)), s2)
        taps = []
        if s1 - f1 > 1e-3:
            taps.append((s1 - 1, (s1 - f1) / cell))
        taps += [(s, 1.0 / cell) for s in range(s1, s2)]
        if f2 - s2 > 1e-3:
            taps.append((s2, min(min(f2 - s2, 1.0), cell) / cell))
        rows.append(taps)
    k = max(len(r) for r in rows)
    idx = np.zeros((out_size, k), np.int32)
    w = np.zeros((out_size, k), np.float32)
    for d, taps in enumerate(rows):
        for t, (s, a) in enumerate(taps):
            idx[d, t], w[d, t] = s, a
    return idx, w


def resize_area(x: jnp.ndarray, size: tuple[int, int], *, axes=(1, 2)) -> jnp.ndarray:
    """Shrinks the two `axes` of `x` (NHWC by default) to `size` as cv2.resize(INTER_AREA) (see `area_taps`).

    The second axis first (OpenCV sums each source row, then the rows), each product rounded before
    it is added (`resample_axis`): in that order the float32 sums are OpenCV's.
    """
    return _resize_separable(x, tuple(size)[::-1], tuple(axes)[::-1], area_taps, rounded_products=True)
