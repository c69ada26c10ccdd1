"""The depth prompt inside the network (Prompt Depth Anything): its normalisation and each fusion block's branch.

A prompted model (`DPTConfig.prompt`) takes, besides the images, a coarse metric depth map per
image (an iPhone LiDAR map, any sparse or low-resolution depth; zeros are ordinary values, as in
the original). The prompt is min/max-normalised per sample; every fusion block resizes the
normalised prompt from its own resolution to the block's input resolution (bilinear,
align_corners=False, no antialias) and adds conv3x3 -> ReLU -> conv3x3 -> ReLU -> conv3x3 of it to
its second residual unit's output; the head's sigmoid is mapped back onto [min, max].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from .layers import Conv
from .resize import resize_bilinear


def prompt_range(prompt):  # (B, h, w, 1)
    """(normalised prompt, min, max): (p - min) / (max - min) with min and max per sample, in float32.

    As the original's torch.quantile(p, 0.) / quantile(p, 1.), which are the plain min and max.
    A constant prompt divides by zero (NaN depth, as the original); callers check prompts first.
    """
    p = prompt.astype(jnp.float32)
    lo = jnp.min(p, axis=(1, 2, 3), keepdims=True)  # (B, 1, 1, 1)
    hi = jnp.max(p, axis=(1, 2, 3), keepdims=True)  # (B, 1, 1, 1)
    return (p - lo) / (hi - lo), lo, hi  # (B, h, w, 1), (B, 1, 1, 1), (B, 1, 1, 1)


def to_prompt_range(unit, lo, hi):  # (B, H, W), (B, 1, 1, 1), (B, 1, 1, 1)
    """The head's output in (0, 1) mapped onto the prompt's [min, max]: metres."""
    return unit * (hi - lo)[..., 0] + lo[..., 0]  # (B, H, W)


class PromptBranch(nn.Module):
    """One fusion block's prompt branch: resize the normalised prompt to the block, then three 3x3 convs.

    The original's `resConfUnit_depth`: Conv(1 -> F) -> ReLU -> Conv(F -> F) -> ReLU -> Conv(F -> F),
    no residual; its last conv starts at zero in training, the released weights are trained.
    """

    features: int
    dtype_mm: Any = jnp.float32

    @nn.compact
    def __call__(self, prompt, size):  # (B, h, w, 1) normalised
        pad = ((1, 1), (1, 1))
        p = resize_bilinear(prompt, tuple(size), align_corners=False)  # (B, H, W, 1)
        self.sow("intermediates", "prompt_in", p)
        y = Conv(self.features, (3, 3), padding=pad, dtype=self.dtype_mm, name="conv1")(p)  # (B, H, W, F)
        self.sow("intermediates", "prompt_conv1", y)
        y = Conv(self.features, (3, 3), padding=pad, dtype=self.dtype_mm, name="conv2")(nn.relu(y))  # (B, H, W, F)
        self.sow("intermediates", "prompt_conv2", y)
        y = Conv(self.features, (3, 3), padding=pad, dtype=self.dtype_mm, name="conv3")(nn.relu(y))  # (B, H, W, F)
        self.sow("intermediates", "prompt_branch", y)
        return y
