"""DINOv2 ViT encoder of Depth Anything (V1 and V2): 14 px patches and a learned absolute position table.

Patch embedding (14x14 conv, stride 14) -> prepend the cls token -> add the position table
(resized to the patch grid with DINOv2's bicubic + 0.1 offset rule) -> pre-norm blocks with
layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)). The outputs of four chosen blocks,
each passed through the shared final LayerNorm, feed the DPT neck; the residual stream
itself is never normed.

Intermediates are sown in the "intermediates" collection under the reference fixtures' names:
pos_embed, tokens0, block{i}_raw (i = block index), feat{k} / cls{k} (k = 1..4, normed).

The module ends with the released models on this encoder as DPTConfig presets: Depth Anything
V2 relative, V2 metric Hypersim / Virtual KITTI, V1; Video Depth Anything relative and metric
(`DPTConfig.temporal_frames`); Prompt Depth Anything (a depth prompt in the fusion blocks,
`DPTConfig.prompt`); Distill-Any-Depth (V2's network, other weights and input size); and the
reference minis. What is known about their files is in convert/dinov2.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .config import MAX_SIDE, MAX_WIDTH, DPTConfig, bounded, checked_fields, choice, require
from .layers import Conv, Dense, LayerScaleBlock, attend, layer_norm, merge_heads, patch_grid, rematerialised
from .resize import _keys_far, _keys_near, resample_axis

Pair = tuple[int, int]
_F32 = np.float32


@dataclass(frozen=True)
class Dinov2Config:
    """DINOv2 ViT as built by Depth Anything (no registers, LayerScale; an MLP or, ViT-g, a SwiGLU feed-forward)."""

    embed_dim: int = bounded(1, MAX_WIDTH)
    depth: int = bounded(1, 64)
    num_heads: int = bounded(1, 256)
    mlp_hidden: int = bounded(1, 4 * MAX_WIDTH)  # the feed-forward's hidden width (SwiGLU: of each of its two halves)
    hooks: tuple[int, int, int, int] = bounded(0, 63)  # 0-based blocks whose (normed) outputs feed the four DPT stages
    native_grid: Pair = bounded(1, MAX_SIDE // 14, default=(37, 37))  # grid of the stored position table (518 / 14)
    patch_size: int = bounded(1, 64, default=14)
    layer_norm_eps: float = bounded(1e-12, 1e-2, default=1e-6)
    interpolate_offset: float = bounded(0.0, 1.0, default=0.1)  # DINOv2 resizes the table by (g + offset) / N, not to g
    final_norm_eps: float = bounded(1e-12, 1e-2, default=1e-6)  # the final norm's (Depth Anything 3: 1e-5)
    # Depth Anything 3's any-view options (-1: off). From `alt_start` on, the odd blocks attend across
    # all views of a scene (global) and the others within each view (local), and token 0 becomes a
    # learned camera token there; QK-norm and 2D RoPE (frequency base `rope_frequency`) from their blocks
    # on; `cat_token`: each output is [the last local block's tokens, the normed tokens] (2 x embed_dim).
    alt_start: int = bounded(-1, 63, default=-1)
    qknorm_start: int = bounded(-1, 63, default=-1)
    rope_start: int = bounded(-1, 63, default=-1)
    rope_frequency: float = bounded(1.0, 1e6, default=100.0)
    cat_token: bool = False
    # the blocks' feed-forward (layers.FEED_FORWARDS): "mlp" Linear-GELU-Linear, or "swiglu" (DINOv2's ViT-g:
    # w12 to two halves, silu(x1) * x2, w3)
    ffn: str = choice("mlp", "swiglu", default="mlp")

    def __post_init__(self):
        checked_fields(self)
        require(self.embed_dim % self.num_heads == 0, "embed_dim must be a multiple of num_heads")
        require(list(self.hooks) == sorted(set(self.hooks)) and max(self.hooks) < self.depth,
                "hooks must be increasing block indices below depth")
        require(self.rope_start == -1 or (self.embed_dim // self.num_heads) % 4 == 0,
                "2D RoPE needs a head width that is a multiple of 4")
        require(not self.cat_token or self.alt_start != -1, "cat_token needs alternating attention (alt_start)")

    @property
    def output_dim(self) -> int:
        """The width of each output token: embed_dim, or twice that with `cat_token`."""
        return 2 * self.embed_dim if self.cat_token else self.embed_dim

    def is_global(self, block: int) -> bool:
        """Whether `block` attends across the views (DA3: from alt_start on, the odd ones)."""
        return self.alt_start != -1 and block >= self.alt_start and block % 2 == 1


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


def rope_tables(positions: np.ndarray, half: int, frequency: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (N, half), of RoPE along one axis at integer `positions` (N,), as DA3 builds them.

    inv_freq_i = 1 / frequency^(2i / half) for i < half / 2, angles = position x inv_freq in
    float32, duplicated ([angles, angles]: the rotation pairs element j with j + half / 2).
    """
    exponents = np.arange(0, half, 2, dtype=np.float32) / np.float32(half)
    inv_freq = (np.float32(1.0) / np.power(np.float32(frequency), exponents)).astype(np.float32)
    angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # (N, half / 2)
    angles = np.concatenate([angles, angles], axis=-1)  # (N, half)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope_2d(x, tables):
    """2D RoPE on (..., N, hd): the first half of each head rotated by the row position, the second by the column.

    `tables` = (cos_y, sin_y, cos_x, sin_x), each (N, hd / 2); a half x is rotated as
    x cos + [-x2, x1] sin (x1, x2 its halves).
    """
    def rotate(x, cos, sin):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin

    cos_y, sin_y, cos_x, sin_x = tables
    y, x_ = jnp.split(x, 2, axis=-1)  # (..., N, hd / 2) each
    return jnp.concatenate([rotate(y, cos_y, sin_y), rotate(x_, cos_x, sin_x)], axis=-1)


class Attention(nn.Module):
    """Multi-head self-attention: one biased qkv Linear (q, k and v all biased), softmax(q k^T / sqrt(d)) v, proj.

    DA3's options: `qk_norm` (one LayerNorm over the head width for q, one for k, shared by the
    heads, eps 1e-5) and 2D RoPE (`rope`: the tables of `apply_rope_2d`, after the norms).
    """

    num_heads: int
    dtype_mm: Any = jnp.float32
    qk_norm: bool = False

    @nn.compact
    def __call__(self, x, rope=None):  # (B, N, C)
        dim = x.shape[-1]
        qkv = Dense(3 * dim, dtype=self.dtype_mm, name="qkv")(x)  # (B, N, 3C)
        qkv = qkv.reshape(*x.shape[:-1], 3, self.num_heads, dim // self.num_heads)  # (B, N, 3, heads, hd)
        qkv = jnp.moveaxis(qkv, -4, -2)  # (B, 3, heads, N, hd)
        q, k, v = qkv[..., 0, :, :, :], qkv[..., 1, :, :, :], qkv[..., 2, :, :, :]  # each (B, heads, N, hd)
        if self.qk_norm:
            q, k = layer_norm(1e-5, "q_norm")(q), layer_norm(1e-5, "k_norm")(k)
        if rope is not None:
            q, k = apply_rope_2d(q, rope), apply_rope_2d(k, rope)
        q = q * (q.shape[-1] ** -0.5)
        out = merge_heads(attend(q, k, v, 0.0, dtype_mm=self.dtype_mm))  # (B, N, C)
        return Dense(dim, dtype=self.dtype_mm, name="proj")(out)


class Dinov2Encoder(nn.Module):
    """Images (B, H, W, 3) -> the four hooked blocks' outputs after the final norm, each (B, 1 + h*w, C), cls first.

    With DA3's any-view options the batch holds `views` consecutive pictures of each scene (the
    first is the reference view), global blocks attend across them, and with `cat_token` each
    output is (B, 1 + h*w, 2C): [last local block, normed] for the patches, and token 0 raw (the
    camera token, un-normed, as the original's camera decoder takes it).
    """

    config: Dinov2Config
    dtype_mm: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass (training memory)

    @nn.compact
    def __call__(self, images, views: int = 1, camera_tokens=None):
        """`camera_tokens` (B, C): known cameras (DA3's camera encoder) as each view's token 0 from block alt_start
        on, in place of the learned camera tokens (and no reference view is chosen: the first stays it)."""
        c = self.config
        p = c.patch_size
        grid = patch_grid(images, p, "DINOv2")  # (h, w)
        nh, nw = c.native_grid
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c.embed_dim))
        table = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + nh * nw, c.embed_dim))

        x = Conv(c.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype_mm,
                 name="patch_embed")(images)  # (B, h, w, C)
        x = x.reshape(x.shape[0], -1, c.embed_dim)  # (B, h*w, C), row-major over the grid
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, c.embed_dim)), x], axis=1)
        pos = interpolate_pos_embed(table, c.native_grid, grid, c.interpolate_offset)  # (1, 1 + h*w, C)
        self.sow("intermediates", "pos_embed", pos)
        x = x + pos.astype(x.dtype)  # (B, 1 + h*w, C)
        self.sow("intermediates", "tokens0", x)

        final_norm = layer_norm(c.final_norm_eps, "norm")
        camera = (self.param("camera_token", nn.initializers.normal(1.0), (1, 2, c.embed_dim))
                  if c.alt_start != -1 else None)
        local_rope, global_rope = _rope_for_grid(c, grid) if c.rope_start != -1 else (None, None)
        outputs = []
        local_x = x
        reference = jnp.zeros((x.shape[0] // views,), jnp.int32)  # the reference view of each scene: the first
        for i in range(max(c.hooks) + 1):  # blocks after the last hook do not contribute
            if (camera is not None and i == c.alt_start - 1 and views >= REFERENCE_SELECTION_VIEWS
                    and camera_tokens is None):
                reference = saddle_balanced(x[:, 0].reshape(-1, views, c.embed_dim))  # (B / S,)
                self.sow("intermediates", "reference_view", reference)
            if camera is not None and i == c.alt_start:  # token 0: the reference view's camera token, or the others'
                is_reference = (jnp.arange(x.shape[0]) % views == jnp.repeat(reference, views))[:, None]  # (B, 1)
                tokens = (jnp.where(is_reference, camera[0, 0], camera[0, 1]) if camera_tokens is None
                          else camera_tokens.astype(x.dtype))  # (B, C)
                x = x.at[:, 0].set(tokens)
                # the original writes token 0 in place into the tensor its last local output also is (every block
                # before alt_start is local): a hooked block right at alt_start carries the camera token there too
                local_x = x
                self.sow("intermediates", "cam_token", x[:, 0])
            is_global = c.is_global(i)
            rope = None if c.rope_start == -1 or i < c.rope_start else global_rope if is_global else local_rope
            attention = functools.partial(Attention, c.num_heads, self.dtype_mm,
                                          qk_norm=c.qknorm_start != -1 and i >= c.qknorm_start)
            block = rematerialised(LayerScaleBlock, self.remat)(attention, c.embed_dim, c.mlp_hidden, c.layer_norm_eps,
                                                                self.dtype_mm, ffn=c.ffn, name=f"blocks_{i}")
            if is_global:  # the views of a scene as one sequence
                n = x.shape[1]
                scenes = x.reshape(x.shape[0] // views, views * n, c.embed_dim)  # (B / S, S (1 + h*w), C)
                rope_s = None if rope is None else tuple(jnp.tile(t, (views, 1)) for t in rope)
                x = block(scenes, rope_s).reshape(x.shape)  # (B, 1 + h*w, C)
            else:
                x = block(x, rope)  # (B, 1 + h*w, C)
                local_x = x
            if i in c.hooks:
                self.sow("intermediates", f"block{i}_raw", x)
                y = final_norm(x)  # the shared final norm, per hooked output; the stream stays raw
                k = len(outputs) + 1
                if c.cat_token:  # (B, 1 + h*w, 2C): patches [local, normed], token 0 [local, raw]
                    y = jnp.concatenate([local_x, y], axis=-1)
                    y = y.at[:, 0].set(jnp.concatenate([local_x[:, 0], x[:, 0]], axis=-1))
                self.sow("intermediates", f"cls{k}", y[:, 0])
                self.sow("intermediates", f"feat{k}", y[:, 1:])
                outputs.append(y)
        return outputs


#: DA3 chooses a reference view (`saddle_balanced`) from this many views of a scene on; below, the first view
REFERENCE_SELECTION_VIEWS = 3


def saddle_balanced(tokens):
    """The reference view of each scene from its views' token 0 (scenes, S, C) -> (scenes,): DA3's default rule.

    Per view: its mean cosine similarity to the other views, the token's norm, and the (unbiased)
    variance of the unit token; each min-max normalised over the views (+1e-8); the view whose
    three are nearest 0.5 in sum of distances (the first on a tie). The original reorders the
    views to put the reference first; here it just gets the reference camera token (the views are
    attended to with the same positions, so only the order of sums differs).
    """
    norm = jnp.sqrt(jnp.sum(tokens * tokens, axis=-1))  # (scenes, S)
    unit = tokens / norm[..., None]
    s = tokens.shape[1]
    sim = jnp.einsum("bsc,btc->bst", unit, unit) - jnp.eye(s, dtype=tokens.dtype)  # (scenes, S, S)
    similarity = sim.sum(axis=-1) / (s - 1)
    variance = jnp.var(unit, axis=-1, ddof=1)

    def spread(m):
        lo, hi = m.min(axis=1, keepdims=True), m.max(axis=1, keepdims=True)
        return (m - lo) / (hi - lo + 1e-8)

    score = sum(jnp.abs(spread(m) - 0.5) for m in (similarity, norm, variance))  # (scenes, S)
    return jnp.argmin(score, axis=1).astype(jnp.int32)


def _rope_for_grid(c: Dinov2Config, grid: Pair):
    """The RoPE tables of local blocks (token 0 at (0, 0), patch (r, q) at (r + 1, q + 1)) and of global
    blocks (token 0 at (0, 0), every patch at (1, 1): no position between patches across the views)."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    local = np.stack([np.concatenate([[0], rows + 1]), np.concatenate([[0], cols + 1])], axis=1)  # (1 + h*w, 2)
    flat = np.concatenate([[0], np.ones(h * w, np.int64)])
    half = c.embed_dim // c.num_heads // 2

    def tables(positions):
        cos_y, sin_y = rope_tables(positions[:, 0], half, c.rope_frequency)
        cos_x, sin_x = rope_tables(positions[:, 1], half, c.rope_frequency)
        return tuple(jnp.asarray(t) for t in (cos_y, sin_y, cos_x, sin_x))

    return tables(local), tables(np.stack([flat, flat], axis=1))



# ---------------------------------------------------------------------------------------------
# Presets: Depth Anything V2 (relative; metric Hypersim / Virtual KITTI), V1 and Video Depth Anything

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: (features, out_channels) of the DPT head per encoder size, as the originals' model_configs
_WIDTHS = {"vits": (64, (48, 96, 192, 384)), "vitb": (128, (96, 192, 384, 768)),
           "vitl": (256, (256, 512, 1024, 1024))}


def depth_anything(name: str, encoder: Dinov2Config, features: int, out_channels, *, version: int,
                   max_depth: float = 0.0, native: int = 518) -> DPTConfig:
    """A Depth Anything model: DINOv2 -> DPT neck (cls token ignored) -> head resized to the input.

    Relative models (max_depth 0) end in ReLU (relative inverse depth); metric ones in
    max_depth * sigmoid (metres). Preprocessing as the originals' image2tensor: at least
    native x native keeping the aspect ratio, sides multiples of 14, ImageNet mean/std; the
    output goes back to the picture by bilinear resize, align_corners=True in V2's infer_image,
    False in V1's run.py.
    """
    return DPTConfig(
        name=name, encoder=encoder, reassembly_features=tuple(out_channels), reassemble_factors=(4, 2, 1, 0.5),
        readout="ignore", native_size=(native, native), keep_aspect_ratio=True, fusion_features=features,
        head="depth_anything", head_features=32, depth_activation="sigmoid" if max_depth else "relu",
        max_depth=float(max_depth), resize_rule="lower_bound", resize_multiple=encoder.patch_size,
        input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
        output_resize="bilinear_align_corners" if version == 2 else "bilinear",
    )


def video_depth_anything(name: str, encoder: Dinov2Config, features: int, out_channels, *,
                         metric: bool = False) -> DPTConfig:
    """Video Depth Anything: Depth Anything V2's network plus four temporal modules over up to 32 frames.

    Its metric models are the same network (ReLU head, no sigmoid, no max_depth) trained on metres.
    """
    return depth_anything(name, encoder, features, out_channels, version=2).replace(
        temporal_frames=32, depth_activation="relu_metres" if metric else "relu")


def prompt_depth_anything(name: str, encoder: Dinov2Config, features: int, out_channels) -> DPTConfig:
    """A Prompt Depth Anything model: Depth Anything V2's network with a depth prompt in every fusion block.

    The head's sigmoid is mapped onto the prompt's [min, max] (metres). Preprocessing as the
    original's load_image: a picture whose larger side exceeds 1008 shrinks to it by OpenCV's area
    average, each side floored to a multiple of 14; smaller pictures keep their size. The original
    returns depth at the network's size; dpt-jax resizes it back to the picture bilinearly
    (align_corners=False), the identity when the picture needed no resize.
    """
    return depth_anything(name, encoder, features, out_channels, version=2, native=1008).replace(
        prompt=True, depth_activation="sigmoid", max_depth=0.0, resize_rule="at_most", input_resize="area",
        output_resize="bilinear")


def distill_any_depth(name: str, encoder: Dinov2Config, features: int, out_channels) -> DPTConfig:
    """A Distill-Any-Depth model: Depth Anything V2's relative network, run as its infer.py / app.py run it.

    Input 700 x 700 whatever the picture's aspect ratio (Resize(700, 700, keep_aspect_ratio=False,
    lower_bound, multiple of 14, cubic)); the result goes back to the picture bilinearly
    (align_corners=False, as their cv2.INTER_LINEAR).
    """
    return depth_anything(name, encoder, features, out_channels, version=2, native=700).replace(
        keep_aspect_ratio=False, output_resize="bilinear")


_V2 = {"vits": DA2_VITS, "vitb": DA2_VITB, "vitl": DA2_VITL}
_V1 = {"vits": DA1_VITS, "vitb": DA1_VITB, "vitl": DA1_VITL}
PRESETS = (
    tuple(depth_anything(f"da2_{s}", _V2[s], *_WIDTHS[s], version=2) for s in _V2)
    + tuple(depth_anything(f"da2_metric_{data}_{s}", _V2[s], *_WIDTHS[s], version=2, max_depth=depth)
            for data, depth in (("hypersim", 20.0), ("vkitti", 80.0)) for s in _V2)
    + tuple(depth_anything(f"da1_{s}", _V1[s], *_WIDTHS[s], version=1) for s in _V1)
    + tuple(video_depth_anything(f"vda{kind}_{s}", _V2[s], *_WIDTHS[s], metric=bool(kind))
            for kind in ("", "_metric") for s in _V2)
    + tuple(prompt_depth_anything(name, _V2[s], *_WIDTHS[s])
            for name, s in (("pda_vits", "vits"), ("pda_vitl", "vitl"), ("pda_vits_transparent", "vits")))
    + tuple(distill_any_depth(name, _V2[s], *_WIDTHS[s])
            for name, s in (("dad_vits", "vits"), ("dad_vitb", "vitb"), ("dad_vitl", "vitl"),
                            ("dad_da2_teacher_vitl", "vitl")))
)

#: The reference minis (tests/fixtures/depth_anything): the real wiring at toy sizes, pos table 7x7.
_MINI_ENCODER = Dinov2Config(embed_dim=32, depth=8, num_heads=2, mlp_hidden=128, hooks=(1, 2, 4, 7), native_grid=(7, 7))
MINIS = (
    depth_anything("mini_da2", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2),
    depth_anything("mini_da2_metric", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2, max_depth=20.0),
    # tests/fixtures/video_depth_anything: temporal widths are multiples of the GroupNorm's 32 groups
    video_depth_anything("mini_vda", _MINI_ENCODER, 32, (8, 12, 64, 32)),
    video_depth_anything("mini_vda_metric", _MINI_ENCODER, 32, (8, 12, 64, 32), metric=True),
    prompt_depth_anything("mini_pda", _MINI_ENCODER, 16, (8, 12, 16, 24)),  # tests/fixtures/prompt_depth_anything
)


# ---------------------------------------------------------------------------------------------
# Depth Anything 3, monocular and metric (DA3MONO-LARGE, DA3METRIC-LARGE): the same DINOv2-L but
# for the final norm (a plain LayerNorm, eps 1e-5), the same DPT neck, a head ending in exp (depth,
# not inverse depth) with a sky branch, and the original API's preprocessing (the longer side to
# 504, two OpenCV resizes, sides to the nearest multiple of 14). The two files hold the same keys.

DA3_VITL = Dinov2Config(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096, hooks=(4, 11, 17, 23),
                        final_norm_eps=1e-5)
#: Depth Anything 3's metric rule: metres = focal (pixels, at the network input) * output / 300
DA3_FOCAL_METRIC_DIVISOR = 300.0


def depth_anything_3(name: str, encoder: Dinov2Config, features: int, out_channels, *, metric: bool,
                     native: int = 504) -> DPTConfig:
    """A Depth Anything 3 monocular model: DINOv2 -> DPT neck (cls token ignored) -> exp head + sky branch.

    Relative models give depth of unknown scale; the metric one depth that becomes metres as
    focal * output / 300 (`DPTConfig.focal_metric_divisor`). The output goes back to the
    picture's size bilinearly (the original API returns it at the network input's size).
    """
    return DPTConfig(
        name=name, encoder=encoder, reassembly_features=tuple(out_channels), reassemble_factors=(4, 2, 1, 0.5),
        readout="ignore", native_size=(native, native), keep_aspect_ratio=True, fusion_features=features,
        head="depth_anything", head_features=32, depth_activation="exp", sky_head=True,
        focal_metric_divisor=DA3_FOCAL_METRIC_DIVISOR if metric else 0.0, resize_rule="upper_bound",
        resize_multiple=encoder.patch_size, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
        output_resize="bilinear",
    )


DA3_PRESETS = (
    depth_anything_3("da3_mono_large", DA3_VITL, *_WIDTHS["vitl"], metric=False),
    depth_anything_3("da3_metric_large", DA3_VITL, *_WIDTHS["vitl"], metric=True),
)
#: The reference minis (tests/fixtures/depth_anything_3): DA3MONO/METRIC-LARGE's wiring at toy sizes.
_DA3_MINI_ENCODER = Dinov2Config(embed_dim=32, depth=8, num_heads=2, mlp_hidden=128, hooks=(1, 3, 5, 7),
                                 native_grid=(7, 7), final_norm_eps=1e-5)
DA3_MINIS = (
    depth_anything_3("mini_da3_mono", _DA3_MINI_ENCODER, 16, (8, 12, 16, 24), metric=False),
    depth_anything_3("mini_da3_metric", _DA3_MINI_ENCODER, 16, (8, 12, 16, 24), metric=True),
)
PRESETS = PRESETS + DA3_PRESETS
MINIS = MINIS + DA3_MINIS


# ---------------------------------------------------------------------------------------------
# Depth Anything 3 any-view (DA3-SMALL, DA3-BASE, DA3-LARGE): alternating per-view / cross-view
# attention, QK-norm and 2D RoPE from the same block on, a camera token, [local, normed] outputs,
# the DualDPT head (depth, confidence, rays), the camera decoder and encoder (dualdpt.py). DA3-GIANT's
# ViT-g (1536 wide, 40 blocks, 24 heads) has a SwiGLU feed-forward.


def swiglu_hidden(embed_dim: int, mlp_ratio: int = 4) -> int:
    """DINOv2's SwiGLU hidden width: 2/3 of the MLP's, rounded up to a multiple of 8 (4096 for ViT-g's 1536)."""
    return (int(embed_dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


def _any_view_encoder(embed_dim, depth, num_heads, hooks, start, native_grid=(37, 37), ffn="mlp") -> Dinov2Config:
    hidden = swiglu_hidden(embed_dim) if ffn == "swiglu" else 4 * embed_dim
    return Dinov2Config(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_hidden=hidden, hooks=hooks,
                        native_grid=native_grid, final_norm_eps=1e-5, alt_start=start, qknorm_start=start,
                        rope_start=start, cat_token=True, ffn=ffn)


def depth_anything_3_any_view(name: str, encoder: Dinov2Config, features: int, out_channels) -> DPTConfig:
    """A Depth Anything 3 any-view model, run on one picture: relative depth (exp), its confidence and the camera."""
    return DPTConfig(
        name=name, encoder=encoder, reassembly_features=tuple(out_channels), reassemble_factors=(4, 2, 1, 0.5),
        readout="ignore", native_size=(504, 504), keep_aspect_ratio=True, fusion_features=features,
        head="dualdpt", head_features=32, depth_activation="exp", resize_rule="upper_bound",
        resize_multiple=encoder.patch_size, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD,
        output_resize="bilinear",
    )


DA3_ANY_VIEW_PRESETS = (
    depth_anything_3_any_view("da3_small", _any_view_encoder(384, 12, 6, (5, 7, 9, 11), 4), *_WIDTHS["vits"]),
    depth_anything_3_any_view("da3_base", _any_view_encoder(768, 12, 12, (5, 7, 9, 11), 4), *_WIDTHS["vitb"]),
    depth_anything_3_any_view("da3_large", _any_view_encoder(1024, 24, 16, (11, 15, 19, 23), 8), *_WIDTHS["vitl"]),
    depth_anything_3_any_view("da3_giant", _any_view_encoder(1536, 40, 24, (19, 27, 33, 39), 13, ffn="swiglu"),
                              *_WIDTHS["vitl"]),
)
DA3_ANY_VIEW_MINIS = (
    depth_anything_3_any_view("mini_da3_anyview", _any_view_encoder(32, 12, 2, (5, 7, 9, 11), 4, (7, 7)), 16,
                              (8, 12, 16, 24)),
    # DA3-GIANT's wiring: SwiGLU, an odd alt_start (the first block with the camera token is a global one), a
    # hooked local block (6)
    depth_anything_3_any_view("mini_da3_giant", _any_view_encoder(32, 8, 2, (3, 5, 6, 7), 3, (7, 7), ffn="swiglu"),
                              16, (8, 12, 16, 24)),
)
PRESETS = PRESETS + DA3_ANY_VIEW_PRESETS
MINIS = MINIS + DA3_ANY_VIEW_MINIS
