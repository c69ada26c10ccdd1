"""Pictures in: files and URLs Pillow reads (size and EXIF rotation known before decoding), arrays, PIL images.

    open_source(item) -> Source   the picture's name and displayed size now, its pixels on `load()`
    as_picture(array)             an (h, w, 3) array checked and converted as pictures are
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from .errors import ImageError

#: Pictures with more pixels than this are refused before decoding (~100 MP: a 12000 x 8000 picture).
MAX_PIXELS = 100_000_000
#: The most bytes a picture given by URL may have (it is held in memory until it is decoded).
MAX_URL_BYTES = 256 * 2**20
#: The picture formats Pillow may decode (JPEG includes phones' MPO files); never EPS, PDF and the like,
#: whose plugins run other programs (Ghostscript) or are rarely hardened.
PICTURE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

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
    note: str | None = None  # what the user should know about how it is read (an animation: its first frame)


def is_url(item) -> bool:
    """Whether `item` names a picture on the web (http:// or https://) rather than a file."""
    return isinstance(item, str) and item[:8].lower().startswith(("http://", "https://"))


def fetched(url: str) -> bytes:
    """The bytes at `url`, through dpt-jax's download transport (bounded in size and time); ImageError if not."""
    import tempfile

    from .download import fetch
    from .errors import DownloadError

    with tempfile.TemporaryDirectory(prefix="dpt-jax-url-") as folder:
        partial = Path(folder) / "picture"
        try:
            fetch(url, partial, desc=url, approx=None, progress=False, timeout=60.0, retries=2, limit=MAX_URL_BYTES)
        except DownloadError as e:
            raise ImageError(url, f"cannot download it: {e.message}") from None
        return partial.read_bytes()


def open_source(item: ImageLike, index: int = 0) -> Source:
    """Read just enough of `item` to know its size; raises ImageError for anything unusable.

    A string starting with http:// or https:// is a URL: the picture is downloaded now and held in
    memory (at most MAX_URL_BYTES) until it is decoded."""
    from PIL import Image, UnidentifiedImageError

    if is_url(item) or isinstance(item, (str, os.PathLike)):
        if is_url(item):
            name, data = item, fetched(item)
            if not data:
                raise ImageError(name, "the download is empty")
            opened = lambda: Image.open(io.BytesIO(data), formats=PICTURE_FORMATS)
        else:
            path = Path(item)
            name = str(path)
            if not path.is_file():
                raise ImageError(name, "no such file" if not path.exists() else "not a file")
            if path.stat().st_size == 0:
                raise ImageError(name, "the file is empty")
            opened = lambda: Image.open(path, formats=PICTURE_FORMATS)
        try:
            with warnings.catch_warnings():  # dpt-jax's own limit (MAX_PIXELS) decides, not Pillow's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with opened() as img:
                    h, w = _displayed_size(img)
                    frames = getattr(img, "n_frames", 1)
        except UnidentifiedImageError:
            raise ImageError(name, f"not an image file of a picture format dpt-jax reads "
                                   f"({', '.join(PICTURE_FORMATS)})") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(name, f"cannot read image: {e}") from None
        _check_pixels(name, h, w)

        def load():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with opened() as img:
                        img.load()
                        return _as_rgb_array(img, name)
            except ImageError:
                raise
            except Exception as e:  # truncated or corrupt pixel data surfaces only when decoding
                raise ImageError(name, f"cannot decode image: {e}") from None

        note = None
        if frames > 1:  # animated GIF, PNG or WebP: Pillow decodes the first frame
            note = (f"an animation of {frames} frames: its first frame only (as a video, e.g. converted to .mp4, "
                    "every frame gets its depth)")
        return Source(name, (h, w), load, note)
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
        raise ImageError(name, f"{w}x{h} pixels is over the limit of {MAX_PIXELS:,} (pictures.MAX_PIXELS); "
                         "downscale it first")


def decode(source: Source):
    """(picture, None), or (None, message) for a picture that cannot be decoded."""
    try:
        return source.load(), None
    except ImageError as e:
        return None, e.message
