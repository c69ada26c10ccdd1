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
per picture size. Pixels are decoded by worker threads one batch ahead, while the device runs
the batch before, and at most PIXEL_BUDGET decoded pixels (and depth maps at picture size) are
held at once, prefetch included: a batch decodes and resizes its pictures in chunks.

`size=` replaces the native size as MiDaS's --height does; `bucket=True` snaps processed sizes
to a coarser grid (`bucket_size`) so that near sizes share a program (see `run`). Decoding is
`pictures.py`; the overlapped schedule of decoding, device and results is `overlap.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from .overlap import Overlapped, default_workers, emit
from .pictures import ImageLike, Source, open_source
from .preprocess import network_size

#: Most decoded picture pixels held at once across a batch (a single larger picture still runs alone).
PIXEL_BUDGET = 100_000_000

@dataclass
class Result:
    name: str
    depth: np.ndarray | None = None  # (h, w) float32 inverse depth
    error: str | None = None
    index: int = 0  # position of the picture in the input list
    focal: float | None = None  # focal-metric models (Depth Anything 3 metric): the focal length used, pixels
    focal_source: str | None = None  # and where it came from


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


def _memory_rule(model, size):
    """The check of each picture's network size against the memory budget (memory.py): raises ValueError
    saying what sets that size (the option given, or the model's native size and the file it came from)."""
    from .memory import over_budget

    config = model.config
    if size is not None:
        cause = "choose a smaller size (size=, --size/--height)"
    else:
        h, w = config.native_size
        source = getattr(model, "source", None)
        cause = (f"the model's native_size {h}x{w}{f' ({source})' if source else ''} sets it; choose a smaller size "
                 "(size=, --size/--height)")

    def check(network_size):
        reason = over_budget(config, 1, network_size)
        if reason is not None:
            raise ValueError(f"{reason}; {cause}")

    return check


def batches_by_shape(sources: Sequence[Source], target_of: Callable[[tuple[int, int]], tuple[int, int]],
                     batch_size: int) -> list[tuple[tuple[int, int], list[int]]]:
    """[(processed size, indices)] with at most `batch_size` pictures each, grouped by processed size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(target_of(s.size), []).append(i)
    return [(size, idx[k:k + batch_size]) for size, idx in groups.items() for k in range(0, len(idx), batch_size)]


def run(model, items: Iterable[ImageLike | Source], *, batch_size: int = 4, keep_aspect_ratio: bool | None = None,
        size=None, bucket: bool = False, on_result: Callable[[Result], None] | None = None,
        keep_depth: bool = True, pixel_budget: int | None = None,
        on_status: Callable[[str], None] | None = None, workers: int | None = None, focal: float | None = None,
        fov: float | None = None) -> list[Result]:
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
    `workers`: threads decoding pictures (EXIF rotation and conversion included) while the device
    runs, one batch ahead (default `default_workers()`); 0 decodes in this thread when a batch
    needs its pictures. Either way the batches, chunks and programs are the same, so the depth
    is identical, and `on_result` sees the pictures in the same order (see `overlap.Overlapped`).
    `focal` (pixels at the picture's size) or `fov` (horizontal, degrees): the camera of every
    picture, for models whose metres need the focal length (`config.focal_metric_divisor`,
    Depth Anything 3 metric); otherwise each picture's EXIF, else `focal.DEFAULT_FOV`
    (`focal.focal_pixels`). `Result.focal` says which was used.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    budget = PIXEL_BUDGET if pixel_budget is None else pixel_budget
    config = model.config
    target_of = planner(config, size=size, keep_aspect_ratio=keep_aspect_ratio, bucket=bucket)
    too_large = _memory_rule(model, size)

    results: list[Result] = []
    sources: list[Source] = []
    slot: list[int] = []  # result index of each source
    for i, item in enumerate(items):
        name = item.name if isinstance(item, Source) else str(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"
        results.append(Result(name, index=i))
        try:
            src = item if isinstance(item, Source) else open_source(item, i)
            too_large(target_of(src.size))
        except ValueError as e:  # ImageError included
            results[-1].error = getattr(e, "message", str(e))
            emit(on_result, results[-1], keep_depth)
            continue
        results[-1].name = src.name
        sources.append(src)
        slot.append(i)

    if sources:  # a batch's activations within the memory budget (memory.py): fewer pictures a call if need be
        from .memory import largest_batch

        fits = min(largest_batch(config, target_of(s.size)) for s in sources)
        if fits < batch_size:
            batch_size = max(1, fits)
            if on_status is not None:
                on_status(f"batch size {batch_size}: larger batches would need more memory than the budget "
                          f"(memory.py; DPT_JAX_MEMORY_BUDGET sets it)")
    if config.focal_metric_divisor > 0:
        on_result = _in_metres(config, sources, slot, target_of, on_result, focal, fov)
    engine = Overlapped(model, sources, slot, results, batches_by_shape(sources, target_of, batch_size),
                         batch_size=batch_size, budget=budget,
                         workers=default_workers() if workers is None else workers,
                         on_result=on_result, keep_depth=keep_depth, on_status=on_status)
    engine.run()
    return results




def _in_metres(config, sources, slot, target_of, on_result, focal, fov):
    """`on_result` behind a step that turns a focal-metric model's depth into metres (`focal.metric_scale`).

    A picture read from a file (its Source is named by its path) may carry its focal length in its EXIF.
    """
    from .focal import focal_pixels, metric_scale

    scales = {}
    for i, src in zip(slot, sources):
        px, how = focal_pixels(src.size, focal=focal, fov=fov, path=src.name if os.path.isfile(src.name) else None)
        scales[i] = (metric_scale(config, src.size, target_of(src.size), px), px, how)

    def scaled(result: Result):
        if result.depth is not None and result.index in scales:
            factor, result.focal, result.focal_source = scales[result.index]
            result.depth = (result.depth * np.float32(factor)).astype(np.float32)
        if on_result is not None:
            on_result(result)

    return scaled
