"""The SwinV2 encoder: against the original MiDaS/timm 0.6 at the native size, and its own rule at other sizes.

Native size: the four hooks of mini_swin2 and mini_swin2_pw match the fixtures, the shift masks
equal the checkpoints' `attn_mask` buffers, and a wrong pretrained window is caught.
Other sizes (no original to compare with): the window rule table, a whole block against a
direct NumPy formulation of the rule (no padding, rolling or partitioning: every token pair is
tested for "same window" on the rolled, padded grid), padding that changes nothing where it
should change nothing, finite outputs of the right shapes, and no jump when the size changes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402

from dpt_jax.checkpoint import convert_state_dict  # noqa: E402
from dpt_jax.convert.files import read_state_dict  # noqa: E402
from dpt_jax.registry import detect_config  # noqa: E402
from dpt_jax.swinv2 import (  # noqa: E402
    SwinV2Block,
    SwinV2Config,
    SwinV2Encoder,
    WindowLayout,
    position_divisor,
    shift_window_mask,
    window_layout,
)
from helpers import FIXTURES, rel_err  # noqa: E402

TOL = 2e-3  # reference README: SwinV2 minis within 2e-3 x max|ref|, each array against its own max
PRETRAINED = {"mini_swin2": (0, 0, 0, 0), "mini_swin2_pw": (4, 4, 4, 2)}  # not stored in checkpoints


# ---------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=None)
def load(name: str):
    """(config, encoder params) of a fixture, through the converter."""
    state = read_state_dict(FIXTURES / f"{name}.safetensors")
    config = detect_config(state, pretrained_window_sizes=PRETRAINED[name])
    params = convert_state_dict(state, config).params
    return config, params["encoder"]


# XLA's default backend optimisation roughly doubles the compile time of these small programs
# (~3 s -> ~1.5 s each on 2 cores) and buys nothing at this size. The comparisons with the
# original use the default options, as users get them; the tests of our own rule use these.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def encoder_fn(encoder_config: SwinV2Config, window_rule=window_layout, fast_compile=True):
    """One jitted encoder per configuration: same config and shapes share a compilation."""
    module = SwinV2Encoder(encoder_config, window_rule=window_rule)
    options = FAST_COMPILE if fast_compile else None
    return jax.jit(lambda params, images: module.apply({"params": params}, images), compiler_options=options)


def encode(config, params, images, window_rule=window_layout, fast_compile=True):
    fn = encoder_fn(config.encoder, window_rule, fast_compile)
    return [np.asarray(h) for h in fn(params, np.asarray(images, np.float32))]


def reference(name):
    return np.load(FIXTURES / f"{name}.npz")


def native_input(name):
    return np.ascontiguousarray(reference(name)["native__input"].transpose(0, 2, 3, 1))  # NCHW -> NHWC


def as_tokens(x):
    return x.reshape(x.shape[0], -1, x.shape[-1])  # (B, h, w, C) -> (B, h*w, C), row-major like the fixtures


# ---------------------------------------------------------------------------------------------
# Native size: the original


@pytest.mark.parametrize("name", ["mini_swin2", "mini_swin2_pw"])
def test_detected_config(name):
    config, _ = load(name)
    e = config.encoder
    assert (e.window_size, e.depths, e.native_size) == (8, (2, 2, 2, 2), (128, 128))
    assert e.pretrained_window_sizes == ((0, 0, 0, 0) if name == "mini_swin2" else (4, 4, 4, 2))
    assert e.num_heads == ((2, 4, 8, 16) if name == "mini_swin2" else (2, 2, 4, 4))


@pytest.mark.parametrize("name", ["mini_swin2", "mini_swin2_pw"])
def test_hooks_match_original(name):
    config, params = load(name)
    ref = reference(name)
    hooks = encode(config, params, native_input(name), fast_compile=False)
    spreads = json.loads((FIXTURES / f"{name}.json").read_text())["observed_differences"]["native"]
    errors = []
    for i, hook in enumerate(hooks, start=1):
        err = rel_err(as_tokens(hook), ref[f"native__hook{i}"])
        torch_fp64 = spreads[f"hook{i}_fp32_vs_fp64"]["max_abs_over_max_ref"]
        print(f"{name} hook{i}: ours vs torch fp32 {err:.2e}   (torch fp32 vs fp64: {torch_fp64:.2e})")
        errors.append(err)
    assert max(errors) < TOL, errors


def test_wrong_pretrained_window_is_caught():
    # The fixture exists to catch a wrong pretrained window (not stored in checkpoints).
    config, params = load("mini_swin2_pw")
    config = config.replace(encoder=dataclasses.replace(config.encoder, pretrained_window_sizes=(0, 0, 0, 0)))
    ref = reference("mini_swin2_pw")
    hooks = encode(config, params, native_input("mini_swin2_pw"))
    errors = [rel_err(as_tokens(h), ref[f"native__hook{i}"]) for i, h in enumerate(hooks, start=1)]
    print("mini_swin2_pw with pretrained windows 0:", ", ".join(f"{e:.2e}" for e in errors))
    assert min(errors) > 50 * TOL  # measured: 0.5-0.9 of each hook's max


@pytest.mark.parametrize("name", ["mini_swin2", "mini_swin2_pw"])
@pytest.mark.parametrize("stage, grid", [(0, (32, 32)), (1, (16, 16))])
def test_shift_mask_equals_checkpoint_buffer(name, stage, grid):
    buffer = read_state_dict(FIXTURES / f"{name}.safetensors")[f"pretrained.model.layers.{stage}.blocks.1.attn_mask"]
    layout = window_layout(grid, 8)
    mask = shift_window_mask(grid, layout.window, layout.shift)
    assert mask.dtype == np.float32 and mask.shape == tuple(buffer.shape)
    np.testing.assert_array_equal(mask, buffer.read())


def test_shift_mask_regions():
    # No shift: nothing masked. Shift on one axis: the wrapped columns of the last window column only.
    assert not shift_window_mask((16, 16), (8, 8), (0, 0)).any()
    mask = shift_window_mask((8, 16), (8, 8), (0, 4)).reshape(1, 2, 8, 8, 8, 8)  # window, then (row, col) x2
    assert not mask[0, 0].any()
    last = mask[0, 1]
    wrapped = np.arange(8) >= 4
    expected = np.where(wrapped[None, :, None, None] != wrapped[None, None, None, :], -100.0, 0.0)
    np.testing.assert_array_equal(last, np.broadcast_to(expected, last.shape))


# ---------------------------------------------------------------------------------------------
# The window rule


RULE_TABLE = [
    # grid, window_size -> window, shift, padded
    # native: the original's stage windows and shifts (minis, swin2_tiny_256, swin2_base/large_384)
    ((32, 32), 8, (8, 8), (4, 4), (32, 32)),
    ((16, 16), 8, (8, 8), (4, 4), (16, 16)),
    ((8, 8), 8, (8, 8), (0, 0), (8, 8)),
    ((4, 4), 8, (4, 4), (0, 0), (4, 4)),
    ((64, 64), 16, (16, 16), (8, 8), (64, 64)),
    ((16, 16), 16, (16, 16), (0, 0), (16, 16)),
    ((8, 8), 16, (8, 8), (0, 0), (8, 8)),
    ((96, 96), 24, (24, 24), (12, 12), (96, 96)),
    ((24, 24), 24, (24, 24), (0, 0), (24, 24)),
    ((12, 12), 24, (12, 12), (0, 0), (12, 12)),
    # other sizes
    ((32, 48), 8, (8, 8), (4, 4), (32, 48)),  # mini 128x192, stage 0
    ((12, 20), 8, (8, 8), (4, 4), (16, 24)),  # mini 96x160, stage 1: padded on both axes
    ((6, 10), 8, (6, 8), (0, 4), (6, 16)),  # mini 96x160, stage 2: one axis fits, the other is padded
    ((3, 5), 8, (3, 5), (0, 0), (3, 5)),  # mini 96x160, stage 3: whole grid in one window
    ((7, 7), 8, (7, 7), (0, 0), (7, 7)),  # mini 224x224, stage 3
    ((16, 24), 16, (16, 16), (0, 8), (16, 32)),  # tiny 256x384, stage 2
    ((8, 12), 16, (8, 12), (0, 0), (8, 12)),  # tiny 256x384, stage 3
    ((20, 36), 16, (16, 16), (8, 8), (32, 48)),  # tiny 320x576, stage 2
    ((1, 4), 8, (1, 4), (0, 0), (1, 4)),  # a 32 px side
]


@pytest.mark.parametrize("grid, window_size, window, shift, padded", RULE_TABLE)
def test_window_rule(grid, window_size, window, shift, padded):
    assert window_layout(grid, window_size) == WindowLayout(window, shift, padded)


def test_position_divisor():
    def config(window, pretrained, size):
        return SwinV2Config(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), window_size=window,
                            pretrained_window_sizes=pretrained, native_size=(size, size))

    # pretrained window - 1; without one, the native stage window - 1 (what the original divides by)
    assert [position_divisor(config(24, (12, 12, 12, 6), 384), s) for s in range(4)] == [(11, 11)] * 3 + [(5, 5)]
    assert [position_divisor(config(16, (0, 0, 0, 0), 256), s) for s in range(4)] == [(15, 15)] * 3 + [(7, 7)]
    assert [position_divisor(config(8, (0, 0, 0, 0), 128), s) for s in range(4)] == [(7, 7)] * 3 + [(3, 3)]


# ---------------------------------------------------------------------------------------------
# Other sizes


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def reference_block(p, x, window_size, shifted, divisor, heads):
    """One SwinV2 block on a (h, w, C) grid in float64, straight from the documented rule.

    Per axis, token y sits at position (y - s) mod Gp of the padded grid rolled by -s: its window
    is that position // ws, its place in the window that position % ws, its shift region one of
    the slices [0, Gp-ws), [Gp-ws, Gp-s), [Gp-s, Gp). Tokens attend to the real tokens of their
    own window; -100 across regions; padded tokens do not exist here at all.
    """
    h, w, dim = x.shape
    axes = []
    for g in (h, w):
        ws, s = min(window_size, g), (0 if g <= window_size else window_size // 2) if shifted else 0
        gp = -(-g // ws) * ws
        pos = (np.arange(g) - s) % gp
        region = (pos >= gp - ws).astype(int) + (pos >= gp - s) if s else np.zeros(g, int)
        axes.append((pos // ws, pos % ws, region))
    (wy, ly, ry), (wx, lx, rx) = axes
    grid = lambda a, b: (a[:, None] * 1000 + b[None, :]).reshape(-1)  # noqa: E731  (h*w,) row-major
    window_id, region = grid(wy, wx), grid(ry, rx)
    dy = np.subtract.outer(np.repeat(ly, w), np.repeat(ly, w))
    dx = np.subtract.outer(np.tile(lx, h), np.tile(lx, h))

    a = p["attn"]
    offsets, pair = np.unique(np.stack([dy, dx], -1).reshape(-1, 2), axis=0, return_inverse=True)
    t = offsets / np.array(divisor) * 8.0
    t = np.sign(t) * np.log2(np.abs(t) + 1.0) / 3.0  # log-spaced (dy, dx) of every offset that occurs
    cpb = np.maximum(t @ a["cpb_mlp"]["fc1"]["kernel"] + a["cpb_mlp"]["fc1"]["bias"], 0) @ a["cpb_mlp"]["fc2"]["kernel"]
    bias = 16.0 / (1.0 + np.exp(-cpb[pair.reshape(-1)].reshape(*dy.shape, heads).transpose(2, 0, 1)))  # (heads, N, N)

    tokens = x.reshape(-1, dim)
    qkv = tokens @ a["qkv"]["qkv"]["kernel"] + np.concatenate([a["qkv"]["q_bias"], np.zeros(dim), a["qkv"]["v_bias"]])
    q, k, v = qkv.reshape(-1, 3, heads, dim // heads).transpose(1, 2, 0, 3)  # (heads, N, hd) each
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
    logits = q @ k.transpose(0, 2, 1) * np.exp(np.minimum(a["logit_scale"], math.log(100.0))) + bias
    logits = logits + np.where(region[:, None] != region[None, :], -100.0, 0.0)
    logits = np.where(window_id[:, None] == window_id[None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(1, 0, 2).reshape(-1, dim) @ a["proj"]["kernel"] + a["proj"]["bias"]

    y = tokens + _layer_norm(out, p["norm1"])
    m = p["mlp"]
    mlp = _gelu(y @ m["fc1"]["kernel"] + m["fc1"]["bias"]) @ m["fc2"]["kernel"] + m["fc2"]["bias"]
    return (y + _layer_norm(mlp, p["norm2"])).reshape(h, w, dim)


# Grids of the mini's stages 1-2 at 160x320 and 96x160, plus an unshifted one. With a grid of
# 10 the padding lands in the rolled grid's first region, next to real tokens, so only the
# padding mask keeps it out (with 12 or 20 it lands in the region the shift mask separates).
@pytest.mark.parametrize("grid, shifted", [((10, 20), True), ((6, 10), True), ((12, 20), False)])
def test_block_follows_the_window_rule(grid, shifted):
    heads, dim, divisor = 2, 8, (3, 5)
    config = SwinV2Config(embed_dim=dim, depths=(2,), num_heads=(heads,), window_size=8,
                          pretrained_window_sizes=(0,), native_size=(32, 32))
    block = SwinV2Block(config, heads, shifted, divisor)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1, *grid, dim)).astype(np.float32)
    shapes = traverse_util.flatten_dict(jax.eval_shape(block.init, jax.random.PRNGKey(0), x)["params"])
    flat = {}
    for key, shape in shapes.items():  # random weights with non-trivial biases and norms
        scale = 1 / math.sqrt(shape.shape[0]) if key[-1] == "kernel" else 0.3
        flat[key] = (rng.normal(scale=scale, size=shape.shape) + (key[-1] == "scale")).astype(np.float32)
    flat[("attn", "logit_scale")] = np.log(np.array([[[3.0]], [[250.0]]], np.float32))  # a soft head; one at the clamp
    params = traverse_util.unflatten_dict(flat)

    got = np.asarray(jax.jit(block.apply, compiler_options=FAST_COMPILE)({"params": params}, x))[0]
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    want = reference_block(p64, x[0].astype(np.float64), 8, shifted, divisor, heads)
    err = rel_err(got, want)
    print(f"block on grid {grid}, shifted={shifted}: {err:.1e}")
    assert err < 1e-4


ANY_SIZES = [(128, 192), (192, 128), (96, 160), (160, 96), (224, 224)]


@pytest.mark.parametrize("size", ANY_SIZES)
def test_any_size_runs(size):
    config, params = load("mini_swin2_pw")
    images = np.random.default_rng(1).uniform(-1, 1, (1, *size, 3))
    hooks = encode(config, params, images)
    dims = config.encoder.stage_dims
    assert [h.shape for h in hooks] == [(1, size[0] // 4 >> s, size[1] // 4 >> s, dims[s]) for s in range(4)]
    assert all(np.isfinite(h).all() for h in hooks)


def _pad_fitting_axes(grid, window_size):
    """The window rule, plus one extra window of padding on every axis that is not shifted."""
    layout = window_layout(grid, window_size)
    padded = tuple(p + (w if s == 0 else 0) for p, w, s in zip(layout.padded, layout.window, layout.shift))
    return layout._replace(padded=padded)


def test_padding_changes_nothing_at_native_size():
    # At 128x128 stages 2 and 3 (8x8 and 4x4, unshifted) run on 16x16 and 8x8 grids whose extra
    # windows are pure padding: padded keys must be invisible and padded queries harmless (no NaN).
    config, params = load("mini_swin2_pw")
    images = native_input("mini_swin2_pw")
    plain = encode(config, params, images)  # same compiler options as below: these minis amplify 1-ulp differences
    padded = encode(config, params, images, _pad_fitting_axes)
    for i, (a, b) in enumerate(zip(plain, padded), start=1):
        assert np.isfinite(b).all()
        assert rel_err(b, a) < (1e-6 if i <= 2 else 1e-5), i  # stages 0-1 are not padded: same program
    ref = reference("mini_swin2_pw")
    assert max(rel_err(as_tokens(b), ref[f"native__hook{i}"]) for i, b in enumerate(padded, start=1)) < TOL


def smooth_image(seed, height, width, dy=0.0):
    """A smooth synthetic picture (a few low-frequency waves), sampled at pixel centres, normalized to [-1, 1].

    The same seed at another size is the same picture resized; `dy` moves it down by dy pixels.
    """
    rng = np.random.default_rng(seed)
    y = (np.arange(height)[:, None] + 0.5 - dy) / height
    x = (np.arange(width)[None, :] + 0.5) / width
    img = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.5, 2.5, 2)
            py, px = rng.uniform(0, 2 * np.pi, 2)
            img[..., c] += rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * fy * y + py) * np.cos(2 * np.pi * fx * x + px)
    return np.clip(0.5 + img, 0, 1) * 2 - 1


def test_size_change_is_smooth():
    """128x128 (native) -> 160x128: the hooks move no more than the original moves under an 8 px translation.

    The fixtures' random weights (heads at the x100 logit clamp, 16 sigmoid position biases)
    make the features depend strongly on where windows fall on the picture: moving the picture
    by 8 px at the native size, which involves none of the non-native machinery, already
    changes hook1/hook2 by about half their RMS. So the honest bar is that baseline, not
    "much less than unrelated images" at every depth; hooks 3-4 (4x4 and 8x8 maps, resampled)
    are only checked to be finite and printed.
    """
    config, params = load("mini_swin2")
    picture, other = 1, 2
    pair = np.stack([smooth_image(picture, 128, 128), smooth_image(picture, 128, 128, 8.0)])
    native = encode(config, params, pair, fast_compile=False)  # compiled for test_hooks_match_original
    bigger = encode(config, params, np.stack([smooth_image(picture, 160, 128), smooth_image(other, 160, 128)]))
    rms = lambda z: float(np.sqrt(np.mean(np.square(z))))  # noqa: E731
    for i, (a, b) in enumerate(zip(native, bigger), start=1):
        assert np.isfinite(b).all()
        b = np.asarray(jax.image.resize(b, (2, *a.shape[1:]), "linear"))  # back onto the native grid
        size_change, unrelated = rms(a[0] - b[0]), rms(a[0] - b[1])
        line = f"hook{i}: size change {size_change / rms(a[0]):.2f}, unrelated picture {unrelated / rms(a[0]):.2f}"
        if i <= 2:
            d = 2 >> (i - 1)  # 8 px in tokens of this stage; compare away from the borders
            translation = rms(a[0, 4:-(4 + d)] - a[1, 4 + d:-4])  # moved down: row r + d of a[1] is row r of a[0]
            line += f", 8 px translation at native size {translation / rms(a[0]):.2f} (of the hook's RMS)"
            assert size_change < 1.5 * translation
            assert size_change < 0.8 * unrelated
        print(line)


@pytest.mark.parametrize("size", [(100, 128), (128, 100), (136, 128), (16, 16)])
def test_size_not_multiple_of_32_is_refused(size):
    config, params = load("mini_swin2_pw")
    with pytest.raises(ValueError, match=rf"multiples of 32.*{size[0]}x{size[1]}"):
        SwinV2Encoder(config.encoder).apply({"params": params}, jnp.zeros((1, *size, 3)))
