"""Depth prompts from users: read (16-bit PNG in millimetres, .npy / .npz in metres) and checked.

A prompted model (Prompt Depth Anything, `DPTConfig.prompt`) takes one coarse metric depth map
per picture. The original's `load_depth` reads a PNG as uint16 millimetres (/ 1000) and an
.npz's `depth` array as metres; dpt-jax also takes a plain .npy in metres and arrays. Every
prompt is checked before the model runs, and refused with a PromptError naming it when it
cannot give a depth range: not a 2-D map, a side of 0, more than MAX_PIXELS pixels (the
original's torch.quantile refuses more than 2^24), a value that is not finite or is negative, no
valid (positive) pixel, or one value everywhere (max == min: the original's output is NaN).
Zeros (missing LiDAR returns) are ordinary values that take part in the min, as in the original.
A prompt must show the picture's scene: its aspect ratio may differ from the picture's by at
most MAX_ASPECT_CHANGE (a prompt of the wrong orientation or of another camera is refused).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import PromptError
from .npy import read_npy

MAX_PIXELS = 1 << 24  # as the original's torch.quantile limit
MAX_ASPECT_CHANGE = 1.2  # width/height ratios of prompt and picture within this factor of each other
PNG_UNIT = 1000.0  # 16-bit PNG prompts hold millimetres (the original's load_depth divides by 1000)


def read_prompt(path) -> np.ndarray:
    """The prompt in file `path` as (h, w) float32 metres: .png (integer millimetres), .npy or .npz `depth` (metres)."""
    path = Path(os.fspath(path))
    name = str(path)
    if not path.is_file():
        raise PromptError(name, "no such file" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            depth = _read_png(path, name)
        elif suffix == ".npy":
            with open(path, "rb") as f:
                depth = _read_npy(f, name)
        elif suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                if "depth.npy" not in z.namelist():
                    raise PromptError(name, "no array named 'depth' (the original's .npz layout)")
                with z.open("depth.npy") as f:
                    depth = _read_npy(f, name)
        else:
            raise PromptError(name, "a depth prompt must be a .png (16-bit, millimetres), .npy or .npz (metres)")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, PromptError):
            raise
        raise PromptError(name, f"cannot read the depth prompt: {e}") from None
    return checked_prompt(depth, name)


def _read_png(path: Path, name: str) -> np.ndarray:
    import warnings

    from PIL import Image

    with warnings.catch_warnings():  # MAX_PIXELS decides (below), not Pillow's bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path, formats=["PNG"])
        except Image.DecompressionBombError:
            raise PromptError(name, f"the PNG declares far more than {MAX_PIXELS:,} pixels") from None
    with img:
        h, w = img.height, img.width
        _check_size(name, (h, w))
        if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise PromptError(name, f"a PNG prompt must be one channel of integer millimetres (16-bit); it is "
                                    f"{img.mode}")
        mm = np.asarray(img).astype(np.float32)  # (h, w)
    return mm / np.float32(PNG_UNIT)  # (h, w) metres


def _read_npy(f, name: str) -> np.ndarray:
    """A depth prompt in metres from an open .npy file (`npy.read_npy`), its size checked first."""
    return read_npy(f, lambda message: PromptError(name, message), lambda shape: _check_size(name, shape),
                    "the depth prompt")


def _check_size(name: str, shape: tuple) -> tuple:
    """(h, w) of a prompt of `shape` ((h, w), or with single axes around it); refused before anything is read."""
    core = tuple(s for s in shape if s != 1) if len(shape) > 2 else shape
    if len(shape) > 2 and len(core) <= 2:
        core = (1,) * (2 - len(core)) + core
    if len(core) != 2:
        raise PromptError(name, f"a depth prompt is one (h, w) map; got shape {tuple(shape)}")
    h, w = (int(s) for s in core)
    if h < 1 or w < 1:
        raise PromptError(name, f"the depth prompt is {h}x{w} (HxW): empty")
    if h * w > MAX_PIXELS:
        raise PromptError(name, f"the depth prompt has {h * w:,} pixels; at most {MAX_PIXELS:,} are taken")
    return shape


def checked_prompt(depth, name: str = "prompt_depth") -> np.ndarray:
    """`depth` (an (h, w) array of metres, or (1, h, w), (h, w, 1), (1, 1, h, w)) as a checked (h, w) float32 map."""
    array = np.asarray(depth)
    if array.dtype.kind not in "fiu" or array.dtype.hasobject:
        raise PromptError(name, f"the depth prompt has type {array.dtype}; expected numbers (metres)")
    _check_size(name, array.shape)
    p = array.reshape([s for s in array.shape if s != 1] or [1]) if array.ndim > 2 else array
    p = p.reshape((1,) * (2 - p.ndim) + p.shape).astype(np.float32)  # (h, w)
    if not np.isfinite(p).all():
        raise PromptError(name, f"{int((~np.isfinite(p)).sum())} value(s) of the depth prompt are not finite")
    if (p < 0).any():
        raise PromptError(name, f"{int((p < 0).sum())} value(s) of the depth prompt are negative; depths are metres")
    if not (p > 0).any():
        raise PromptError(name, "the depth prompt has no valid pixel (every value is 0)")
    if p.max() == p.min():
        raise PromptError(name, f"the depth prompt is {float(p.max()):g} m everywhere: it gives no depth range")
    return p


def check_fits(prompt: np.ndarray, picture_size: tuple[int, int], name: str = "prompt_depth") -> None:
    """Refuse a prompt whose aspect ratio is not the picture's (within MAX_ASPECT_CHANGE)."""
    (h, w), (ph, pw) = prompt.shape, picture_size
    if abs(math.log((w / h) / (pw / ph))) > math.log(MAX_ASPECT_CHANGE):
        raise PromptError(name, f"the depth prompt is {h}x{w} (HxW) and the picture {ph}x{pw}: a prompt must "
                                "cover the picture's view (aspect ratios within 20 %; a rotated or cropped map?)")
