"""Depth in 3D: metric alignment of relative inverse depth, pinhole point clouds, PLY files.

    relative inverse depth p (h, w)         MiDaS output: 1/depth up to an unknown scale s and shift t
      -> align(p, known depths)             s, t by least squares on s*p + t = 1/known; depth = 1/(s*p + t)
      -> point_cloud(depth, picture, fov)   pinhole back-projection, camera coordinates in depth's units
      -> write_ply(path, points, colors)    binary little-endian PLY with float x, y, z and uchar RGB

Camera coordinates are OpenCV's: x right, y down, z forward (the optical axis); pixel (row v,
column u) has its centre at (u, v), so a w x h picture's principal point is ((w-1)/2, (h-1)/2)
unless intrinsics say otherwise. `depth` is the z coordinate (distance along the optical axis),
not the length of the ray: what renderers write and what MiDaS's inverse depth is the inverse of.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .atomic import atomic_write
from .errors import AlignError
from .npy import read_npy

# ------------------------------------------------------------------------------------------------
# Cameras


def intrinsics_from_fov(height: int, width: int, fov: float, axis: str = "horizontal") -> np.ndarray:
    """3x3 pinhole matrix K of a w x h picture whose field of view along `axis` is `fov` degrees.

    Square pixels: fx = fy = (w / 2) / tan(fov / 2) for a horizontal fov (h / 2 for a vertical one);
    principal point at the picture's centre, ((w - 1) / 2, (h - 1) / 2) in pixel-centre coordinates.
    """
    if axis not in ("horizontal", "vertical"):
        raise ValueError(f"axis must be 'horizontal' or 'vertical'; got {axis!r}")
    if not 0 < fov < 180:
        raise ValueError(f"the field of view must be between 0 and 180 degrees; got {fov}")
    f = (width if axis == "horizontal" else height) / 2 / np.tan(np.radians(fov) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float64)


def _camera(shape, fov, intrinsics) -> np.ndarray:
    if (fov is None) == (intrinsics is None):
        raise ValueError("give exactly one of fov= (degrees, horizontal) and intrinsics= (3x3 K or fx, fy, cx, cy)")
    if fov is not None:
        return intrinsics_from_fov(*shape, float(fov))
    k = np.asarray(intrinsics, np.float64)
    if k.shape == (4,):
        fx, fy, cx, cy = k
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ValueError(f"intrinsics must be a 3x3 matrix K or (fx, fy, cx, cy) with fx, fy > 0; got {k.tolist()}")
    if k[0, 1] != 0 or k[1, 0] != 0 or tuple(k[2]) != (0, 0, 1):
        raise ValueError("intrinsics: only pinhole matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] are supported")
    return k


def point_cloud(depth: np.ndarray, image: np.ndarray | None = None, *, fov: float | None = None,
                intrinsics=None, mask: np.ndarray | None = None,
                max_depth: float | None = None, stride: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Back-project a depth map through a pinhole camera: (points (N, 3) float32, colors (N, 3) uint8).

    `depth` (h, w): z along the optical axis in any unit (the points come out in the same unit);
    pixels whose depth is not finite or not positive (sky, masked, "beyond infinity" after an
    alignment) are left out, as are pixels where `mask` (h, w) is False or deeper than `max_depth`. Pixel (v, u) goes to
    (x, y, z) = ((u - cx) z / fx, (v - cy) z / fy, z), OpenCV axes (x right, y down, z forward).
    `image` (h, w, 3) uint8, or float in [0, 1], gives the colours (None: colors is None).
    `fov`: horizontal field of view in degrees (see `intrinsics_from_fov`), or `intrinsics`: a 3x3
    K or (fx, fy, cx, cy) in pixels of this picture. `stride`: every stride-th pixel of each axis.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise ValueError(f"depth must be an (h, w) float array; got {depth.dtype} of shape {depth.shape}")
    k = _camera(depth.shape, fov, intrinsics)
    keep = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != depth.shape:
            raise ValueError(f"mask has shape {mask.shape}; the depth map has {depth.shape}")
        keep &= mask
    if max_depth is not None:
        keep &= depth <= max_depth
    if stride > 1:
        grid = np.zeros_like(keep)
        grid[::stride, ::stride] = True
        keep &= grid
    v, u = np.nonzero(keep)  # (N,) rows and columns, in row-major order
    z = depth[v, u].astype(np.float64)
    points = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z], -1).astype(np.float32)  # (N, 3)
    if image is None:
        return points, None
    image = np.asarray(image)
    if image.shape != (*depth.shape, 3):
        raise ValueError(f"image must be (h, w, 3) RGB of the depth map's size {depth.shape}; got {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image must be uint8 or float in [0, 1]; got {image.dtype}")
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return points, image[v, u]  # (N, 3) uint8


# ------------------------------------------------------------------------------------------------
# PLY


def write_ply(path, points: np.ndarray, colors: np.ndarray | None = None, comments: Sequence[str] = (), *,
              replace: bool = True) -> Path:
    """Write a binary little-endian PLY of vertices (float x, y, z and, with colors, uchar red, green, blue).

    `comments` go into the header as `comment ...` lines (one line each: no line breaks). Written
    through a temporary file and a rename.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.floating):
        raise ValueError(f"points must be an (N, 3) float array; got {points.dtype} of shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != points.shape or colors.dtype != np.uint8:
            raise ValueError(f"colors must be (N, 3) uint8 like the points {points.shape}; "
                             f"got {colors.dtype} of shape {colors.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    for c in comments:
        if "\n" in c or "\r" in c or not c.isascii():
            raise ValueError(f"PLY comments must be single ASCII lines; got {c!r}")
    vertices = np.empty(len(points), fields)  # (N,) packed records, the PLY body as is
    vertices["x"], vertices["y"], vertices["z"] = points.T
    if colors is not None:
        vertices["red"], vertices["green"], vertices["blue"] = colors.T
    types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments),
              f"element vertex {len(points)}", *(f"property {types[t]} {name}" for name, t in fields), "end_header"]
    with atomic_write(path, ".ply", replace=replace) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Alignment of relative inverse depth to known depths


class Alignment(NamedTuple):
    depth: np.ndarray  # (h, w) float32 metric depth 1/(scale * p + shift); inf where that is not positive
    scale: float
    shift: float
    rms: float  # root mean square residual of the fit in inverse depth (1/unit), over the samples used
    used: np.ndarray  # (h, w) bool: the known samples the fit kept (all of them unless robust)


def _weighted_fit(p, y, w):
    """(s, t) minimising sum w (s p + t - y)^2: the 2x2 normal equations, in float64."""
    sw, sp, sy = w.sum(), (w * p).sum(), (w * y).sum()
    spp, spy = (w * p * p).sum(), (w * p * y).sum()
    det = sw * spp - sp * sp
    if not det > 1e-12 * max(sw * spp, np.finfo(float).tiny):
        raise ValueError("the known depths cannot fix a scale and a shift: they need at least two pixels "
                         "whose predicted inverse depths differ")
    return (sw * spy - sp * sy) / det, (spp * sy - sp * spy) / det


def align(inverse_depth: np.ndarray, known_depth: np.ndarray, mask: np.ndarray, robust: bool = False,
          max_iterations: int = 50) -> Alignment:
    """Metric depth from relative inverse depth and a few known depths, as MiDaS evaluates (s, t on 1/depth).

    Fit: (s, t) = argmin sum over known pixels i of (s p_i + t - 1/d_i)^2 (closed form, float64);
    then depth = 1 / (s p + t), set to inf where s p + t <= 0 (beyond the fitted horizon).
    `inverse_depth` p (h, w): the model's output; `known_depth` (h, w): depths in metres (or any
    unit; the result has it), used where `mask` (h, w) is True (at least two pixels with different
    p). `robust`: iteratively reweighted least squares, started from a least-absolute-deviation fit
    and refined with Tukey's biweight (c = 4.685 robust standard deviations, from the median
    absolute residual), so wrong samples (up to about a third) get weight 0 and do not pull the fit.
    """
    p = np.asarray(inverse_depth)
    if p.ndim != 2 or not np.issubdtype(p.dtype, np.floating) or not np.isfinite(p).all():
        raise ValueError(f"inverse_depth must be a finite (h, w) float array; got {p.dtype} of shape {p.shape}")
    known = np.asarray(known_depth, np.float64)
    mask = np.asarray(mask, bool)
    if known.shape != p.shape or mask.shape != p.shape:
        raise ValueError(f"known_depth {known.shape} and mask {mask.shape} must have the shape of "
                         f"inverse_depth {p.shape}")
    d = known[mask]
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise ValueError("known depths must be finite and positive where the mask is set")
    x, y = p[mask].astype(np.float64), 1.0 / d  # predictions and known inverse depths, (n,)
    w = np.ones_like(x)
    s, t = _weighted_fit(x, y, w)
    if robust:
        s, t, w = _robust_fit(x, y, s, t, max_iterations)
    r = s * x + t - y
    used = w > 0
    rms = float(np.sqrt(np.mean(r[used] ** 2)))
    used_map = np.zeros(p.shape, bool)
    used_map[mask] = used
    return Alignment(depth_from_inverse(p, s, t), float(s), float(t), rms, used_map)


def _robust_fit(x, y, s, t, max_iterations):
    """IRLS: a few least-absolute-deviation steps (weights 1/|r|), then Tukey's biweight to convergence."""
    tiny = 1e-12 * max(float(np.abs(y).max()), 1e-300)
    for _ in range(max_iterations):  # L1 start: robust to gross outliers, unlike the least squares start
        w = 1.0 / np.maximum(np.abs(s * x + t - y), tiny)
        s_new, t_new = _weighted_fit(x, y, w)
        done = abs(s_new - s) <= 1e-12 * abs(s) and abs(t_new - t) <= 1e-12 * max(abs(t), abs(s) * np.abs(x).max())
        s, t = s_new, t_new
        if done:
            break
    w = np.ones_like(x)
    for _ in range(max_iterations):
        r = s * x + t - y
        sigma = max(1.4826 * np.median(np.abs(r)), tiny)
        u = r / (4.685 * sigma)
        w = np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)
        s_new, t_new = _weighted_fit(x, y, w)
        if s_new == s and t_new == t:
            break
        s, t = s_new, t_new
    return s, t, w


def depth_from_inverse(inverse_depth: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """depth = 1 / (scale * inverse_depth + shift), inf where that is not positive: a known (s, t) applied."""
    fitted = scale * np.asarray(inverse_depth, np.float64) + shift
    with np.errstate(divide="ignore", over="ignore"):  # depths beyond float32 become inf, as non-positive ones
        return np.where(fitted > 0, 1.0 / np.where(fitted > 0, fitted, 1.0), np.inf).astype(np.float32)


def range_scale_shift(inverse_depth: np.ndarray, near: float = 1.0, far: float = 10.0) -> tuple[float, float]:
    """(s, t) mapping the largest inverse depth to depth `near` and the smallest to `far`.

    For a relative model with nothing known about the scene: a point cloud of the right shape up to
    an unknown projective distortion, in arbitrary units (say so where it is written).
    """
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far; got near={near}, far={far}")
    lo, hi = float(np.min(inverse_depth)), float(np.max(inverse_depth))
    if not np.isfinite([lo, hi]).all() or hi - lo <= 1e-7 * max(abs(hi), 1.0):
        raise ValueError("the inverse depth map is constant or not finite: no depth range to map")
    s = (1 / near - 1 / far) / (hi - lo)
    return s, 1 / far - s * lo


# ------------------------------------------------------------------------------------------------
# Files of known depths (`--align FILE`)

#: Rows a CSV of known depths may have (a dense map belongs in .npy/.npz).
MAX_CSV_SAMPLES = 1_000_000
#: The most points a point cloud of one picture may have (~375 MB of PLY, ~1.5 GB while it is built).
MAX_POINTS = 25_000_000
MAX_CSV_LINE = 1_000  # characters: "x,y,depth" needs a few dozen


def load_known_depths(path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read known depths for a picture of `shape` (h, w): (known_depth (h, w) float64, mask (h, w) bool).

    Formats, by suffix:
      .npy  an (h, w) float array of depths; pixels that are not finite or not positive are unknown.
      .npz  arrays `depth` (h, w) and optionally `mask` (h, w) bool (True: known); without a mask,
            as .npy. Known pixels must hold finite positive depths.
      .csv  one known pixel a row: `x,y,depth` (column, row, both integers counted from 0 at the
            top left; depth > 0); an optional header row `x,y,depth`; lines starting with # are skipped.
    Depths are in metres (or any unit: the aligned depth has the same). Arrays are read without
    pickle, and their declared shape is checked against the picture before anything is allocated.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise AlignError(name, "no such file" if not path.exists() else "not a file")
    h, w = shape
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                depth = _read_npy(f, name, shape)
            mask = None
        elif suffix == ".npz":
            depth, mask = _read_npz(path, name, shape)
        elif suffix == ".csv":
            depth, mask = _read_csv(path, name, shape)
        else:
            raise AlignError(name, "known depths must be a .npy, .npz or .csv file")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, AlignError):
            raise
        raise AlignError(name, f"cannot read known depths: {e}") from None
    depth = depth.astype(np.float64)
    if mask is None:
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(depth) & (depth > 0)
    elif not (np.isfinite(depth[mask]).all() and (depth[mask] > 0).all()):
        raise AlignError(name, "the depths where the mask is set must be finite and positive")
    if mask.sum() < 2:
        raise AlignError(name, f"{int(mask.sum())} known depth(s); the alignment needs at least 2")
    return depth, mask


def _read_npy(f, name, shape, what="the depth array", kinds="fiu"):
    """A .npy array of the picture's `shape` (h, w) from an open binary file (`npy.read_npy`)."""
    def same_shape(declared):
        if declared != tuple(shape):
            raise AlignError(name, f"{what} has shape {declared}; the picture is {tuple(shape)} (h, w)")

    return read_npy(f, lambda message: AlignError(name, message), same_shape, what, kinds)


def _read_npz(path, name, shape):
    with zipfile.ZipFile(path) as z:
        members = set(z.namelist())
        if "depth.npy" not in members:
            names = ", ".join(sorted(m.removesuffix(".npy") for m in members)) or "nothing"
            raise AlignError(name, f"no array named 'depth' (has {names})")
        with z.open("depth.npy") as f:
            depth = _read_npy(f, name, shape, "'depth'")
        mask = None
        if "mask.npy" in members:
            with z.open("mask.npy") as f:
                mask = _read_npy(f, name, shape, "'mask'", kinds="biu").astype(bool)
    return depth, mask


def _read_csv(path, name, shape):
    h, w = shape
    depth = np.full(shape, np.nan)
    mask = np.zeros(shape, bool)
    samples = 0
    with open(path, newline="", encoding="utf-8") as f:
        for i, line in enumerate(iter(lambda: f.readline(MAX_CSV_LINE + 1), ""), 1):  # i: the line number
            if len(line) > MAX_CSV_LINE:
                raise AlignError(name, f"line {i} is longer than {MAX_CSV_LINE} characters; expected x,y,depth")
            row = [c.strip() for c in next(csv.reader([line]), [])]
            header = samples == 0 and [c.lower() for c in row] == ["x", "y", "depth"]
            if not any(row) or row[0].startswith("#") or header:
                continue
            samples += 1
            if samples > MAX_CSV_SAMPLES:
                raise AlignError(name, f"more than {MAX_CSV_SAMPLES:,} samples; give a dense map as .npy/.npz")
            try:
                x, y, d = (float(c) for c in row)
            except ValueError:
                raise AlignError(name, f"line {i}: expected x,y,depth numbers; got {line.strip()[:80]!r}") from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise AlignError(name, f"line {i}: pixel ({x:g}, {y:g}) is not a pixel of the {w}x{h} picture")
            if x != int(x) or y != int(y) or not (0 <= x < w and 0 <= y < h):
                raise AlignError(name, f"line {i}: pixel ({x:g}, {y:g}) is not an integer pixel of the {w}x{h} picture")
            if not (np.isfinite(d) and d > 0):
                raise AlignError(name, f"line {i}: depth {d:g} is not a positive number")
            depth[int(y), int(x)] = d
            mask[int(y), int(x)] = True
    return depth, mask


# ------------------------------------------------------------------------------------------------
# One call for the command line


def save_point_cloud(path, inverse_depth: np.ndarray, picture, *, fov: float | None = None, intrinsics=None,
                     known=None, robust: bool = False, scale_shift: tuple[float, float] | None = None,
                     metric: bool = False, depth_range: tuple[float, float] = (1.0, 10.0),
                     max_depth: float | None = None, source: str | None = None, replace: bool = True,
                     stride: int = 1) -> Path:
    """Write a model's output for one picture as a coloured PLY point cloud, with its units in the header.

    `inverse_depth` (h, w): the model's output; `picture`: the picture (path, or (h, w, 3) array).
    How depth is obtained, first that applies:
      metric=True     the output is already metric depth in metres (metric models);
      known           a path of known depths (see `load_known_depths`) or (known_depth, mask): `align`;
      scale_shift     (s, t) known in advance: depth = 1 / (s p + t), in the unit s and t were made for;
      otherwise       `range_scale_shift(p, *depth_range)`: arbitrary units, nearest 1, farthest 10.
    Camera: `fov` (horizontal, degrees) or `intrinsics` (see `point_cloud`); default a 60 degree fov.
    `max_depth`: leave out points deeper than this (in the output's unit). After an alignment the
    sky (relative inverse depth near its smallest value) can land arbitrarily far, or beyond
    infinity (then it is always left out).
    """
    from .pictures import open_source

    name = source or (str(picture) if isinstance(picture, (str, os.PathLike)) else "picture")
    h, w = np.shape(inverse_depth)[:2]
    points = -(-h // stride) * -(-w // stride)
    if points > MAX_POINTS:  # refused before anything is decoded or allocated for it
        least = next(s for s in range(stride, 1 + max(h, w)) if -(-h // s) * -(-w // s) <= MAX_POINTS)
        raise AlignError(name, f"a point cloud of {points:,} points is over the limit of {MAX_POINTS:,}: take every "
                               f"n-th pixel (--ply-stride {least}, or stride={least})")
    pixels = open_source(picture).load() if isinstance(picture, (str, os.PathLike)) else np.asarray(picture)
    p = np.asarray(inverse_depth, np.float32)
    if pixels.shape[:2] != p.shape:
        raise ValueError(f"{name}: the picture is {pixels.shape[:2]} but the depth map {p.shape}")
    if fov is None and intrinsics is None:
        fov = 60.0
    comments = [f"dpt-jax point cloud of {Path(name).name}",
                "axes: camera coordinates, x right, y down, z forward (OpenCV); z is depth along the optical axis"]
    if metric:
        depth = p
        comments.append("units: metres (metric model output)")
    elif known is not None:
        known_depth, mask = load_known_depths(known, p.shape) if isinstance(known, (str, os.PathLike)) else known
        a = align(p, known_depth, mask, robust=robust)
        depth = a.depth
        source_of = f" from {Path(known).name}" if isinstance(known, (str, os.PathLike)) else ""
        comments.append(f"units: metres (the unit of the known depths{source_of}): depth = 1 / (s * prediction + t)")
        comments.append(f"alignment: s {a.scale:.9g} t {a.shift:.9g} fitted to {int(a.used.sum())} of "
                        f"{int(mask.sum())} known depths{' (robust)' if robust else ''}, rms {a.rms:.3g} in 1/depth")
    elif scale_shift is not None:
        s, t = scale_shift
        depth = depth_from_inverse(p, s, t)
        comments.append(f"units: those of the given scale and shift: depth = 1 / (s * prediction + t), "
                        f"s {s:.9g} t {t:.9g}")
    else:
        s, t = range_scale_shift(p, *depth_range)
        depth = depth_from_inverse(p, s, t)
        comments.append(f"units: arbitrary, not metres: relative inverse depth mapped to depths "
                        f"{depth_range[0]:g} (nearest) to {depth_range[1]:g} (farthest); s {s:.9g} t {t:.9g}")
    k = _camera(p.shape, fov, intrinsics)
    comments.append(f"intrinsics: fx {k[0, 0]:.9g} fy {k[1, 1]:.9g} cx {k[0, 2]:.9g} cy {k[1, 2]:.9g} "
                    f"pixels of the {p.shape[1]}x{p.shape[0]} picture")
    if max_depth is not None:
        comments.append(f"points deeper than {max_depth:g} left out")
    points, colors = point_cloud(depth, pixels, intrinsics=k, max_depth=max_depth, stride=stride)
    if len(points) == 0:
        why = " (every point is deeper than --far)" if max_depth is not None else " (no finite, positive depth)"
        raise AlignError(name, f"the point cloud has no valid point{why}; nothing written")
    return write_ply(path, points, colors, comments, replace=replace)
