"""Depth of a whole video with a temporal model (Video Depth Anything), as the original computes it.

    frames (h, w, 3) uint8 RGB, any number, read as needed
      -> windows of 32 frames, 22 apart (the last frame repeated to fill the last window);
         positions 0..9 of window k >= 1 are the previous window's keyframes [0, 12, 24..31]
      -> to_network (lower bound `input_size`, multiple of 14, ImageNet mean/std) -> the model on
         the 32 frames at once -> bilinear (align_corners=True) to the frames' size    on device
      -> relative models: each window scaled and shifted (least squares over its positions 0, 1
         against the aligned depth of frame 0 and of the previous window's position 12);
         metric models: kept as they are; negative values clipped
      -> the 8 frames the windows share blended linearly (weights 0, 1/7, ..., 1)      on the host
      -> depth (k, h, w) float32, in chunks as soon as no later window can change them

`window_depth` is `VideoDepthAnything.infer_video_depth` of the original, except that it reads
frames as it needs them and hands depth on as it is final, so memory holds at most two windows
of frames whatever the video's length (the original holds every frame and every depth map).
`DepthStream` is the original's streaming class (`video_depth_stream.py`): one frame at a time,
each attending to the cached states of up to 31 earlier frames.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np

WINDOW = 32  # frames the model sees at once (INFER_LEN)
OVERLAP = 10  # positions of a window taken from the previous one
KEYFRAMES = (0, 12, 24, 25, 26, 27, 28, 29, 30, 31)  # the previous window's positions that fill them
BLEND = 8  # frames blended across two windows (INTERP_LEN)
STEP = WINDOW - OVERLAP  # 22: the first frames of consecutive windows
ALIGN = OVERLAP - BLEND  # 2: positions 0 and 1 align a window to the previous ones
#: the streaming context: frame 0 and the oldest kept frame, then the newest (WINDOW - 3) frames
STREAM_KEPT = 2 * STEP - 1 - ALIGN  # 41: frames a stream's cache reaches back (the original's `gap`)


def input_size(frame_size: tuple[int, int], requested: int) -> int:
    """The lower bound the frames are resized to: `requested`, reduced as the original for frames wider than 16:9.

    ratio = long side / short side; above 1.78 the size becomes round(int(requested * 1.777 / ratio) / 14) * 14
    (Python's round: ties to even), to bound the memory of a window.
    """
    h, w = frame_size
    ratio = max(h, w) / min(h, w)
    if ratio > 1.78:
        requested = round(int(requested * 1.777 / ratio) / 14) * 14
    return requested


def network_size(config, frame_size: tuple[int, int], requested: int | None = None) -> tuple[int, int]:
    """(H, W) a temporal model runs frames of `frame_size` at (`requested`: the lower bound, default native)."""
    from .preprocess import network_size as picture_network_size

    lower = input_size(frame_size, requested or config.native_size[0])
    if lower < config.input_multiple:
        raise ValueError(f"input size {lower} for {frame_size[1]}x{frame_size[0]} frames is under "
                         f"{config.input_multiple}, the smallest side {config.name} takes")
    return picture_network_size(config, frame_size, target=lower)


def scale_and_shift(prediction: np.ndarray, target: np.ndarray) -> tuple:
    """Least-squares (s, t) with s * prediction + t ~ target, every pixel weighted 1, in float32 sums
    (the original's compute_scale_and_shift); (1, 0) when the system is singular."""
    p, t = prediction.astype(np.float32), target.astype(np.float32)
    mask = np.ones_like(p)
    a_00, a_01, a_11 = np.sum(mask * p * p), np.sum(mask * p), np.sum(mask)
    b_0, b_1 = np.sum(mask * p * t), np.sum(mask * t)
    det = a_00 * a_11 - a_01 * a_01
    if det == 0:
        return 1, 0
    return (a_11 * b_0 - a_01 * b_1) / det, (-a_01 * b_0 + a_00 * b_1) / det


def blend(previous: list, following: list) -> list:
    """The frames two windows share: previous * (1 - w) + following * w, w from 0 to 1 in equal steps."""
    n = len(previous)
    weights = [0.0] + [i * (1.0 / (n - 1)) for i in range(1, n - 1)] + [1.0]
    return [p * (1 - w) + f * w for p, f, w in zip(previous, following, weights)]


def _window(model, frames: np.ndarray, net_size, frame_size) -> np.ndarray:
    """(WINDOW, h, w, 3) uint8 frames -> (WINDOW, h, w) depth at the frames' size (compiled once per video size)."""
    from .preprocess import to_network, to_picture

    images = to_network(model.config, frames, net_size)  # (32, H, W, 3)
    return np.asarray(to_picture(model.config, model.apply_clip(images, WINDOW), frame_size))  # (32, h, w)


def window_depth(model, frames: Iterable[np.ndarray], *, input_size: int | None = None,
                 ) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
    """(frames, depth (k, h, w) float32) chunks for `frames` in order, each as soon as it is final.

    `frames`: (h, w, 3) uint8 RGB, all of one size (an iterable: read as needed). `input_size`:
    the lower bound of the network input (default the model's native size, 518).
    """
    config = model.config
    reader = iter(frames)
    first = next(reader, None)
    if first is None:
        return
    frame_size = first.shape[:2]
    net_size = network_size(config, frame_size, input_size)
    waiting = deque([(0, first)])  # (index, frame) of frames read and not yet handed on
    read = 1
    last = first
    exhausted = False

    def take(n):  # the next n frames, the last real frame repeated once the video ends
        nonlocal read, last, exhausted
        out = []
        for _ in range(n):
            frame = None if exhausted else next(reader, None)
            if frame is None:
                exhausted = True
                out.append(last)
                continue
            waiting.append((read, frame))
            read += 1
            last = frame
            out.append(frame)
        return out

    window = [first] + take(WINDOW - 1)  # positions 0..31 of window 0
    start = 0
    reference = pending = None
    while True:
        depth = _window(model, np.stack(window), net_size, frame_size)  # (32, h, w)
        if reference is None:
            aligned = list(depth)  # window 0 as it is
            reference = [depth[0], depth[12]]
        else:
            if config.is_metric:
                s, t = 1.0, 0.0
            else:
                s, t = scale_and_shift(np.concatenate(list(depth[:ALIGN])), np.concatenate(reference))
            fitted = [np.maximum(d * s + t, 0, dtype=np.float32) for d in depth]  # clipped at 0 as the original
            aligned = blend(pending, fitted[ALIGN:OVERLAP]) + fitted[OVERLAP:]
            reference = [reference[0], fitted[KEYFRAMES[1]]]
        more = start + STEP < read  # the next window's first frame exists
        final = aligned if not more else aligned[:-BLEND]
        pending = aligned[-BLEND:]
        first_index = start if start == 0 else start + ALIGN
        chunk = []
        for d in final:
            index = first_index + len(chunk)
            if not waiting or waiting[0][0] != index:
                break  # past the end: padding
            chunk.append((waiting.popleft()[1], d))
        if chunk:
            yield [f for f, _ in chunk], np.stack([d for _, d in chunk]).astype(np.float32)
        if not more:
            return
        window = [window[k] for k in KEYFRAMES] + take(WINDOW - OVERLAP)
        start += STEP


class DepthStream:
    """Depth one frame at a time (cameras, pipes), as the original's streaming class.

    Each frame runs alone through the encoder; its temporal modules attend to the cached states of
    frame 0, of the oldest kept frame and of the 29 newest (copies of frame 0 until there are
    enough), then its own states are cached. No alignment: `stream(frame)` -> (h, w) float32.
    The network size is chosen on the first frame; later frames must have its size.
    """

    def __init__(self, model, *, input_size: int | None = None):
        if not model.config.is_temporal:
            raise ValueError(f"{model.config.name} is not a temporal model: it has no states to stream")
        self.model, self.input_size = model, input_size
        self.frame_size = self.net_size = None
        self.cache: list = []  # per frame: its states, structured as dpt.forward_stream returns them
        self.count = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import jax

        from .preprocess import to_network, to_picture

        config = self.model.config
        if self.frame_size is None:
            self.frame_size = frame.shape[:2]
            self.net_size = network_size(config, self.frame_size, self.input_size)
        elif frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {self.count} is {frame.shape[1]}x{frame.shape[0]}; the stream started at "
                             f"{self.frame_size[1]}x{self.frame_size[0]}")
        image = to_network(config, frame[None], self.net_size)  # (1, H, W, 3)
        if not self.cache:
            depth, states = self.model.apply_stream(image)
            self.cache = [states] * WINDOW  # the first frame stands for a whole window
        else:
            kept = self.cache[:2] + self.cache[-(WINDOW - 3):]  # 31 frames
            context = jax.tree_util.tree_map(lambda *s: jax.numpy.concatenate(s, axis=1), *kept)  # (P, 31, C)
            depth, states = self.model.apply_stream(image, context)
            self.cache.append(states)
        if self.count + WINDOW > STREAM_KEPT + 1:
            del self.cache[1]  # the oldest but frame 0
        self.count += 1
        return np.asarray(to_picture(config, depth, self.frame_size))[0]  # (h, w)
