"""MiDaS v3.1 input and output geometry.

What `midas.model_loader.load_model` sets up for the DPT models and `run.py` does around the
network, in JAX:
  * the network input size: `midas.transforms.Resize` with resize_method="minimal" and
    ensure_multiple_of=32 (`processed_size`);
  * the input transform: cv2.resize(INTER_CUBIC) of the RGB image scaled to [0, 1], then
    NormalizeImage(mean=0.5, std=0.5) (`normalize_and_resize`);
  * the output transform: F.interpolate(mode="bicubic", align_corners=False) of the prediction
    back to the picture's size (`resize_depth`).
Sizes are (height, width) throughout; MiDaS's Resize takes and returns (width, height).

Depth Anything (V1 and V2) uses the same Resize class with resize_method="lower_bound" and
ensure_multiple_of=14, ImageNet mean/std, and resizes the output back bilinearly; the keyword
arguments `rule`, `mean`/`std` and `method` select these (DPTConfig.resize_rule, input_mean,
input_std, output_resize).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .resize import resize_area, resize_bicubic, resize_bilinear


def _constrain_to_multiple_of(x: float, multiple_of: int, min_val: int = 0, max_val: int | None = None) -> int:
    """MiDaS's Resize.constrain_to_multiple_of: nearest multiple (np.round, so ties go to even),
    floored if that exceeds max_val, ceiled if it falls below min_val."""
    y = int(np.round(x / multiple_of) * multiple_of)
    if max_val is not None and y > max_val:
        y = int(np.floor(x / multiple_of) * multiple_of)
    if y < min_val:
        y = int(np.ceil(x / multiple_of) * multiple_of)
    return y


def processed_size(
    height: int, width: int, *, target, keep_aspect_ratio: bool, multiple_of: int = 32, rule: str = "minimal"
) -> tuple[int, int]:
    """(new_h, new_w) that MiDaS resizes a height x width picture to before the network.

    Matches Resize.get_size with resize_method="minimal" (every DPT model of MiDaS v3.1):
    scale_h = target_h / height and scale_w = target_w / width; with keep_aspect_ratio both axes
    take whichever scale is closer to 1 (the height's on a tie); each side is then
    round(scale * side / multiple_of) * multiple_of with NumPy's round-half-to-even.
    `target` is (target_h, target_w) or one int for a square target.

    E.g. a 480 x 640 picture for a 384 BEiT with keep_aspect_ratio -> (384, 512); any picture for
    swin2_tiny_256 (keep_aspect_ratio=False) -> (256, 256).

    rule="lower_bound" (Depth Anything): with keep_aspect_ratio both axes take the larger scale,
    so the result covers the target; each side is rounded as above and, if that falls below the
    target side, rounded up instead (a 500 x 333 picture for 518 with multiples of 14 -> 784 x 518).

    rule="at_most" (Prompt Depth Anything's load_image): the larger target side, floored to a
    multiple, is the largest side allowed; a larger picture is scaled by that / its larger side,
    and each side is then floored to a multiple (int(side * scale // m * m), so the aspect ratio
    drifts slightly), a picture that fits keeps its size (the original refuses sides that are not
    multiples; here they are floored too). 1440 x 1920 for 1008 -> 756 x 1008.

    rule="upper_bound" (Depth Anything 3): the longer side to the larger target side, then each side
    to the nearest multiple (`upper_bound_sizes`).

    Raises ValueError where MiDaS would produce a zero side (a side under multiple_of / 2 after
    scaling, e.g. a very thin strip), which cv2.resize then rejects in MiDaS too.
    """
    if height < 1 or width < 1:
        raise ValueError(f"picture size must be positive, got {height} x {width}")
    target_h, target_w = (target, target) if isinstance(target, int) else target
    scale_h = target_h / height
    scale_w = target_w / width
    if rule == "upper_bound":
        return upper_bound_sizes(height, width, max(target_h, target_w), multiple_of)[1]
    if rule not in ("minimal", "lower_bound", "at_most"):
        raise ValueError(f"unknown resize rule {rule!r}; expected 'minimal', 'lower_bound', 'at_most' or "
                         "'upper_bound'")
    if rule == "at_most":
        limit = max(target_h, target_w) // multiple_of * multiple_of
        scale = limit / max(height, width) if max(height, width, 3) > limit else 1.0  # 3: the original counts channels
        new_h, new_w = (int(side * scale // multiple_of * multiple_of) for side in (height, width))
        if new_h == 0 or new_w == 0:
            raise ValueError(f"a {height} x {width} picture maps to {new_h} x {new_w} for at most {limit}: "
                             "too small or too thin to process")
        return new_h, new_w
    if keep_aspect_ratio and rule == "lower_bound":
        scale_h = scale_w = max(scale_h, scale_w)
    elif keep_aspect_ratio:
        if abs(1 - scale_w) < abs(1 - scale_h):
            scale_h = scale_w
        else:
            scale_w = scale_h
    # "minimal" constrains with the defaults min_val=0, max_val=None; "lower_bound" with min_val=target.
    low_h, low_w = (target_h, target_w) if rule == "lower_bound" else (0, 0)
    new_h = _constrain_to_multiple_of(scale_h * height, multiple_of, min_val=low_h)
    new_w = _constrain_to_multiple_of(scale_w * width, multiple_of, min_val=low_w)
    if new_h == 0 or new_w == 0:
        raise ValueError(
            f"a {height} x {width} picture maps to {new_h} x {new_w} for target {target_h} x {target_w}: "
            "too thin to process at this size"
        )
    return new_h, new_w


def upper_bound_sizes(height: int, width: int, longest: int, multiple_of: int) -> tuple[tuple[int, int], ...]:
    """((h1, w1), (H, W)): Depth Anything 3's two resizes of a height x width picture (api.py InputProcessor).

    First the longer side to `longest` (skipped when it is already), each side int(round(side * scale))
    with Python's round (half to even), at least 1; then each side to the nearest multiple of
    `multiple_of`, ties rounded up (63 -> 70). E.g. 80 x 640 -> (63, 504) -> (70, 504).
    """
    if height < 1 or width < 1:
        raise ValueError(f"picture size must be positive, got {height} x {width}")
    first = (height, width)
    if max(height, width) != longest:
        scale = longest / float(max(height, width))
        first = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))

    def nearest(x: int) -> int:
        down = x // multiple_of * multiple_of
        return down + multiple_of if x - down >= multiple_of - (x - down) else down

    final = (nearest(first[0]), nearest(first[1]))
    if 0 in final:
        raise ValueError(f"a {height} x {width} picture maps to {final[0]} x {final[1]} for the longer side "
                         f"{longest}: too thin to process at this size")
    return first, final


def _cv2_resize_uint8(x: jnp.ndarray, size: tuple[int, int], cubic: bool) -> jnp.ndarray:
    """cv2.resize of uint8 levels (float, (B, h, w, 3)): INTER_CUBIC or INTER_AREA, rounded and saturated."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    x = (resize_bicubic(x, size, convention="opencv", axes=(1, 2), rounded_products=True) if cubic
         else resize_area(x, size, axes=(1, 2)))
    return jnp.clip(jnp.round(x), 0, 255)


@functools.partial(jax.jit, static_argnames=("first", "size"))
def upper_bound_levels(images: jnp.ndarray, first: tuple[int, int], size: tuple[int, int]) -> jnp.ndarray:
    """(B, h, w, 3) RGB pictures -> (B, H, W, 3) float32 uint8 levels, as Depth Anything 3's api.py resizes them.

    The picture as uint8 levels (uint16 and float pictures are rounded to them, as PIL's RGB
    conversion would), then `upper_bound_sizes`' two cv2.resize calls, each INTER_CUBIC where a
    side grows and INTER_AREA otherwise, each rounded to uint8. OpenCV's cubic resize of uint8
    works in fixed point: levels may differ by one here and there.
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint16:
        x = jnp.round(x / 257.0)
    elif images.dtype != jnp.uint8:
        x = jnp.clip(jnp.round(x * 255.0), 0, 255)
    h, w = images.shape[1:3]
    x = _cv2_resize_uint8(x, first, cubic=max(first) > max(h, w))  # (B, h1, w1, 3)
    return _cv2_resize_uint8(x, size, cubic=size[0] > first[0] or size[1] > first[1])  # (B, H, W, 3)


@functools.partial(jax.jit, static_argnames=("first", "size", "mean", "std"))
def normalize_and_resize_upper_bound(images: jnp.ndarray, first: tuple[int, int], size: tuple[int, int], mean,
                                     std) -> jnp.ndarray:
    """(B, h, w, 3) RGB pictures -> (B, H, W, 3) network input: `upper_bound_levels`, /255, (x - mean) / std."""
    x = upper_bound_levels(images, first, size)
    return (x / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("size", "mean", "std", "method"))
def normalize_and_resize(images: jnp.ndarray, size: tuple[int, int], mean=(0.5, 0.5, 0.5),
                         std=(0.5, 0.5, 0.5), method: str = "bicubic") -> jnp.ndarray:
    """(B, h, w, 3) RGB pictures -> (B, H, W, 3) float32 network input, as MiDaS prepares them.

    uint8 pictures are divided by 255; float pictures are taken to be in [0, 1] already. The
    result is resized with OpenCV's bicubic convention (MiDaS resizes the [0, 1] image with
    cv2.INTER_CUBIC before normalising; the output is not clipped, so it may overshoot slightly)
    and normalised as (x - mean) / std per channel (MiDaS: 0.5 and 0.5; Depth Anything: ImageNet's).
    `size` = (H, W), e.g. from `processed_size`; `mean`, `std`: tuples (static). `method` "area":
    cv2.INTER_AREA instead (Prompt Depth Anything's load_image; shrinking only).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, h, w, 3) RGB pictures, got shape {images.shape}")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if method == "area":
        x = resize_area(x, tuple(size), axes=(1, 2))
    else:
        x = resize_bicubic(x, tuple(size), convention="opencv", axes=(1, 2))
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames=("size", "method"))
def resize_depth(depth: jnp.ndarray, size: tuple[int, int], method: str = "bicubic") -> jnp.ndarray:
    """(B, h, w) predictions -> (B, H, W) float32, as the original resizes them to the picture's size:
    F.interpolate(prediction.unsqueeze(1), size=(H, W), mode=...) with method "bicubic" (MiDaS run.py,
    align_corners=False), "bilinear_align_corners" (Depth Anything V2 infer_image) or "bilinear"
    (Depth Anything V1 run.py, align_corners=False)."""
    if depth.ndim != 3:
        raise ValueError(f"expected (B, h, w) predictions, got shape {depth.shape}")
    depth = depth.astype(jnp.float32)
    if method == "bicubic":
        return resize_bicubic(depth, tuple(size), convention="torch", axes=(1, 2))
    if method in ("bilinear_align_corners", "bilinear"):
        return resize_bilinear(depth, tuple(size), align_corners=method == "bilinear_align_corners", axes=(1, 2))
    raise ValueError(f"unknown output resize {method!r}")


# ---------------------------------------------------------------------------------------------
# The same three steps as a model's config says (what pictures, videos and exports all use).


def network_size(config, picture_size, *, target=None, keep_aspect_ratio: bool | None = None) -> tuple[int, int]:
    """(H, W) the model runs a picture of `picture_size` (h, w) at: the config's target, rule and multiple.

    `target` replaces the native size (an int for a square, or (H, W)); `keep_aspect_ratio`
    replaces the config's.
    """
    keep = config.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
    return processed_size(*picture_size, target=config.native_size if target is None else target,
                          keep_aspect_ratio=keep, multiple_of=config.resize_multiple, rule=config.resize_rule)


def to_network(config, pictures, size) -> jnp.ndarray:
    """(B, h, w, 3) pictures -> (B, H, W, 3) network input, normalised as the config says.

    Depth Anything 3 ("upper_bound"): its two resizes, the first to the longer side of `size`.
    """
    if config.resize_rule == "upper_bound":
        first = upper_bound_sizes(*pictures.shape[1:3], max(size), config.resize_multiple)[0]
        return normalize_and_resize_upper_bound(pictures, first, tuple(size), tuple(config.input_mean),
                                                tuple(config.input_std))
    return normalize_and_resize(pictures, tuple(size), tuple(config.input_mean), tuple(config.input_std),
                                config.input_resize)


def to_picture(config, depth, size) -> jnp.ndarray:
    """(B, H, W) network output -> (B, h, w) at the picture's size, resized as the config says."""
    return resize_depth(depth, tuple(size), config.output_resize)
