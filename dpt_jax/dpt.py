"""The DPT depth model: encoder -> reassemble -> fusion -> head.

Follows figure 1 of "Vision Transformers for Dense Prediction" (Ranftl et al., 2021) as
implemented by MiDaS v3.1. Everything is NHWC. Module and parameter names say what a thing
is; the converter (`dpt_jax.convert.midas`) maps the original PyTorch names onto them.

Intermediate results are recorded with `sow` in the "intermediates" collection under the
names the reference fixtures use (hook1..4, reassemble1..4, rn1..4, fusion4..1, head_preact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
from flax import traverse_util

from .beit import BeitEncoder
from .config import DPTConfig
from .layers import gelu
from .resize import resize_bilinear
from .swinv2 import SwinV2Encoder


class ConvTransposeNonOverlapping(nn.Module):
    """ConvTranspose2d with kernel == stride and no padding: every input pixel becomes a k x k block.

    Written as one einsum, which is exact and cheaper than a general transposed convolution.
    `kernel` is (k, k, in, out): PyTorch's (in, out, k, k) weight transposed.
    """

    features: int
    factor: int

    @nn.compact
    def __call__(self, x):  # (B, h, w, C)
        k = self.factor
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = jnp.einsum("bhwc,klco->bhkwlo", x, kernel.astype(x.dtype))
        b, h, _, w, _, o = y.shape
        return y.reshape(b, h * k, w * k, o) + bias.astype(x.dtype)  # (B, h*k, w*k, out)


class ReadoutProject(nn.Module):
    """BEiT readout "project": each patch token is concatenated with the cls token, then Linear(2C -> C) + GELU."""

    @nn.compact
    def __call__(self, tokens):  # (B, 1 + h*w, C)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        features = jnp.concatenate([patches, jnp.broadcast_to(cls, patches.shape)], axis=-1)  # (B, h*w, 2C)
        return gelu(nn.Dense(tokens.shape[-1], name="dense")(features))  # (B, h*w, C)


class Reassemble(nn.Module):
    """Turns the four encoder outputs into four image-like maps of `fusion_features` channels.

    BEiT: readout projection, tokens -> (h, w) map, 1x1 conv, then resample by 4, 2, 1 or 1/2.
    SwinV2: the encoder already gives maps at four scales; nothing but the projection is left.
    Each map ends with a 3x3 conv without bias to the shared fusion width (`scratch.layerX_rn`).
    """

    config: DPTConfig

    @nn.compact
    def __call__(self, features, grid):
        c = self.config
        outputs = []
        for i, x in enumerate(features, start=1):
            if c.family == "beit":
                x = ReadoutProject(name=f"readout_{i}")(x)  # (B, h*w, C)
                x = x.reshape(x.shape[0], *grid, x.shape[-1])  # (B, h, w, C)
                d = c.reassembly_features[i - 1]
                x = nn.Conv(d, (1, 1), name=f"project_{i}")(x)
                if i == 1:
                    x = ConvTransposeNonOverlapping(d, 4, name=f"resample_{i}")(x)  # (B, 4h, 4w, d)
                elif i == 2:
                    x = ConvTransposeNonOverlapping(d, 2, name=f"resample_{i}")(x)  # (B, 2h, 2w, d)
                elif i == 4:
                    x = nn.Conv(d, (3, 3), strides=2, padding=((1, 1), (1, 1)), name=f"resample_{i}")(x)
                    # (B, ceil(h/2), ceil(w/2), d)
            self.sow("intermediates", f"reassemble{i}", x)
            x = nn.Conv(c.fusion_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f"to_fusion_{i}")(x)
            self.sow("intermediates", f"rn{i}", x)
            outputs.append(x)  # (B, h_i, w_i, F)
        return outputs


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))): RefineNet's residual unit, no batch norm."""

    @nn.compact
    def __call__(self, x):
        f = x.shape[-1]
        y = nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(nn.relu(x))
        y = nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(nn.relu(y))
        return x + y


class FusionBlock(nn.Module):
    """(x + RCU(skip)) -> RCU -> bilinear resize (align_corners=True) -> 1x1 conv.

    The original resizes first. A 1x1 conv and a bilinear resize commute (one mixes channels, the
    other pixels, and the interpolation weights sum to 1, so the bias passes through unchanged),
    so the conv runs before the resize here, on 4x fewer pixels; only float rounding differs.
    """

    @nn.compact
    def __call__(self, x, skip, size):
        if skip is not None:
            x = x + ResidualConvUnit(name="rcu1")(skip)
        x = ResidualConvUnit(name="rcu2")(x)
        x = nn.Conv(x.shape[-1], (1, 1), name="out_conv")(x)
        return resize_bilinear(x, size, align_corners=True)


class Fusion(nn.Module):
    """Fuses the four maps from coarse to fine; each block resizes to the next finer map's exact size."""

    @nn.compact
    def __call__(self, maps):
        x = None
        for i in (4, 3, 2, 1):
            skip = maps[i - 1]
            if x is None:  # the deepest block has no input from a previous block: its own map is the input
                x, skip = skip, None
            size = maps[i - 2].shape[1:3] if i > 1 else (2 * skip.shape[1], 2 * skip.shape[2])
            x = FusionBlock(name=f"block_{i}")(x, skip, size)
            self.sow("intermediates", f"fusion{i}", x)
        return x  # (B, 2 h_1, 2 w_1, F)


class DepthHead(nn.Module):
    """3x3 conv (F -> F/2) -> bilinear x2 -> 3x3 conv (-> 32) -> ReLU -> 1x1 conv (-> 1) -> ReLU."""

    features: int
    hidden: int

    @nn.compact
    def __call__(self, x):  # (B, h, w, F)
        x = nn.Conv(self.features // 2, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
        x = nn.relu(nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x))
        x = nn.Conv(1, (1, 1), name="conv3")(x)  # (B, 2h, 2w, 1)
        self.sow("intermediates", "head_preact", x)
        return nn.relu(x)[..., 0]  # (B, 2h, 2w): relative inverse depth


class DPT(nn.Module):
    """The whole model: normalized NHWC images (B, H, W, 3) -> relative inverse depth (B, H, W)."""

    config: DPTConfig

    @nn.compact
    def __call__(self, images):
        c = self.config
        if c.family == "beit":
            features = BeitEncoder(c.encoder, name="encoder")(images)  # 4 x (B, 1 + h*w, C)
            grid = (images.shape[1] // c.encoder.patch_size, images.shape[2] // c.encoder.patch_size)
        else:
            features = SwinV2Encoder(c.encoder, name="encoder")(images)  # 4 x (B, h_i, w_i, C_i)
            grid = None
        for i, f in enumerate(features, start=1):
            self.sow("intermediates", f"hook{i}", f)
        maps = Reassemble(c, name="reassemble")(features, grid)  # 4 x (B, h_i, w_i, F), h_i = 4h, 2h, h, h/2
        fused = Fusion(name="fusion")(maps)  # (B, 8h, 8w, F)
        return DepthHead(c.fusion_features, c.head_features, name="head")(fused)  # (B, 16h, 16w)


def param_shapes(config: DPTConfig) -> dict[str, tuple[int, ...]]:
    """{"/"-joined path: shape} of every parameter of the model, without allocating any."""
    h, w = config.native_size
    abstract = jax.eval_shape(DPT(config).init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3), jnp.float32))
    flat = traverse_util.flatten_dict(abstract["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}
