"""Depth Anything 3's any-view head: the DualDPT neck and heads, and the camera decoder.

DualDPT is the DPT neck with three changes: a LayerNorm on the encoder tokens, a UV position
embedding added to the projected maps (before resampling) and to the head inputs, and a second,
independent fusion chain on the same maps that feeds a ray head. The main head gives depth
(exp) and its confidence (exp + 1) at the input's size; the ray head the ray map (6 channels:
direction and origin) and its confidence at 8x the patch grid. The camera decoder turns the
encoder's camera token (token 0 of the last output) into a pose and fields of view, hence the
intrinsics at the network input (principal point at the centre). The camera encoder does the
reverse for known cameras: each view's pose and fields of view (`pose_encoding`) through a small
transformer across the views of a scene, giving the tokens the encoder puts in token 0 from block
`alt_start` on (`Dinov2Encoder`'s `camera_tokens`).

Everything is NHWC. The module registers itself as the DPT neck layout "dualdpt" (`dpt.NECKS`) and
its camera encoder (`dpt.CAMERA_ENCODERS`); its parameters are `head/*` (the neck and heads),
`head/camera/*` (the decoder) and `camera_encoder/*`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .config import DPTConfig
from .dinov2 import Attention
from .dpt import CAMERA_ENCODERS, NECKS, Fusion, Resample
from .layers import Conv, Dense, LayerScaleBlock, gelu, layer_norm
from .resize import resize_bilinear

#: Depth Anything 3's constants: the ray head's output width (6 ray channels + confidence), the UV
#: embedding's weight and frequency base, the norms' epsilon (PyTorch's default)
RAY_CHANNELS = 7
UV_RATIO = 0.1
UV_FREQUENCY = 100.0
NORM_EPS = 1e-5
#: The camera encoder's transformer (every released config: the original's defaults): blocks, heads, MLP ratio
CAMERA_ENCODER_DEPTH, CAMERA_ENCODER_HEADS, CAMERA_ENCODER_MLP_RATIO = 4, 16, 4


def uv_embedding(height: int, width: int, channels: int, aspect: float) -> np.ndarray:
    """(height, width, channels) float32: DA3's UV position embedding of a map, times UV_RATIO.

    The grid spans x in +-ar / sqrt(ar^2 + 1) and y in +-1 / sqrt(ar^2 + 1) (ar = the image's
    width / height), each shrunk by (n - 1) / n (n points); each coordinate is embedded with
    channels / 2 sines and cosines, [sin(p w), cos(p w)], w_i = 1 / 100^(i / (channels / 4)); x first.
    """
    diag = (aspect ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = np.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width).astype(np.float32)
    ys = np.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height).astype(np.float32)
    quarter = channels // 4
    omega = (1.0 / UV_FREQUENCY ** (np.arange(quarter, dtype=np.float32) / np.float32(quarter))).astype(np.float32)

    def sincos(p):  # (n,) -> (n, channels / 2)
        angles = p[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)

    ex, ey = sincos(xs), sincos(ys)  # (W, C/2), (H, C/2)
    grid = np.concatenate([np.broadcast_to(ex[None], (height, width, channels // 2)),
                           np.broadcast_to(ey[:, None], (height, width, channels // 2))], axis=-1)
    return (grid * np.float32(UV_RATIO)).astype(np.float32)


def with_uv(x, image_size):
    """x (B, h, w, C) + its UV embedding for an image of `image_size` (H, W)."""
    h, w, channels = x.shape[1:]
    return x + jnp.asarray(uv_embedding(h, w, channels, image_size[1] / image_size[0]))


def conv3(features: int, mm, name: str, use_bias: bool = True) -> Conv:
    return Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=use_bias, dtype=mm, name=name)


class DualReassemble(nn.Module):
    """Tokens (B, 1 + h*w, D) x 4 -> four maps of `fusion_features`: LayerNorm, 1x1 conv, + UV, resample, 3x3 conv."""

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, features, grid, image_size):
        c, mm = self.config, self.dtype_mm
        norm = layer_norm(NORM_EPS, "norm")  # one LayerNorm for the four outputs
        maps = []
        for i, (x, factor) in enumerate(zip(features, c.reassemble_factors), start=1):
            x = norm(x[:, 1:])  # (B, h*w, D)
            x = x.reshape(x.shape[0], *grid, x.shape[-1])  # (B, h, w, D)
            d = c.reassembly_features[i - 1]
            x = with_uv(Conv(d, (1, 1), dtype=mm, name=f"project_{i}")(x), image_size)  # (B, h, w, d)
            self.sow("intermediates", f"project{i}", x)
            x = Resample(d, factor, mm, name=f"resample_{i}")(x)  # (B, factor*h, factor*w, d)
            self.sow("intermediates", f"reassemble{i}", x)
            x = conv3(c.fusion_features, mm, f"to_fusion_{i}", use_bias=False)(x)
            self.sow("intermediates", f"rn{i}", x)
            maps.append(x)  # (B, h_i, w_i, F)
        return maps


class CameraDecoder(nn.Module):
    """The camera token (B, D) -> pose encoding (B, 9): translation, quaternion (x, y, z, w), fov_h, fov_w (radians)."""

    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, token):  # (B, D)
        d = token.shape[-1]
        x = nn.relu(Dense(d, dtype=self.dtype_mm, name="fc1")(token))
        x = nn.relu(Dense(d, dtype=self.dtype_mm, name="fc2")(x))  # (B, D)
        t = Dense(3, dtype=self.dtype_mm, name="translation")(x)
        q = Dense(4, dtype=self.dtype_mm, name="quaternion")(x)
        fov = nn.relu(Dense(2, dtype=self.dtype_mm, name="fov")(x))  # (B, 2): vertical, horizontal
        return jnp.concatenate([t, q, fov], axis=-1)  # (B, 9)


def quaternion_to_matrix(q):
    """(..., 4) quaternions, scalar last (need not be unit) -> (..., 3, 3) rotations, as DA3's quat_to_mat."""
    i, j, k, r = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    two_s = 2.0 / jnp.sum(q * q, axis=-1)
    rows = [1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
            two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
            two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j)]
    return jnp.stack(rows, axis=-1).reshape(*q.shape[:-1], 3, 3)


def cameras(pose, image_size):
    """Pose encodings (B, 9) -> world-to-camera extrinsics (B, 3, 4) and intrinsics (B, 3, 3) at `image_size`.

    The encoding is camera-to-world [R(q) | t]; fy = (H / 2) / tan(fov_h / 2), fx = (W / 2) /
    tan(fov_w / 2) (tangents at least 1e-6), principal point at the centre.
    """
    h, w = image_size
    rotation = quaternion_to_matrix(pose[:, 3:7])  # (B, 3, 3), camera to world
    inverse = jnp.swapaxes(rotation, -1, -2)  # (B, 3, 3)
    w2c = jnp.concatenate([inverse, -inverse @ pose[:, :3, None]], axis=-1)  # (B, 3, 4)
    fy = (h / 2.0) / jnp.maximum(jnp.tan(pose[:, 7] / 2.0), 1e-6)
    fx = (w / 2.0) / jnp.maximum(jnp.tan(pose[:, 8] / 2.0), 1e-6)
    zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
    k = jnp.stack([fx, zero, zero + w / 2.0, zero, fy, zero + h / 2.0, zero, zero, one], axis=-1)
    return w2c, k.reshape(-1, 3, 3)


class DualDPTHead(nn.Module):
    """Encoder outputs -> {"depth", "confidence", "ray", "ray_confidence", "pose", "extrinsics", "intrinsics"}.

    depth, confidence (B, H, W); ray (B, 8h, 8w, 6), ray_confidence (B, 8h, 8w); pose (B, 9) (see
    `CameraDecoder`); extrinsics (B, 3, 4) world-to-camera, intrinsics (B, 3, 3) in network pixels.
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, features, grid, image_size):
        c, mm = self.config, self.dtype_mm
        maps = DualReassemble(c, mm, name="reassemble")(features, grid, image_size)  # 4 x (B, h_i, w_i, F)
        half = c.fusion_features // 2
        # main: depth and confidence at the input's size
        x = Fusion(c, mm, name="fusion")(maps)  # (B, 2 h_1, 2 w_1, F)
        x = conv3(half, mm, "conv1")(x)
        self.sow("intermediates", "head_conv1", x)
        x = with_uv(resize_bilinear(x, image_size, align_corners=True), image_size)  # (B, H, W, F/2)
        x = Conv(2, (1, 1), dtype=mm, name="conv3")(nn.relu(conv3(c.head_features, mm, "conv2")(x)))
        self.sow("intermediates", "head_preact", x)  # (B, H, W, 2)
        out = {"depth": jnp.exp(x[..., 0]), "confidence": jnp.exp(x[..., 1]) + 1}
        # rays: the second fusion chain's finest level only (8x the patch grid)
        a = Fusion(c, mm, name="fusion_aux")(maps)  # (B, 2 h_1, 2 w_1, F)
        for j, width in enumerate((half, c.fusion_features, half, c.fusion_features, half)):
            a = conv3(width, mm, f"ray_conv1_{j}")(a)  # five plain convs, no activation between them
        a = conv3(c.head_features, mm, "ray_conv2")(with_uv(a, image_size))  # (B, 8h, 8w, 32)
        a = Conv(RAY_CHANNELS, (1, 1), dtype=mm, name="ray_conv3")(nn.relu(layer_norm(NORM_EPS, "ray_norm")(a)))
        self.sow("intermediates", "ray_preact", a)  # (B, 8h, 8w, 7)
        out["ray"], out["ray_confidence"] = a[..., :6], jnp.exp(a[..., 6]) + 1
        # the camera: from token 0 of the last output
        pose = CameraDecoder(mm, name="camera")(features[-1][:, 0])  # (B, 9)
        out["pose"] = pose
        out["extrinsics"], out["intrinsics"] = cameras(pose, image_size)
        return out


def matrix_to_quaternion(m):
    """(..., 3, 3) rotations -> (..., 4) quaternions (x, y, z, w), w >= 0, as DA3's mat_to_quat.

    Of the four candidates (one per component taken from the diagonal), the one whose component
    is largest, each divided by 2 max(that component, 0.1).
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    squares = jnp.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    q_abs = jnp.where(squares > 0, jnp.sqrt(jnp.maximum(squares, 0)), 0.0)  # (..., 4): |r|, |i|, |j|, |k|
    candidates = jnp.stack([
        jnp.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1),
        jnp.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], -1),
        jnp.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], -1),
        jnp.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], -1)], -2)  # (..., 4, 4): r, i, j, k
    candidates = candidates / (2.0 * jnp.maximum(q_abs, 0.1))[..., None]
    best = jnp.argmax(q_abs, axis=-1)[..., None, None]  # the first largest
    q = jnp.take_along_axis(candidates, best, axis=-2)[..., 0, :]  # (..., 4): r, i, j, k
    q = jnp.concatenate([q[..., 1:], q[..., :1]], axis=-1)  # (x, y, z, w)
    return jnp.where(q[..., 3:] < 0, -q, q)


def pose_encoding(extrinsics, intrinsics, image_size):
    """World-to-camera extrinsics (..., 4, 4) and intrinsics (..., 3, 3) in network pixels -> (..., 9), as DA3's
    camera encoder takes them: the camera-to-world translation, its rotation as a quaternion (x, y, z, w), then
    fov_h = 2 atan((H / 2) / fy) and fov_w = 2 atan((W / 2) / fx) (the principal point is not used)."""
    h, w = image_size
    rotation = jnp.swapaxes(extrinsics[..., :3, :3], -1, -2)  # (..., 3, 3), camera to world
    translation = -(rotation @ extrinsics[..., :3, 3:])[..., 0]  # (..., 3): the camera's centre
    fov_h = 2 * jnp.arctan((h / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * jnp.arctan((w / 2) / intrinsics[..., 0, 0])
    return jnp.concatenate([translation, matrix_to_quaternion(rotation), fov_h[..., None], fov_w[..., None]], -1)


class CameraEncoder(nn.Module):
    """Known cameras -> camera tokens (B, C): DA3's CameraEnc, always in float32 (as the original runs it).

    Per view the pose encoding (B, 9) -> Linear (C/2), GELU, Linear (C) -> LayerNorm -> four
    pre-norm blocks (LayerScale, 16 heads, eps 1e-5) attending across the `views` of each scene
    (one token per view) -> LayerNorm. C is the encoder's width.
    """

    config: DPTConfig
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, extrinsics, intrinsics, image_size, views: int = 1):
        dim = self.config.encoder.embed_dim
        x = pose_encoding(extrinsics.astype(jnp.float32), intrinsics.astype(jnp.float32), image_size)  # (B, 9)
        self.sow("intermediates", "pose_encoding", x)
        x = Dense(dim, name="pose_fc2")(gelu(Dense(dim // 2, name="pose_fc1")(x)))  # (B, C)
        self.sow("intermediates", "pose_branch", x)
        x = layer_norm(NORM_EPS, "token_norm")(x)
        self.sow("intermediates", "normed_tokens", x)
        x = x.reshape(-1, views, dim)  # (B / S, S, C)
        attention = functools.partial(Attention, CAMERA_ENCODER_HEADS)
        for i in range(CAMERA_ENCODER_DEPTH):
            x = LayerScaleBlock(attention, dim, CAMERA_ENCODER_MLP_RATIO * dim, NORM_EPS, name=f"trunk_{i}")(x)
            self.sow("intermediates", f"trunk{i}", x)
        return layer_norm(NORM_EPS, "trunk_norm")(x).reshape(-1, dim)  # (B, C)


NECKS["dualdpt"] = DualDPTHead
CAMERA_ENCODERS["dualdpt"] = CameraEncoder
