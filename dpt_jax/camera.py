"""Depth from a camera, frame after frame, as MiDaS's run.py does when it is given no input.

    Device(index)                    frames (h, w, 3) uint8 RGB of camera `index`, captured by PyAV (FFmpeg's
                                     v4l2 on Linux, avfoundation on macOS)
    run(model, frames, outdir, ...)  the depth of each frame: shown in a window (`show`), or written to
                                     OUTDIR/camera-000000-depth.png, ... (colour, each frame's own range);
                                     Ctrl-C (KeyboardInterrupt) ends it cleanly, the frames done are kept

The frame source is any iterable of pictures, so the loop runs on recorded or synthetic frames too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import VideoError

#: FFmpeg's capture device format and the device's name for camera `index`, by platform.
DEVICES = {"linux": ("v4l2", "/dev/video{index}"), "darwin": ("avfoundation", "{index}")}
PREFIX = "camera-"


class Device:
    """Frames of one camera through PyAV; opened at once, so a missing camera is named before any model loads."""

    def __init__(self, index: int = 0):
        from .video import _pyav

        av = _pyav()
        platform = next((p for p in DEVICES if sys.platform.startswith(p)), None)
        if platform is None:
            raise VideoError(f"camera {index}", f"camera capture is supported on Linux and macOS; not on "
                                                f"{sys.platform} (record a video and give its file instead)")
        device_format, name = DEVICES[platform]
        self.name = name.format(index=index)
        try:
            self._container = av.open(self.name, format=device_format)
        except (av.FFmpegError, OSError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise VideoError(f"camera {index}", f"cannot open {self.name} ({device_format}): {reason}") from None

    def __iter__(self):
        for frame in self._container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")  # (h, w, 3)

    def close(self):
        self._container.close()


def _first_free(outdir: Path) -> int:
    """The first frame number after every camera frame already in `outdir` (a new run never replaces one)."""
    pattern = PREFIX + "[0-9]" * 6 + "-*"
    numbers = [int(p.name[len(PREFIX):len(PREFIX) + 6]) for p in outdir.glob(pattern)]
    return max(numbers, default=-1) + 1


def run(model, frames: Iterable[np.ndarray], outdir=None, *, show: Callable[[np.ndarray], bool] | None = None,
        cmap: str = "inferno", limit: int | None = None, on_status: Callable[[str], None] | None = None) -> int:
    """Depth of every frame of `frames` until they end, `limit` frames are done, `show` returns False or
    Ctrl-C is pressed; returns the number of frames done. The caller closes its source.

    `show(colour)`: called with each colour depth map (h, w, 3) uint8 (a live window); otherwise each is
    written to `outdir` as camera-NNNNNN-depth.png (numbers continue after the ones there).
    """
    from .output import FORMATS, colorize, write_depth

    if show is None and outdir is None:
        raise ValueError("give outdir (frames written there) or show (a window)")
    if outdir is not None:
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        first = _first_free(outdir)
    if model.config.is_temporal:  # a video model: one frame at a time with its temporal states
        from .video_depth import DepthStream

        depth_of = DepthStream(model)
    else:
        depth_of = model.predict
    done = 0
    source = iter(frames)
    try:
        for frame in source:
            depth = depth_of(frame)  # (h, w); the first frame compiles the model's program
            if show is not None:
                if show(colorize(depth, cmap)) is False:
                    break
            else:
                path = outdir / f"{PREFIX}{first + done:06d}{FORMATS['color'].ending}"
                write_depth(path, depth, "color", replace=False, cmap=cmap)
            done += 1
            if on_status is not None and (done == 1 or done % 100 == 0):
                on_status(f"{done} frame{'s' if done != 1 else ''} done")
            if limit is not None and done >= limit:
                break
    except KeyboardInterrupt:
        if on_status is not None:
            on_status(f"stopped (Ctrl-C) after {done} frame{'s' if done != 1 else ''}")
    return done


def window(title: str = "dpt-jax depth"):
    """A `show` for `run`: an OpenCV window (Esc or q closes it); None when OpenCV or a display is missing."""
    import os

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return None
    try:
        import cv2
    except ImportError:
        return None

    def show(colour: np.ndarray) -> bool:
        cv2.imshow(title, colour[:, :, ::-1])  # OpenCV draws BGR
        return cv2.waitKey(1) & 0xFF not in (27, ord("q"))

    return show
