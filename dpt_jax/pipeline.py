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
to a coarser grid (`bucket_size`) so that near sizes share a program (see `run`).
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from .errors import ImageError
from .preprocess import network_size, to_network, to_picture

#: Pictures with more pixels than this are refused before decoding (~100 MP: a 12000 x 8000 picture).
MAX_PIXELS = 100_000_000
#: Most decoded picture pixels held at once across a batch (a single larger picture still runs alone).
PIXEL_BUDGET = 100_000_000

ImageLike = Union[str, os.PathLike, np.ndarray, "PIL.Image.Image"]  # noqa: F821


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
    """The batch a group of n pictures runs with: n rounded up to a power of two (at most batch_size), then
    to `multiple`."""
    b = 1
    while b < n:
        b *= 2
    b = min(b, max(batch_size, n))
    return -(-b // multiple) * multiple


def run(model, items: Iterable[ImageLike | Source], *, batch_size: int = 4, keep_aspect_ratio: bool | None = None,
        size=None, bucket: bool = False, on_result: Callable[[Result], None] | None = None,
        keep_depth: bool = True, pixel_budget: int | None = None,
        on_status: Callable[[str], None] | None = None, workers: int | None = None) -> list[Result]:
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
    is identical, and `on_result` sees the pictures in the same order (see `_Overlapped`).
    """
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

    engine = _Overlapped(model, sources, slot, results, batches_by_shape(sources, target_of, batch_size),
                         batch_size=batch_size, budget=budget,
                         workers=default_workers() if workers is None else workers,
                         on_result=on_result, keep_depth=keep_depth, on_status=on_status)
    engine.run()
    return results


def _emit(callback, result, keep_depth=True):
    if callback is not None:
        callback(result)
    if not keep_depth:
        result.depth = None


def default_workers() -> int:
    """Decoding threads `run` uses by default: one per CPU this process may use, at most 4 (Pillow
    releases the GIL while decoding, resizing and rotating)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


class _Deferred:
    """A decode done in the calling thread when its result is asked for (`run(workers=0)`)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


def _decode(source: Source):
    """(picture, None), or (None, message) for a picture that cannot be decoded."""
    try:
        return source.load(), None
    except ImageError as e:
        return None, e.message


@dataclass
class _Dispatched:
    """A batch on the device: its depth, the pictures it holds, its chunks back to picture size."""

    depth: object  # (b, H, W) device array, or None when every picture of the batch failed
    order: list  # source indices, in the batch's row order
    failures: list  # (source index, message) of the batch's pictures that failed to decode
    chunks: list  # (first row, end row, picture (h, w), pixels): rows resized back together
    resized: list  # device arrays (rows, h, w) of the chunks whose pixels are taken, in order


class _Overlapped:
    """The batches of `run`, with decoding, the device and the results overlapped.

        decode batch k+1 (worker threads)  |  device: batch k  |  results of batch k-1 (results thread)

    Pixel budget: a picture's decoded pixels are taken when its decode is submitted and given back
    when its chunk is resized to the network size (or it fails); a depth chunk's pixels are taken
    when its resize to picture size is dispatched and given back after its pictures' on_result.
    Every take happens in this thread, in one fixed order (the inputs of batch k, then its depth
    chunks, then the inputs of batch k+1, ...), and a take that does not fit waits (by finishing
    the batches before it) rather than skipping ahead: whatever is held is released by work that
    needs no later take, so the budget holds, prefetch included, and nothing can deadlock. Chunk
    boundaries follow the sequential rule (consecutive pictures while their pixels fit the budget),
    not the timing, so every run compiles and runs the same programs: the results are identical
    whatever `workers` is, and on_result sees them in batch order (failures of a batch first).

    With workers, the depth maps are pulled to the host and handed to on_result by one results
    thread (writing files there overlaps the next batches; one thread keeps the order), which
    gives their pixels back; this thread then only waits for it when a take does not fit. With
    workers=0 everything runs in the calling thread.
    """

    def __init__(self, model, sources, slot, results, plan, *, batch_size, budget, workers, on_result,
                 keep_depth, on_status):
        self.model, self.sources, self.slot, self.results, self.plan = model, sources, slot, results, plan
        self.config = model.config
        self.batch_size, self.limit, self.workers = batch_size, budget, workers
        self.on_result, self.keep_depth, self.on_status = on_result, keep_depth, on_status
        self.held = 0  # pixels taken from the budget
        self.queue = [(k, m) for k, (_, members) in enumerate(plan) for m in members]  # input takes, in order
        self.next_in = 0  # first of `queue` not taken yet
        self.decodes: dict[int, object] = {}  # source index -> future of (picture, message)
        self.dispatched = 0  # batches sent to the device so far
        self.pending: list[_Dispatched] = []  # dispatched batches whose results are not all out, oldest first
        self.compiled: set = set()
        self.pool = self.results_thread = None
        self.lock = threading.Condition()  # guards `held`, `handed` and `failure` (the results thread gives back)
        self.handed = 0  # chunks handed to the results thread and not done yet
        self.failure: BaseException | None = None  # raised by on_result in the results thread
        self.handoff: queue.SimpleQueue = queue.SimpleQueue()

    def fits(self, px: int) -> bool:
        with self.lock:
            return self.held == 0 or self.held + px <= self.limit

    def give_back(self, px: int):
        with self.lock:
            self.held -= px
            self.lock.notify_all()

    def wait_for_results(self, px: int) -> bool:
        """Wait until `px` fits or the results thread has nothing left to give back; whether it fits."""
        with self.lock:
            while not (self.held == 0 or self.held + px <= self.limit) and self.handed and self.failure is None:
                self.lock.wait()
            if self.failure is not None:
                raise self.failure
            return self.held == 0 or self.held + px <= self.limit

    def run(self):
        from concurrent.futures import ThreadPoolExecutor

        if self.workers > 0:
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dpt-jax-decode")
            self.results_thread = threading.Thread(target=self.hand_out, name="dpt-jax-results", daemon=True)
            self.results_thread.start()
        try:
            self.pump()
            for k in range(len(self.plan)):
                batch = self.gather(k)
                self.pending.append(batch)
                self.dispatched = k + 1
                self.pump()  # this batch's depth chunks, then the next batch's decodes
                while len(self.pending) > 1:  # results of the batch before, while the device runs this one
                    self.finish(self.pending.pop(0))
                    self.pump()
            while self.pending:
                self.finish(self.pending.pop(0))
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
            if self.results_thread is not None:
                self.handoff.put(None)  # what was handed over is still handed out, then the thread ends
                self.results_thread.join()
        if self.failure is not None:
            raise self.failure

    def pump(self):
        """Take what fits from the budget, in the one fixed order: depth chunks of dispatched batches
        (their resizes are dispatched now, right behind their batch), then the next inputs (their
        decodes start now), up to the batch after the last dispatched one."""
        while True:
            batch = next((b for b in self.pending if len(b.resized) < len(b.chunks)), None)
            if batch is not None:
                if not self.fits(batch.chunks[len(batch.resized)][3]):
                    return
                self.take_chunk(batch)
                continue
            if self.next_in == len(self.queue):
                return
            k, m = self.queue[self.next_in]
            h, w = self.sources[m].size
            if k > self.dispatched or not self.fits(h * w):
                return
            self.take_input(m)

    def take_input(self, m):
        h, w = self.sources[m].size
        with self.lock:
            self.held += h * w
        self.next_in += 1
        submit = self.pool.submit if self.pool is not None else _Deferred
        self.decodes[m] = submit(_decode, self.sources[m])

    def take_chunk(self, batch: _Dispatched):
        start, end, shape, px = batch.chunks[len(batch.resized)]
        with self.lock:
            self.held += px
        batch.resized.append(to_picture(self.config, batch.depth[start:end], shape))  # (end - start, h, w), dispatched

    def gather(self, k) -> _Dispatched:
        """Decode batch k (submitting what the budget did not let `pump` submit), resize it to the
        network size in chunks of at most `limit` picture pixels, and dispatch the model on it."""
        import jax.numpy as jnp

        size_hw, members = self.plan[k]
        inputs, order, failures = [], [], []  # network inputs (n_k, H, W, 3) and the sources they hold
        chunk: dict[tuple, list[tuple[int, np.ndarray]]] = {}  # one resize per (picture size, pixel type)
        chunk_px = 0
        shape_of = {}

        def flush():
            for g in chunk.values():
                inputs.append(to_network(self.config, jnp.asarray(np.stack([p for _, p in g])), size_hw))
                order.extend(m for m, _ in g)
                self.give_back(sum(self.sources[m].size[0] * self.sources[m].size[1] for m, _ in g))
            chunk.clear()

        for m in members:
            h, w = self.sources[m].size
            if chunk_px and chunk_px + h * w > self.limit:
                flush()
                chunk_px = 0
            while m not in self.decodes:
                self.pump()
                if m in self.decodes:
                    break
                if self.pending:
                    self.finish(self.pending.pop(0))  # give back what the batches before hold
                elif not self.wait_for_results(h * w):  # cannot happen (only this chunk is held, and it fits)
                    self.take_input(m)
            picture, message = self.decodes.pop(m).result()
            if message is not None:
                self.give_back(h * w)
                failures.append((m, message))
                continue
            shape_of[m] = picture.shape[:2]
            chunk.setdefault((picture.shape[:2], picture.dtype.str), []).append((m, picture))
            chunk_px += h * w
            del picture
        flush()
        if not order:
            return _Dispatched(None, [], failures, [], [])
        x = jnp.concatenate(inputs)  # (n, H, W, 3)
        inputs.clear()
        depth = self.apply(x, size_hw)  # (b, H, W)
        # Back to each picture's size, in chunks of consecutive pictures of one size within the budget.
        chunks, i = [], 0
        while i < len(order):
            ps = shape_of[order[i]]
            j, px = i + 1, ps[0] * ps[1]
            while j < len(order) and shape_of[order[j]] == ps and px + ps[0] * ps[1] <= self.limit:
                px += ps[0] * ps[1]
                j += 1
            chunks.append((i, j, ps, px))
            i = j
        return _Dispatched(depth, order, failures, chunks, [])

    def apply(self, x, size_hw):
        """The model on a batch (n, H, W, 3), padded up to a compiled batch size; dispatched, not awaited
        (except the first time a program is compiled, to time it)."""
        import time

        import jax.numpy as jnp

        n = x.shape[0]
        b = padded_batch(n, self.batch_size, self.model.num_devices)
        if b > n:  # pad so that a short last batch reuses a compiled program
            x = jnp.concatenate([x, jnp.zeros((b - n, *x.shape[1:]), x.dtype)], axis=0)
        new = (b, *size_hw) not in self.compiled
        if new and self.on_status is not None:
            self.on_status(f"compiling for {size_hw[0]}x{size_hw[1]} (batch {b})")
        t0 = time.perf_counter()
        depth = self.model.apply(x)  # (b, H, W)
        if new:
            depth.block_until_ready()
            self.compiled.add((b, *size_hw))
            if self.on_status is not None:
                self.on_status(f"compiled and ran {size_hw[0]}x{size_hw[1]} (batch {b}) "
                               f"in {time.perf_counter() - t0:.1f} s")
        return depth

    def finish(self, batch: _Dispatched):
        """Hand out a dispatched batch's results: its failures, then each chunk's depth maps, pulled to
        the host (waiting for the device) and given to on_result (by the results thread, if any)."""
        for m, message in batch.failures:
            self.hand(self.emit, m, error=message)
        for c in range(len(batch.chunks)):
            if c == len(batch.resized):  # not taken by pump: wait for the chunks before to be given back
                self.wait_for_results(batch.chunks[c][3])
                self.take_chunk(batch)
            self.hand(self.emit_chunk, batch, c)

    def hand(self, fn, *args, **kw):
        if self.results_thread is None:
            return fn(*args, **kw)
        with self.lock:
            if self.failure is not None:
                raise self.failure
            self.handed += 1
        self.handoff.put((fn, args, kw))

    def hand_out(self):
        """The results thread: runs what `hand` gave it, in order, until None; after an error in
        on_result, only gives the pixels back (the calling thread raises the error)."""
        while (job := self.handoff.get()) is not None:
            fn, args, kw = job
            try:
                if self.failure is None:
                    fn(*args, **kw)
                elif fn == self.emit_chunk:
                    batch, c = args
                    batch.resized[c] = None
                    self.give_back(batch.chunks[c][3])
            except BaseException as e:  # noqa: BLE001 (handed to the calling thread)
                with self.lock:
                    self.failure = e
                if fn == self.emit_chunk:
                    self.give_back(args[0].chunks[args[1]][3])
            finally:
                with self.lock:
                    self.handed -= 1
                    self.lock.notify_all()

    def emit_chunk(self, batch: _Dispatched, c: int):
        start, end, _, px = batch.chunks[c]
        back = np.asarray(batch.resized[c])  # (end - start, h, w)
        batch.resized[c] = None
        for m, d in zip(batch.order[start:end], back):
            self.emit(m, depth=d)
        del back
        self.give_back(px)

    def emit(self, m, *, depth=None, error=None):
        result = self.results[self.slot[m]]
        result.depth, result.error = depth, error
        _emit(self.on_result, result, self.keep_depth)
