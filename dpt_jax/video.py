"""Depth for videos: frames decoded with PyAV, batched through the picture pipeline's steps, encoded again.

    video (any container and codec FFmpeg reads)
      -> frames (h, w, 3) uint8, in batches of `batch_size`         decoded on the host
      -> normalize_and_resize -> model.apply -> resize_depth        as for pictures (pipeline.run), on device
      -> inverse depth (b, h, w) float32                            -> optional .npy stack (raw values)
      -> one mapping to [0, 1] for the whole video, or a running one -> inferno colour (b, h, w, 3) uint8
      -> encoded video (optionally input | depth side by side), optional 16-bit PNG frames

Every batch has the same shape (a short last batch is padded), so a video compiles one model
program. The colour mapping is never per frame (per-frame min/max makes the colours flicker):

  * "global" (default): min and max of the inverse depth over all frames, so a colour means one
    inverse depth throughout. The first pass runs the model on every frame and keeps its raw output
    (network size, float32, e.g. 256 KiB a frame at 256x256) in an anonymous temporary file, not in
    memory; the second pass reads it back, resizes, colours and encodes. Disk, not memory, grows
    with the clip; the model runs once a frame.
  * "running": one pass. Frame t is scaled by r_t = a r_{t-1} + (1 - a) m_t, an exponential moving
    average of the per-frame (min, max) m_t with r_0 = m_0 and a = `smoothing` (default 0.9, a time
    constant of about 10 frames), computed on the device in a scan over each batch, its state
    carried across batches. It follows cuts and zooms without flicker; values outside r_t are clipped.

Frames keep their count and the stream's average frame rate (timestamps are renumbered at that
constant rate; audio and subtitles are dropped). Outputs are written through temporary files and
renamed: a video that fails to decode (corrupt, or truncated: fewer frames than its index declares)
raises VideoError naming it and leaves no video file; frames (`frames_format`) decoded before the
failure are still written, as the user asked for frames, and the VideoError says where (its `kept`).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_write
from .errors import VideoError

#: File suffixes the command line treats as videos (anything FFmpeg reads works through the API).
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                  ".wmv", ".flv", ".3gp", ".ogv"}
#: Output containers by suffix, and the codecs tried for them in order.
CONTAINERS = {".mp4": ("mp4", ("libx264", "mpeg4")), ".m4v": ("mp4", ("libx264", "mpeg4")),
              ".mov": ("mov", ("libx264", "mpeg4")), ".mkv": ("matroska", ("libx264", "mpeg4")),
              ".webm": ("webm", ("libvpx-vp9", "libvpx")), ".avi": ("avi", ("mpeg4",))}

NORMALIZATIONS = ("global", "running")


def is_video(path) -> bool:
    """Whether the command line should treat `path` as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoResult:
    frames: int  # frames decoded and predicted
    fps: Fraction
    size: tuple[int, int]  # (h, w) of the frames
    processed_size: tuple[int, int]  # (H, W) the model ran at
    video: Path | None  # the depth video written
    frames_path: Path | None  # the .npy stack or the folder of 16-bit PNGs
    seconds: float  # wall time of the whole call: decoding, compiling, model, encoding
    depth_range: tuple[float, float] | None  # global: the (min, max) inverse depth mapped to the colours

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------------
# Reading


def _pyav():
    """The PyAV module; a clear error naming the extra to install when it is absent."""
    try:
        import av
    except ImportError:
        raise RuntimeError("videos need PyAV, which is not installed: pip install 'dpt-jax[video]'") from None
    return av


class _Reader:
    """Frames of the first video stream of `src`, as (h, w, 3) uint8 RGB, with their count checked at the end."""

    def __init__(self, src):
        av = _pyav()
        self.name = str(src)
        path = Path(src)
        if not path.is_file():
            raise VideoError(self.name, "no such file" if not path.exists() else "not a file")
        if path.stat().st_size == 0:
            raise VideoError(self.name, "the file is empty")
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise VideoError(self.name, f"cannot open as a video: {_reason(e)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(self.name, "has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.declared_frames = self._stream.frames or None  # from the container's index; 0 when unknown
        self.declared_pixels = (self._stream.codec_context.width or 0) * (self._stream.codec_context.height or 0)
        if self.declared_pixels:  # the frame size its header declares, checked before any frame is decoded
            try:
                _check_pixels(self.name, self._stream.codec_context.height, self._stream.codec_context.width)
            except VideoError:
                self._container.close()
                raise
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else Fraction(25)
        self.size: tuple[int, int] | None = None  # (h, w) as displayed, from the first frame
        self.decoded = 0

    def __iter__(self):
        av = _pyav()
        try:
            for frame in self._container.decode(self._stream):
                rgb = _upright(frame.to_ndarray(format="rgb24"), frame.rotation)  # (h, w, 3)
                if self.size is None:
                    self.size = rgb.shape[:2]
                    _check_pixels(self.name, *self.size)
                elif rgb.shape[:2] != self.size:
                    raise VideoError(self.name, f"frame {self.decoded} is {rgb.shape[1]}x{rgb.shape[0]}; "
                                                f"the video started at {self.size[1]}x{self.size[0]}")
                self.decoded += 1
                yield rgb
        except (av.FFmpegError, OSError) as e:
            raise VideoError(self.name, f"cannot decode frame {self.decoded}: {_reason(e)}") from None
        if self.decoded == 0:
            raise VideoError(self.name, "no frame could be decoded")
        if self.declared_frames and self.decoded < self.declared_frames:
            raise VideoError(self.name, f"truncated or corrupt: decoded {self.decoded} of the "
                                        f"{self.declared_frames} frames its index declares")

    def close(self):
        self._container.close()


def frames_of(src):
    """The frames of a video file, (h, w, 3) uint8 RGB as players show them, decoded as they are asked for."""
    reader = _Reader(src)
    try:
        yield from reader
    finally:
        reader.close()


def _upright(rgb, rotation):
    """A frame turned as players show it: `rotation` is the display matrix's counter-clockwise angle."""
    k = int(round(rotation / 90)) % 4 if rotation else 0
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _reason(e) -> str:
    return getattr(e, "strerror", None) or str(e)


def _check_pixels(name, h, w):
    from .pictures import MAX_PIXELS

    if h * w > MAX_PIXELS:
        raise VideoError(name, f"{w}x{h} frames are over the limit of {MAX_PIXELS:,} pixels (pictures.MAX_PIXELS)")


def _batches(frames, n):
    """Lists of n frames (the last one shorter); frames decoded before a VideoError come out before it."""
    batch = []
    try:
        for f in frames:
            batch.append(f)
            if len(batch) == n:
                yield batch
                batch = []
    except VideoError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------
# Writing


class _VideoWriter:
    """An encoded video that appears at `path` on commit(), and not at all on discard()."""

    def __init__(self, path: Path, size: tuple[int, int], fps: Fraction, replace: bool = True):
        av = _pyav()
        suffix = path.suffix.lower()
        container_format, codec = _codec_for(path)
        self._atomic = atomic_write(path, suffix, replace=replace)
        f = self._atomic.__enter__()
        try:
            self._container = av.open(f, "w", format=container_format)
            self._stream = self._container.add_stream(codec, rate=fps)
            self.height, self.width = (s + s % 2 for s in size)  # 4:2:0 chroma needs even sides: edge pixels repeated
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self._stream.options = {"crf": "18", "preset": "medium"}
            elif codec.startswith("libvpx"):
                self._stream.options = {"crf": "24", "b": "0"}
            else:
                self._stream.bit_rate = max(2_000_000, int(self.width * self.height * float(fps) * 0.4))
            self._time_base = Fraction(fps.denominator, fps.numerator)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self.count = 0

    def write(self, rgb: np.ndarray):
        av = _pyav()
        h, w = rgb.shape[:2]
        if (h, w) != (self.height, self.width):
            rgb = np.pad(rgb, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = self.count, self._time_base
        self._container.mux(self._stream.encode(frame))
        self.count += 1

    def commit(self):
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self._atomic.__exit__(None, None, None)

    def discard(self):
        try:
            self._container.close()
        except Exception:  # the file is deleted anyway
            pass
        error = RuntimeError("discarded")
        self._atomic.__exit__(RuntimeError, error, None)


def _codec_for(path: Path) -> tuple[str, str]:
    """(container format, encoder) for a video written to `path`, by its suffix."""
    suffix = path.suffix.lower()
    if suffix not in CONTAINERS:
        raise ValueError(f"{path}: cannot write a {suffix or 'suffix-less'} video; use one of {', '.join(CONTAINERS)}")
    container_format, codecs = CONTAINERS[suffix]
    codec = next((c for c in codecs if _can_encode(c)), None)
    if codec is None:
        raise RuntimeError(f"this FFmpeg build has none of the encoders {', '.join(codecs)} for {suffix} videos")
    return container_format, codec


@functools.cache
def _can_encode(codec: str) -> bool:
    av = _pyav()
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------------
# Device steps (each compiled once per shape)


def _jitted():
    """The small device programs, built on first use (importing this module does not import JAX)."""
    import jax
    import jax.numpy as jnp

    from .preprocess import resize_depth

    @functools.partial(jax.jit, static_argnames=("size", "method"))
    def resized_with_range(net_depth, size, method="bicubic"):
        """(b, H, W) network output -> (b, h, w) inverse depth as pictures get it, and its per-frame min, max (b,)."""
        depth = resize_depth(net_depth, size, method)
        return depth, depth.min(axis=(1, 2)), depth.max(axis=(1, 2))

    @jax.jit
    def running_range(lo, hi, state, a):
        """Exponential moving average of the per-frame (lo, hi): (b, 2) ranges and the state to carry on."""
        def step(previous, m):  # (2,), (2,)
            r = jnp.where(jnp.isnan(previous), m, a * previous + (1 - a) * m)
            return r, r
        state, ranges = jax.lax.scan(step, state, jnp.stack([lo, hi], -1))
        return ranges, state

    @jax.jit
    def render(depth, lo, hi, table):
        """(b, h, w) inverse depth and the (b,) range mapped to [0, 1] -> colours of `table` (256, 3)
        (b, h, w, 3) uint8 and 16-bit (b, h, w)."""
        lo, hi = lo[:, None, None], hi[:, None, None]
        flat = hi - lo <= jnp.finfo(jnp.float32).eps * jnp.maximum(jnp.abs(hi), 1.0)  # as output.normalized
        v = jnp.where(flat, 0.0, jnp.clip((depth - lo) / jnp.where(flat, 1.0, hi - lo), 0.0, 1.0))
        colour = table[jnp.round(v * 255).astype(jnp.int32)]
        return colour, jnp.round(v * 65535).astype(jnp.uint16)

    return resized_with_range, running_range, render


_device_steps = functools.cache(_jitted)


# ------------------------------------------------------------------------------------------------
# The whole video


def predict_video(model, src, dst, *, batch_size: int = 8, normalize: str = "global", smoothing: float | None = None,
                  side_by_side: bool = False, frames_format: str | None = None, frames_path=None,
                  keep_aspect_ratio: bool | None = None, progress: Callable[[int], None] | None = None,
                  cmap: str = "inferno", on_status: Callable[[str], None] | None = None,
                  replace: bool = True, size=None, streaming: bool = False) -> VideoResult:
    """Write the depth video of `src` to `dst` (.mp4, .mov, .mkv, .webm or .avi); see the module docstring.

    `batch_size`: frames a model call (the whole clip if shorter). `normalize`: "global" or
    "running"; `smoothing`: the running average's weight of the past, in [0, 1) (default 0.9;
    "running" only). `side_by_side`: the video shows input | depth, twice as wide.
    `frames_format`: also write "npy" (an (n, h, w) float32 stack of the raw inverse depth, as
    `predict --format npy` writes for a picture) or "png16" (16-bit PNGs of the mapped inverse
    depth, one a frame); `frames_path` defaults to `dst` with the suffix .npy, or without a suffix
    for the PNG folder. `dst` may be None to write only the frames. `progress(n)` is called as each
    batch of n frames has run through the model.
    `size`: the network input target instead of the native size (an int N, or (H, W) for picture
    models), as `predict`'s; for a temporal model the lower bound of its input (the original's
    `input_size`). Temporal models (`config.is_temporal`, Video Depth Anything) run the video in
    windows aligned to each other (`video_depth.window_depth`: at most two windows of frames in
    memory), or with `streaming` one frame at a time (`video_depth.DepthStream`); the raw depth
    spilled for "global" is then at the frames' size (the alignment works there).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got {normalize!r}")
    if normalize == "global" and smoothing is not None:
        raise ValueError("smoothing applies to normalize='running' only (a global mapping has nothing to smooth)")
    smoothing = 0.9 if smoothing is None else float(smoothing)
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1); got {smoothing}")
    from .output import FORMATS

    if frames_format is not None and getattr(FORMATS.get(frames_format), "frames", None) is None:
        known = ", ".join(n for n, f in FORMATS.items() if f.frames is not None)
        raise ValueError(f"frames_format must be None or one of {known}; got {frames_format!r}")
    if dst is None and frames_format is None:
        raise ValueError("nothing to write: give dst, frames_format, or both")
    dst = None if dst is None else Path(dst)
    if frames_format is not None and frames_path is None:
        if dst is None:
            raise ValueError("give frames_path when dst is None")
        frames_path = dst.with_suffix(Path(FORMATS[frames_format].frames_ending).suffix)
    frames_path = None if frames_path is None else Path(frames_path)
    if dst is not None and frames_path is not None and dst.resolve() == frames_path.resolve():
        raise ValueError(f"the video and the frames would both be {dst}")
    src_path = Path(src)
    for out in (dst, frames_path):
        if out is not None and src_path.exists() and out.resolve() == src_path.resolve():
            raise ValueError(f"refusing to overwrite the input video {src}")

    if dst is not None:
        _codec_for(dst)
    start = time.perf_counter()
    run = _Run(model, src, dst, batch_size, normalize, smoothing, side_by_side, frames_format, frames_path,
               keep_aspect_ratio, progress, cmap, on_status, replace, size, streaming)
    try:
        try:
            run.first_pass()
        finally:
            run.reader.close()
        if normalize == "global" and run.decoded:
            run.second_pass()
    except BaseException:  # not a decoding failure (those are kept in run.error): nothing is left behind
        run.abort()
        raise
    run.finish()
    if run.error is not None:
        if run.frames is not None:  # the frames decoded before the failure were written: the error says where
            error = VideoError(run.error.where, f"{run.error.message}; the {run.decoded} frames decoded before it "
                                                f"were written to {frames_path}")
            error.kept = frames_path
            raise error
        raise run.error
    frames = frames_path if run.frames is not None else None
    return VideoResult(run.decoded, run.fps, run.size, run.net_size, dst if run.video else None, frames,
                       time.perf_counter() - start, run.depth_range)


def _identity(path) -> tuple[int, int, int]:
    """What says a file is still the one read before: inode, size, modification time."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Run:
    """One predict_video call: pass 1 runs the model; pass 2 ("global" only) maps, colours and encodes."""

    def __init__(self, model, src, dst, batch_size, normalize, smoothing, side_by_side, frames_format, frames_path,
                 keep_aspect_ratio, progress, cmap="inferno", on_status=None, replace=True, size=None, streaming=False):
        from .output import colormap

        self.table = colormap(cmap)
        self.model, self.src, self.dst = model, src, dst
        self.normalize, self.smoothing, self.side_by_side = normalize, smoothing, side_by_side
        self.frames_format, self.frames_path, self.progress = frames_format, frames_path, progress
        self.keep = model.config.keep_aspect_ratio if keep_aspect_ratio is None else keep_aspect_ratio
        self.reader = _Reader(src)
        c = model.config
        if c.is_temporal and size is not None and not isinstance(size, int):
            raise ValueError(f"{c.name} takes one input size (the lower bound of its input); got {size}")
        if streaming and not c.is_temporal:
            raise ValueError(f"streaming applies to temporal models; {c.name} runs each frame alone")
        self.identity = _identity(src)  # pass 2 decodes the file again: it must still be this file
        self.fps = self.reader.fps
        self.batch = min(batch_size, self.reader.declared_frames or batch_size)
        if self.reader.declared_pixels:  # decoded frames held at once stay within the pipeline's pixel budget
            from .pipeline import PIXEL_BUDGET

            self.batch = max(1, min(self.batch, PIXEL_BUDGET // self.reader.declared_pixels))
        self.on_status, self.replace = on_status, replace
        self.target, self.streaming = size, streaming
        self.video = self.frames = self.spill = None  # frames: the writer of the frames format
        self.size = self.net_size = None
        self.spilled_size = None  # (h, w) of a spilled depth frame: the network's, or the frames' (temporal)
        self.decoded = 0
        self.error: VideoError | None = None
        self.lo, self.hi = np.inf, -np.inf  # global range so far
        self.state = None  # running range carried across batches
        self.depth_range = None

    # -- pass 1 --------------------------------------------------------------------------------

    def _predicted(self):
        """(frames, raw depth to spill, depth (b, h, w), its per-frame min (b,), max (b,)) batches, in order."""
        import jax.numpy as jnp

        from .overlap import first_call
        from .preprocess import to_network

        c = self.model.config
        if c.is_temporal:
            from . import video_depth

            if self.streaming:
                stream = video_depth.DepthStream(self.model, input_size=self.target)
                chunks = (([f], stream(f)[None]) for f in self.reader)
            else:
                chunks = video_depth.window_depth(self.model, self.reader, input_size=self.target)
            for frames, depth in chunks:  # (b, h, w) float32 at the frames' size, final
                if self.net_size is None:
                    self._open()
                yield frames, depth, depth, depth.min(axis=(1, 2)), depth.max(axis=(1, 2))
            return
        resized_with_range = _device_steps()[0]
        compiled = False
        for frames in _batches(self.reader, self.batch):
            if self.net_size is None:
                self._open()
            n = len(frames)
            pixels = np.stack(frames + [np.zeros_like(frames[0])] * (self.batch - n))  # (batch, h, w, 3)
            images = to_network(c, jnp.asarray(pixels), self.net_size)  # (batch, H, W, 3)
            if compiled:
                net = self.model.apply(images)  # (batch, H, W)
            else:  # the first batch compiles the model's program: said and timed as for pictures
                net = first_call(lambda: self.model.apply(images), self.net_size, self.batch, self.on_status)
                compiled = True
            depth, lo, hi = resized_with_range(net, self.size, c.output_resize)  # (batch, h, w), (batch,), (batch,)
            yield frames, net[:n], depth[:n], lo[:n], hi[:n]

    def first_pass(self):
        import jax.numpy as jnp

        _, running_range, render = _device_steps()
        pending = None  # the previous batch: finished while the device runs the next one
        try:
            for frames, net, depth, lo, hi in self._predicted():
                if self.normalize == "running":
                    if self.state is None:
                        self.state = jnp.full((2,), jnp.nan, jnp.float32)
                    ranges, self.state = running_range(lo, hi, self.state, jnp.float32(self.smoothing))
                    mapped = render(depth, ranges[:, 0], ranges[:, 1], self.table)
                else:
                    mapped = None
                if pending is not None:
                    self._finish_batch(*pending)
                pending = (frames, net, depth, lo, hi, mapped)
            if pending is not None:
                self._finish_batch(*pending)
        except VideoError as e:
            if pending is not None:  # frames decoded before the failure
                self._finish_batch(*pending)
            self.error = e

    def _open(self):
        from .preprocess import network_size

        self.size = self.reader.size
        c = self.model.config
        try:
            if c.is_temporal:
                from . import video_depth

                self.net_size = video_depth.network_size(c, self.size, self.target)
            else:
                self.net_size = network_size(c, self.size, target=self.target, keep_aspect_ratio=self.keep)
        except ValueError as e:
            raise ValueError(f"{self.reader.name}: {e}") from None
        self.spilled_size = self.size if c.is_temporal else self.net_size
        self._fit_memory()
        if self.frames_format is not None:
            from .output import FORMATS

            self.frames = FORMATS[self.frames_format].frames(self.frames_path, self.size, self.replace)
        if self.normalize == "global":
            self.spill = tempfile.TemporaryFile(prefix="dpt-jax-depth-")
            if self.on_status is not None:
                h, w = self.spilled_size
                frames = self.reader.declared_frames
                size = f"about {frames * h * w * 4 / 1e6:,.0f} MB" if frames else f"{h * w * 4 / 1e6:.1f} MB a frame"
                self.on_status(f"{self.reader.name}: the raw depth waits for the second pass in a temporary file in "
                               f"{tempfile.gettempdir()} ({size}; TMPDIR chooses the folder)")
        elif self.dst is not None:
            self.video = _VideoWriter(self.dst, self._video_size(), self.fps, self.replace)

    def _fit_memory(self):
        """Frames a model call within the memory budget (memory.py); a frame size no call can take is refused."""
        from .memory import largest_batch, over_budget

        c = self.model.config
        if c.is_temporal:  # a window of temporal_frames frames is one call (one frame when streaming)
            reason = over_budget(c, 1 if self.streaming else c.temporal_frames, self.net_size)
            if reason is not None:
                raise VideoError(self.reader.name, f"{reason}; --input-size sets the size videos run at")
            return
        reason = over_budget(c, 1, self.net_size)
        if reason is not None:
            raise VideoError(self.reader.name, f"{reason}; the model's native_size sets the size videos run at")
        self.batch = min(self.batch, largest_batch(c, self.net_size))

    def _video_size(self):
        h, w = self.size
        return (h, 2 * w) if self.side_by_side else (h, w)

    def _finish_batch(self, frames, net, depth, lo, hi, mapped):
        n = len(frames)
        if self.frames is not None and self.frames.takes == "depth":
            self.frames.write(np.asarray(depth))
        if self.normalize == "global":
            self.spill.write(np.asarray(net, np.float32).tobytes())
            self.lo, self.hi = min(self.lo, float(lo.min())), max(self.hi, float(hi.max()))
        else:
            self._emit(frames, *mapped)
        self.decoded += n
        if self.progress is not None:
            self.progress(n)

    def _emit(self, frames, colour, sixteen):
        if self.frames is not None and self.frames.takes == "mapped16":
            self.frames.write(np.asarray(sixteen))
        if self.video is not None and self.error is None:
            colour = np.asarray(colour)  # (b, h, w, 3)
            if self.side_by_side:
                colour = np.concatenate([np.stack(frames), colour], axis=2)  # (b, h, 2w, 3)
            for c in colour:
                self.video.write(c)

    # -- pass 2 ("global") ---------------------------------------------------------------------

    def second_pass(self):
        import jax.numpy as jnp

        resized_with_range, _, render = _device_steps()
        self.depth_range = (self.lo, self.hi)
        if self.dst is not None and self.error is None:
            self.video = _VideoWriter(self.dst, self._video_size(), self.fps, self.replace)
        if self.video is None and (self.frames is None or self.frames.takes != "mapped16"):
            return
        h_net, w_net = self.spilled_size
        self.spill.seek(0)
        inputs = None
        if self.video is not None and self.side_by_side:
            if _identity(self.src) != self.identity:
                raise VideoError(self.src, "the file changed while it was processed (the global normalisation "
                                           "reads it twice); nothing written, run again")
            reader = _Reader(self.src)  # decoded again rather than kept: memory stays one batch
            inputs = _batches(iter(reader), self.batch)
        try:
            for k in range(0, self.decoded, self.batch):
                n = min(self.batch, self.decoded - k)
                net = np.frombuffer(self.spill.read(n * h_net * w_net * 4), np.float32).reshape(n, h_net, w_net)
                if n < self.batch:  # the same program as full batches
                    net = np.concatenate([net, np.zeros((self.batch - n, h_net, w_net), np.float32)])
                if self.model.config.is_temporal:  # spilled at the frames' size already
                    depth = jnp.asarray(net)
                else:
                    depth = resized_with_range(jnp.asarray(net), self.size, self.model.config.output_resize)[0]
                bounds = jnp.full((self.batch,), self.lo, jnp.float32), jnp.full((self.batch,), self.hi, jnp.float32)
                colour, sixteen = render(depth, *bounds, self.table)
                frames = next(inputs, None) if inputs is not None else [None] * n
                if frames is None or len(frames) != n:
                    raise VideoError(self.src, "the file changed while it was processed (fewer frames the second "
                                               "time it was read); nothing written, run again")
                self._emit(frames, colour[:n], sixteen[:n])
        finally:
            if inputs is not None:
                reader.close()

    # -- outputs -------------------------------------------------------------------------------

    def abort(self):
        """Remove every output file in the making (16-bit PNGs already written are whole and stay)."""
        if self.spill is not None:
            self.spill.close()
        for out in (self.frames, self.video):
            if out is not None:
                out.discard()

    def finish(self):
        """Keep the frames written (even after a failure: the user asked for them); the video only on success."""
        if self.spill is not None:
            self.spill.close()
        if self.frames is not None:
            self.frames.commit()
        if self.video is not None:
            if self.error is None:
                self.video.commit()
            else:
                self.video.discard()
