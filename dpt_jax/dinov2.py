"""DINOv2 ViT encoder of Depth Anything (V1 and V2): 14 px patches and a learned absolute position table.

Patch embedding (14x14 conv, stride 14) -> prepend the cls token -> add the position table
(resized to the patch grid with DINOv2's bicubic + 0.1 offset rule) -> pre-norm blocks with
layer scale, x + g1 * attn(LN(x)), x + g2 * mlp(LN(x)). The outputs of four chosen blocks,
each passed through the shared final LayerNorm, feed the DPT neck; the residual stream
itself is never normed.

Intermediates are sown in the "intermediates" collection under the reference fixtures' names:
pos_embed, tokens0, block{i}_raw (i = block index), feat{k} / cls{k} (k = 1..4, normed).

The module ends with the "dinov2" EncoderFamily: the twelve Depth Anything releases as DPTConfig
presets (V2 relative, V2 metric Hypersim / Virtual KITTI, V1), the two reference minis, and the
checkpoint reading. Their files hold the same keys, so the variant is a choice (`detect_config`):
given, or read off an official release file name.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from .config import MAX_SIDE, MAX_WIDTH, DPTConfig, bounded, checked_fields, require
from .convert import depth_anything as da_keys
from .errors import ConversionError
from .convert.keys import Skip
from .family import EncoderFamily, vit_encoder_flops
from .layers import LayerScaleBlock, attend, layer_norm, merge_heads
from .resize import _keys_far, _keys_near, resample_axis

Pair = tuple[int, int]
_F32 = np.float32


@dataclass(frozen=True)
class Dinov2Config:
    """DINOv2 ViT as built by Depth Anything (no registers, MLP feed-forward, LayerScale)."""

    embed_dim: int = bounded(1, MAX_WIDTH)
    depth: int = bounded(1, 64)
    num_heads: int = bounded(1, 256)
    mlp_hidden: int = bounded(1, 4 * MAX_WIDTH)
    hooks: tuple[int, int, int, int] = bounded(0, 63)  # 0-based blocks whose (normed) outputs feed the four DPT stages
    native_grid: Pair = bounded(1, MAX_SIDE // 14, default=(37, 37))  # grid of the stored position table (518 / 14)
    patch_size: int = bounded(1, 64, default=14)
    layer_norm_eps: float = bounded(1e-12, 1e-2, default=1e-6)
    interpolate_offset: float = bounded(0.0, 1.0, default=0.1)  # DINOv2 resizes the table by (g + offset) / N, not to g

    def __post_init__(self):
        checked_fields(self)
        require(self.embed_dim % self.num_heads == 0, "embed_dim must be a multiple of num_heads")
        require(list(self.hooks) == sorted(set(self.hooks)) and max(self.hooks) < self.depth,
                "hooks must be increasing block indices below depth")


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
            x = LayerScaleBlock(functools.partial(Attention, c.num_heads), c.embed_dim, c.mlp_hidden,
                                c.layer_norm_eps, name=f"blocks_{i}")(x)  # (B, 1 + h*w, C)
            if i in c.hooks:
                self.sow("intermediates", f"block{i}_raw", x)
                y = final_norm(x)  # the shared final norm, per hooked output; the stream stays raw
                k = len(outputs) + 1
                self.sow("intermediates", f"cls{k}", y[:, 0])
                self.sow("intermediates", f"feat{k}", y[:, 1:])
                outputs.append(y)
        return outputs



# ---------------------------------------------------------------------------------------------
# Presets: Depth Anything V2 (relative; metric Hypersim / Virtual KITTI) and V1, as DPTConfig

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


_V2 = {"vits": DA2_VITS, "vitb": DA2_VITB, "vitl": DA2_VITL}
_V1 = {"vits": DA1_VITS, "vitb": DA1_VITB, "vitl": DA1_VITL}
PRESETS = (
    tuple(depth_anything(f"da2_{s}", _V2[s], *_WIDTHS[s], version=2) for s in _V2)
    + tuple(depth_anything(f"da2_metric_{data}_{s}", _V2[s], *_WIDTHS[s], version=2, max_depth=depth)
            for data, depth in (("hypersim", 20.0), ("vkitti", 80.0)) for s in _V2)
    + tuple(depth_anything(f"da1_{s}", _V1[s], *_WIDTHS[s], version=1) for s in _V1)
)

#: The reference minis (tests/fixtures/depth_anything): the real wiring at toy sizes, pos table 7x7.
_MINI_ENCODER = Dinov2Config(embed_dim=32, depth=8, num_heads=2, mlp_hidden=128, hooks=(1, 2, 4, 7), native_grid=(7, 7))
MINIS = (
    depth_anything("mini_da2", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2),
    depth_anything("mini_da2_metric", _MINI_ENCODER, 16, (8, 12, 16, 24), version=2, max_depth=20.0),
)

#: The official release files, by name: the only way a file tells its variant (its keys cannot).
RELEASE_FILES = {
    **{f"depth_anything_v2_{s}.pth": f"da2_{s}" for s in _V2},
    **{f"depth_anything_v2_metric_{d}_{s}.pth": f"da2_metric_{d}_{s}" for d in ("hypersim", "vkitti") for s in _V2},
    **{f"depth_anything_{s}14.pth": f"da1_{s}" for s in _V1},
}


def describe_variant(config: DPTConfig) -> str:
    """"V2, metric depth in metres (max 20 m)" and the like."""
    version = "V1" if config.output_resize == "bilinear" else "V2"
    if config.is_metric:
        return f"{version}, metric depth in metres (max {config.max_depth:g} m)"
    return f"{version}, relative inverse depth"


# ---------------------------------------------------------------------------------------------
# Depth Anything checkpoints: recognition, configuration (the variant is a choice), keys


def recognises(state) -> bool:
    return "pretrained.blocks.0.ls1.gamma" in state and "depth_head.projects.0.weight" in state


def _shape(state, key, path) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(path, f"not a Depth Anything checkpoint: key {key!r} is missing")
    return tuple(state[key].shape)


def _architecture_of_keys(state, path) -> dict:
    """What the keys and shapes of a Depth Anything state dict say (everything but the heads and the variant)."""
    shape = lambda key: _shape(state, key, path)  # noqa: E731
    rx = re.compile(r"pretrained\.blocks\.(\d+)\..*")
    tokens = shape("pretrained.pos_embed")[1] - 1
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ConversionError(path, f"pretrained.pos_embed holds {tokens} patch positions, not a square grid")
    return {
        "embed_dim": shape("pretrained.cls_token")[-1],
        "depth": len({m.group(1) for k in state if (m := rx.fullmatch(k))}),
        "mlp_hidden": shape("pretrained.blocks.0.mlp.fc1.weight")[0],
        "patch_size": shape("pretrained.patch_embed.proj.weight")[-1],
        "native_grid": (side, side),
        "reassembly_features": tuple(shape(f"depth_head.projects.{i}.weight")[0] for i in range(4)),
        "fusion_features": shape("depth_head.scratch.layer1_rn.weight")[0],
        "head_features": shape("depth_head.scratch.output_conv2.0.weight")[0],
    }


def _architecture_of_config(c: DPTConfig) -> dict:
    e = c.encoder
    return {"embed_dim": e.embed_dim, "depth": e.depth, "mlp_hidden": e.mlp_hidden, "patch_size": e.patch_size,
            "native_grid": e.native_grid, "reassembly_features": c.reassembly_features,
            "fusion_features": c.fusion_features, "head_features": c.head_features}


VARIANTS = {c.name: c for c in PRESETS + MINIS}


def detect_config(state, path, *, variant: str | None = None, max_depth: float | None = None,
                  hooks: tuple[int, ...] | None = None, metric: bool | None = None, **options) -> DPTConfig:
    """The configuration of a Depth Anything checkpoint: its `variant`, checked against its keys and shapes.

    V1 and V2, relative and metric, Hypersim and Virtual KITTI files hold the same keys, so the
    variant comes from the argument, else from what another file says (`hooks`, `metric`: a
    Hugging Face config.json), else from an official release file name (RELEASE_FILES);
    otherwise the error lists the variants that fit the keys. `max_depth` (metres) overrides a
    metric variant's.
    """
    arch = _architecture_of_keys(state, path)
    fitting = [c for c in VARIANTS.values() if _architecture_of_config(c) == arch]
    if variant is None and (hooks is not None or metric is not None):
        said = [c for c in fitting if (hooks is None or c.encoder.hooks == tuple(hooks))
                and (metric is None or c.is_metric == metric)]
        exact = [c for c in said if max_depth is None or not c.is_metric or c.max_depth == max_depth]
        if exact or said:
            variant = (exact or said)[0].name
    if variant is None:
        variant = RELEASE_FILES.get(os.path.basename(str(path)))
    if variant is None:
        what = ", ".join(f"{k} {v}" for k, v in arch.items())
        if not fitting:
            raise ConversionError(path, f"a Depth Anything checkpoint of no released architecture ({what}): "
                                  "dpt-jax knows no variant for it")
        choices = "\n    ".join(f"{c.name}: {describe_variant(c)}" for c in fitting)
        raise ConversionError(path, (
            "a Depth Anything checkpoint whose keys cannot tell V1 from V2, relative from metric, or "
            "Hypersim (indoor) from Virtual KITTI (outdoor), and whose file name is not an official release "
            "name. Choose its variant: dpt_jax.load(path, variant=...) or --variant on the command line; "
            f"the variants with this architecture:\n    {choices}"))
    if variant not in VARIANTS:
        raise ConversionError(path, f"{variant!r} is not a Depth Anything variant; known: {', '.join(VARIANTS)}")
    config = VARIANTS[variant]
    want = _architecture_of_config(config)
    if want != arch:
        diffs = "; ".join(f"{k} {arch[k]} (the variant has {want[k]})" for k in arch if arch[k] != want[k])
        fits = f"; variants that fit: {', '.join(c.name for c in fitting)}" if fitting else ""
        raise ConversionError(path, f"does not hold a {variant} model: its keys say {diffs}{fits}")
    if max_depth is not None:
        if not config.is_metric:
            raise ConversionError(path, f"max_depth applies to metric models; {variant} is relative")
        config = config.replace(max_depth=float(max_depth))
    return config


def key_table(config: DPTConfig) -> list:
    return da_keys.key_table(config)


def skipped(config: DPTConfig) -> list[Skip]:
    return da_keys.skipped(config)


FAMILY = EncoderFamily(
    name="dinov2",
    config_class=Dinov2Config,
    encoder=Dinov2Encoder,
    outputs_tokens=True,
    presets=PRESETS,
    minis=MINIS,
    input_multiple=lambda c: c.patch_size,
    recognises=recognises,
    detect_config=detect_config,
    key_table=key_table,
    skipped=skipped,
    encoder_flops=vit_encoder_flops,
    options={
        "variant": "Depth Anything: which release (da2_vits, da2_metric_hypersim_vitl, da1_vitb, ...); the keys "
                   "cannot tell V1 from V2 nor relative from metric",
        "max_depth": "Depth Anything metric models: the largest depth in metres (not stored in checkpoints)",
    },
)
