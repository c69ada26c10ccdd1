"""Depth for real pictures: reading, the original's preprocessing, batching by shape, and resizing back.

    picture (h, w, 3) uint8/uint16/float
      -> processed size (H, W): the native size, sides rounded to config.resize_multiple by
         config.resize_rule (MiDaS "minimal", 32; Depth Anything "lower_bound", 14)
                                                                     (preprocess.processed_size)
      -> bicubic resize as cv2.INTER_CUBIC, (x - mean) / std       on device, compiled per (h, w)
      -> DPT forward                                               on device, compiled per (B, H, W)
      -> resize back to (h, w) (config.output_resize)
    = depth (h, w) float32: relative inverse depth, or metres for metric models

Pictures are grouped by processed size, so all the model programs a run compiles are one per
distinct (batch, H, W): a folder of phone photos in two orientations compiles two (plus one for
a smaller last batch, padded up to a power of two). The two resizes are small programs compiled
per picture size. Pixels are decoded only when their batch runs, and at most PIXEL_BUDGET
decoded pixels are held at once: a batch decodes and resizes its pictures in chunks.

`size=` replaces the native size as MiDaS's --height does; `bucket=True` snaps processed sizes
to a coarser grid (`bucket_size`) so that near sizes share a program (see `run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from .preprocess import network_size, to_network, to_picture

#: Pictures with more pixels than this are refused before decoding (~100 MP: a 12000 x 8000 picture).
MAX_PIXELS = 100_000_000
#: Most decoded picture pixels held at once across a batch (a single larger picture still runs alone).
PIXEL_BUDGET = 100_000_000

ImageLike = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821


class ImageError(ValueError):
    """A picture that cannot be used; the message names it and says what is wrong."""

    def __init__(self, name, message):
        self.name, self.message = str(name), message
        super().__init__(f"{name}: {message}")


def _as_rgb_array(img, name) -> np.ndarray:
    """A PIL image -> (h, w, 3) uint8, or float32 in [0, 1] for 16-bit and float pictures."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)  # phone photos: OpenCV's imread applies the EXIF rotation too
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float32) / 65535.0
    elif img.mode == "I":
        a = np.asarray(img, dtype=np.float64)
        a = (a / (65535.0 if a.max() <= 65535 else a.max())).astype(np.float32)
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
    else:
        return np.asarray(img.convert("RGB"))  # grayscale, palette, RGBA (alpha dropped), CMYK, ...
    return as_picture(a, name)


def as_picture(a: np.ndarray, name="array") -> np.ndarray:
    """Check and normalise an in-memory picture to (h, w, 3) uint8, or float32 in [0, 1]."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise ImageError(name, f"expected an (h, w), (h, w, 3) or (h, w, 4) picture; got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]  # RGBA: alpha dropped
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ImageError(name, "the picture has NaN or infinite values")
        if a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ImageError(name, f"float pictures must be in [0, 1]; values span [{a.min():g}, {a.max():g}]")
        return a
    raise ImageError(name, f"unsupported pixel type {a.dtype}; use uint8, uint16 or float in [0, 1]")


@dataclass
class Source:
    """One input picture: where it comes from and its size, known before its pixels are decoded."""

    name: str
    size: tuple[int, int]  # (h, w)
    load: Callable[[], np.ndarray]


def open_source(item: ImageLike, index: int = 0) -> Source:
    """Read just enough of `item` to know its size; raises ImageError for anything unusable."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        name = str(path)
        if not path.is_file():
            raise ImageError(name, "no such file" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            raise ImageError(name, "the file is empty")
        try:
            with Image.open(path) as img:
                h, w = _displayed_size(img)
        except UnidentifiedImageError:
            raise ImageError(name, "not an image file Pillow can read") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(name, f"cannot read image: {e}") from None
        _check_pixels(name, h, w)

        def load():
            try:
                with Image.open(path) as img:
                    img.load()
                    return _as_rgb_array(img, name)
            except ImageError:
                raise
            except Exception as e:  # truncated or corrupt pixel data surfaces only when decoding
                raise ImageError(name, f"cannot decode image: {e}") from None

        return Source(name, (h, w), load)
    if hasattr(item, "mode") and hasattr(item, "size"):  # a PIL image
        name = f"image #{index}"
        h, w = _displayed_size(item)
        _check_pixels(name, h, w)
        return Source(name, (h, w), lambda: _as_rgb_array(item, name))
    name = f"array #{index}"
    a = as_picture(item, name)
    _check_pixels(name, *a.shape[:2])
    return Source(name, a.shape[:2], lambda: a)


def _displayed_size(img) -> tuple[int, int]:
    """(h, w) of a PIL image as shown: EXIF orientations 5-8 (rotated by 90 degrees) swap the sides."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: the pixels are still usable, as decoding will show
        orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _check_pixels(name, h, w):
    if h * w > MAX_PIXELS:
        raise ImageError(name, f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,} (pipeline.MAX_PIXELS); "
                         "downscale it first")


@dataclass
class Result:
    name: str
    depth: np.ndarray | None = None  # (h, w) float32 inverse depth
    error: str | None = None
    index: int = 0  # position of the picture in the input list


def as_target(size) -> tuple[int, int]:
    """An int (a square, as MiDaS's --height) or an (H, W) pair -> (H, W) of positive ints."""
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"size must be a positive int or a (height, width) pair; got {size!r}")
    return int(pair[0]), int(pair[1])


def bucket_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Processed size -> its bucket: each side rounded to the nearest multiple of 2 * multiple (64 for
    MiDaS's 32; ties round up), at least 2 * multiple. See `run(bucket=True)`."""
    step = 2 * multiple
    return tuple(max(step, (s + step // 2) // step * step) for s in size)


def planner(config, *, size=None, keep_aspect_ratio: bool | None = None, bucket: bool = False):
    """The function (h, w) picture size -> (H, W) network input size of a run with these options."""
    target = None if size is None else as_target(size)

    def target_of(picture_size):
        s = network_size(config, picture_size, target=target, keep_aspect_ratio=keep_aspect_ratio)
        return bucket_size(s, config.resize_multiple) if bucket else s

    return target_of


def batches_by_shape(sources: Sequence[Source], target_of: Callable[[tuple[int, int]], tuple[int, int]],
                     batch_size: int) -> list[tuple[tuple[int, int], list[int]]]:
    """[(processed size, indices)] with at most `batch_size` pictures each, grouped by processed size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(target_of(s.size), []).append(i)
    return [(size, idx[k:k + batch_size]) for size, idx in groups.items() for k in range(0, len(idx), batch_size)]


def padded_batch(n: int, batch_size: int, multiple: int = 1) -> int:
    """Batch a group of n pictures runs with: n rounded up to a power of two (at most batch_size), then to `multiple`."""
    b = 1
    while b < n:
        b *= 2
    b = min(b, max(batch_size, n))
    return -(-b // multiple) * multiple


def run(model, items: Iterable[ImageLike | Source], *, batch_size: int = 4, keep_aspect_ratio: bool | None = None,
        size=None, bucket: bool = False, on_result: Callable[[Result], None] | None = None,
        keep_depth: bool = True, pixel_budget: int | None = None,
        on_status: Callable[[str], None] | None = None) -> list[Result]:
    """Predict every picture of `items`; a picture that fails is reported in its Result and the rest go on.

    `size`: network input target instead of the model's native size, as MiDaS's --height (an
    int: a square target) or (H, W); sides are rounded to `config.resize_multiple` by the
    config's `resize_rule`, keeping the aspect ratio as `keep_aspect_ratio` says.
    `bucket`: snap each processed size to a coarser grid (`bucket_size`), so pictures of near
    sizes share one compiled program. The picture is resized to the bucket size (not padded:
    padding changes the depth of every pixel, as the encoder attends across the padding), so
    the depth equals running that picture with size=bucket size, keep_aspect_ratio=False.
    `on_result` is called with each Result as soon as it is known; with `keep_depth=False` the
    depth is dropped from the Result after that call (memory stays flat over long runs).
    `pixel_budget`: most decoded picture pixels (inputs, and depth maps at picture size) held
    at once across a batch (default PIXEL_BUDGET; a single larger picture still runs alone).
    `on_status`: called with a line when a new model program is compiled, and its time.
    """
    import time

    import jax.numpy as jnp

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    budget = PIXEL_BUDGET if pixel_budget is None else pixel_budget
    config = model.config
    target_of = planner(config, size=size, keep_aspect_ratio=keep_aspect_ratio, bucket=bucket)

    results: list[Result] = []
    sources: list[Source] = []
    slot: list[int] = []  # result index of each source
    for i, item in enumerate(items):
        name = item.name if isinstance(item, Source) else str(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"
        results.append(Result(name, index=i))
        try:
            src = item if isinstance(item, Source) else open_source(item, i)
            target_of(src.size)
        except ValueError as e:  # ImageError included
            results[-1].error = getattr(e, "message", str(e))
            _emit(on_result, results[-1], keep_depth)
            continue
        results[-1].name = src.name
        sources.append(src)
        slot.append(i)

    def fail(m, message):
        results[slot[m]].error = message
        _emit(on_result, results[slot[m]], keep_depth)

    compiled = set()
    shape_of: dict[int, tuple[int, int]] = {}  # decoded (h, w) of each source
    for size_hw, members in batches_by_shape(sources, target_of, batch_size):
        # Decode and resize to the network size in chunks of at most `budget` picture pixels, one
        # resize call per distinct (picture size, pixel type) within a chunk.
        inputs, order = [], []  # network inputs (n_k, H, W, 3) and the sources they hold, in order
        chunk: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        held = 0

        def flush():
            for g in chunk.values():
                inputs.append(to_network(config, jnp.asarray(np.stack([p for _, p in g])), size_hw))
                order.extend(m for m, _ in g)
            chunk.clear()

        for m in members:
            h, w = sources[m].size
            if held and held + h * w > budget:
                flush()
                held = 0
            try:
                picture = sources[m].load()
            except ImageError as e:
                fail(m, e.message)
                continue
            shape_of[m] = picture.shape[:2]
            chunk.setdefault((picture.shape[:2], picture.dtype.str), []).append((m, picture))
            held += h * w
            del picture
        flush()
        if not order:
            continue
        x = jnp.concatenate(inputs)  # (n, H, W, 3)
        inputs.clear()
        n = x.shape[0]
        b = padded_batch(n, batch_size, model.num_devices)
        if b > n:  # pad so that a short last batch reuses a compiled program
            x = jnp.concatenate([x, jnp.zeros((b - n, *x.shape[1:]), x.dtype)], axis=0)
        new = (b, *size_hw) not in compiled
        if new and on_status is not None:
            on_status(f"compiling for {size_hw[0]}x{size_hw[1]} (batch {b})")
        t0 = time.perf_counter()
        depth = model.apply(x)  # (b, H, W)
        if new:
            depth.block_until_ready()
            compiled.add((b, *size_hw))
            if on_status is not None:
                on_status(f"compiled and ran {size_hw[0]}x{size_hw[1]} (batch {b}) in {time.perf_counter() - t0:.1f} s")
        # Back to each picture's size, again in chunks of at most `budget` pixels of the same size.
        k = 0
        while k < len(order):
            ps = shape_of[order[k]]
            j, px = k + 1, ps[0] * ps[1]
            while j < len(order) and shape_of[order[j]] == ps and px + ps[0] * ps[1] <= budget:
                px += ps[0] * ps[1]
                j += 1
            back = np.asarray(to_picture(config, depth[k:j], ps))  # (j - k, h, w)
            for m, d in zip(order[k:j], back):
                results[slot[m]].depth = d
                _emit(on_result, results[slot[m]], keep_depth)
            del back
            k = j
    return results


def _emit(callback, result, keep_depth=True):
    if callback is not None:
        callback(result)
    if not keep_depth:
        result.depth = None
