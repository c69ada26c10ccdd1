"""The focal length of a picture, in pixels: what Depth Anything 3's metric model needs for metres.

DA3METRIC-LARGE gives depth that becomes metres as focal * output / 300, the focal length in
pixels at the network input (the mean of fx and fy there). The focal length comes from, in
this order: the user (`focal` pixels at the picture's size, or a horizontal field of view
`fov` in degrees), the picture's EXIF (its 35 mm equivalent focal length), else DEFAULT_FOV.
"""

from __future__ import annotations

import math
import os

#: The horizontal field of view assumed when nothing says the camera's (degrees), as the point clouds do.
DEFAULT_FOV = 60.0
#: The diagonal of the 36 x 24 mm frame that "35 mm equivalent" focal lengths refer to (mm).
FULL_FRAME_DIAGONAL = math.hypot(36.0, 24.0)
_EXIF_IFD = 0x8769
_FOCAL_35MM = 0xA405  # FocalLengthIn35mmFilm


def exif_focal_35mm(path) -> float | None:
    """The 35 mm equivalent focal length (mm) in a picture file's EXIF, or None (none, zero or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            value = img.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_35MM)
    except Exception:  # noqa: BLE001 (a picture without readable EXIF simply has no focal length)
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and 0 < value < 10_000 else None


def focal_pixels(size: tuple[int, int], *, focal: float | None = None, fov: float | None = None,
                 path=None) -> tuple[float, str]:
    """(focal length in pixels at the picture's `size` (h, w), where it came from) for a picture.

    `focal` (pixels) wins, then `fov` (horizontal, degrees), then the EXIF of the file at `path`
    (35 mm equivalent: f = f35 * the picture's diagonal / the full frame's), then DEFAULT_FOV.
    """
    h, w = size
    if focal is not None:
        if not (math.isfinite(focal) and focal > 0):
            raise ValueError(f"the focal length must be a positive number of pixels; got {focal}")
        return float(focal), f"{focal:g} px given"
    if fov is None and path is not None and os.path.isfile(path):
        f35 = exif_focal_35mm(path)
        if f35 is not None:
            return f35 * math.hypot(w, h) / FULL_FRAME_DIAGONAL, f"EXIF 35 mm equivalent {f35:g} mm"
    chosen = DEFAULT_FOV if fov is None else fov
    if not 0 < chosen < 180:
        raise ValueError(f"the field of view must be between 0 and 180 degrees; got {chosen}")
    how = f"{chosen:g} degree horizontal field of view {'given' if fov is not None else '(default: none known)'}"
    return (w / 2) / math.tan(math.radians(chosen) / 2), how


def metric_scale(config, picture_size: tuple[int, int], network_size: tuple[int, int], focal) -> float:
    """The factor turning a focal-metric model's output into metres: mean(fx, fy) at the network input / divisor.

    `focal` is in pixels at `picture_size` (h, w): one number (fx = fy) or (fx, fy); the network
    input (H, W) scales fx by W / w and fy by H / h, as Depth Anything 3's input processing
    rescales the intrinsics.
    """
    (h, w), (nh, nw) = picture_size, network_size
    fx, fy = (focal, focal) if isinstance(focal, (int, float)) else focal
    return (fx * nw / w + fy * nh / h) / 2 / config.focal_metric_divisor
