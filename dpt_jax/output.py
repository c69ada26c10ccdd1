"""Depth maps as pictures and files: colormaps, 8/16-bit grayscale, .npy, PFM, side by side.

Every file is written atomically (`dpt_jax.atomic.atomic_write`). The formats (`FORMATS`, a
registry: `register_format` adds one):

    color   <stem>-depth.png        inferno colormap of the normalized inverse depth, RGB; near is bright
    gray8   <stem>-depth-gray8.png  8-bit grayscale of the normalized inverse depth
    png16   <stem>-depth-16.png     16-bit grayscale of the normalized inverse depth (as MiDaS's run.py)
    npy     <stem>-depth.npy        raw float32 inverse depth, (h, w)
    pfm     <stem>-depth.pfm        raw float32 inverse depth as MiDaS's write_pfm (little-endian,
                                    rows bottom to top, scale -1.0)
    side    <stem>-side.png         the picture and its color depth side by side
    ply     <stem>-points.ply       a coloured point cloud (written by geometry.py)

"Normalized" is scaled to [0, 1] by the map's own minimum and maximum (`normalized`).

What the numbers are depends on the model (`DPTConfig.is_metric`): relative models (MiDaS, Depth
Anything relative) give inverse depth of unknown scale and shift, normalized per picture as
above; metric models (Depth Anything metric) give depth in metres: npy and pfm hold metres, png16
holds round(metres x 256) as uint16 (KITTI's depth-PNG convention: 1/256 m steps up to 255.99 m),
the same scale for every picture, not normalized; color, gray8 and side are per picture with near
shown bright.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from .atomic import atomic_write

# The "inferno" colormap (perceptually uniform; by Nathaniel J. Smith and Stefan van der Walt,
# released under CC0), sampled at 256 levels as 8-bit RGB.
_INFERNO_HEX = (
    "00000401000501010601010802010a02020c02020e03021004031204031405041706041907051b08051d09061f0a0722"
    "0b07240c08260d08290e092b10092d110a30120a32140b34150b37160b39180c3c190c3e1b0c411c0c431e0c451f0c48"
    "210c4a230c4c240c4f260c51280b53290b552b0b572d0b592f0a5b310a5c320a5e340a5f3609613809623909633b0964"
    "3d09653e0966400a67420a68440a68450a69470b6a490b6a4a0c6b4c0c6b4d0d6c4f0d6c510e6c520e6d540f6d550f6d"
    "57106e59106e5a116e5c126e5d126e5f136e61136e62146e64156e65156e67166e69166e6a176e6c186e6d186e6f196e"
    "71196e721a6e741a6e751b6e771c6d781c6d7a1d6d7c1d6d7d1e6d7f1e6c801f6c82206c84206b85216b87216b88226a"
    "8a226a8c23698d23698f24699025689225689326679526679727669827669a28659b29649d29649f2a63a02a63a22b62"
    "a32c61a52c60a62d60a82e5fa92e5eab2f5ead305dae305cb0315bb1325ab3325ab43359b63458b73557b93556ba3655"
    "bc3754bd3853bf3952c03a51c13a50c33b4fc43c4ec63d4dc73e4cc83f4bca404acb4149cc4248ce4347cf4446d04545"
    "d24644d34743d44842d54a41d74b3fd84c3ed94d3dda4e3cdb503bdd513ade5238df5337e05536e15635e25734e35933"
    "e45a31e55c30e65d2fe75e2ee8602de9612bea632aeb6429eb6628ec6726ed6925ee6a24ef6c23ef6e21f06f20f1711f"
    "f1731df2741cf3761bf37819f47918f57b17f57d15f67e14f68013f78212f78410f8850ff8870ef8890cf98b0bf98c0a"
    "f98e09fa9008fa9207fa9407fb9606fb9706fb9906fb9b06fb9d07fc9f07fca108fca309fca50afca60cfca80dfcaa0f"
    "fcac11fcae12fcb014fcb216fcb418fbb61afbb81dfbba1ffbbc21fbbe23fac026fac228fac42afac62df9c72ff9c932"
    "f9cb35f8cd37f8cf3af7d13df7d340f6d543f6d746f5d949f5db4cf4dd4ff4df53f4e156f3e35af3e55df2e661f2e865"
    "f2ea69f1ec6df1ed71f1ef75f1f179f2f27df2f482f3f586f3f68af4f88ef5f992f6fa96f8fb9af9fc9dfafda1fcffa4"
)
INFERNO = np.frombuffer(bytes.fromhex(_INFERNO_HEX), np.uint8).reshape(256, 3)

def normalized(depth: np.ndarray) -> np.ndarray:
    """Inverse depth scaled to [0, 1] by its own range (all zeros for a constant map), as MiDaS's write_depth."""
    depth = np.asarray(depth, np.float64)
    lo, hi = float(depth.min()), float(depth.max())
    if not np.isfinite([lo, hi]).all():
        raise ValueError("the depth map has NaN or infinite values")
    if hi - lo <= np.finfo(np.float32).eps * max(abs(hi), 1.0):
        return np.zeros_like(depth)
    return (depth - lo) / (hi - lo)


def _segments(anchors: list[str]) -> np.ndarray:
    """A 256-level colormap through equally spaced colours (hex), interpolated as matplotlib's
    LinearSegmentedColormap builds its lookup table, then x 255 truncated to uint8 as matplotlib-based
    tools convert it (Depth Anything's run.py)."""
    y = np.array([[int(h[k:k + 2], 16) for k in (0, 2, 4)] for h in anchors], np.float64) / 255
    x = 1.0 - np.linspace(0, 1, len(anchors))[::-1]  # the positions of a reversed map, as matplotlib computes them
    t = np.linspace(0, 1, 256)
    ind = np.searchsorted(x, t)[1:-1]
    distance = ((t[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1]))[:, None]
    table = np.concatenate([y[:1], distance * (y[ind] - y[ind - 1]) + y[ind - 1], y[-1:]])
    return (np.clip(table, 0, 1) * 255).astype(np.uint8)


#: The colormaps pictures and videos are drawn with (near is bright / warm): inferno (default), Depth
#: Anything's Spectral_r (ColorBrewer's Spectral, reversed), and gray.
COLORMAPS = {
    "inferno": INFERNO,
    "spectral_r": _segments(["5e4fa2", "3288bd", "66c2a5", "abdda4", "e6f598", "ffffbf", "fee08b", "fdae61",
                             "f46d43", "d53e4f", "9e0142"]),
    "gray": np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
}


def colormap(name: str) -> np.ndarray:
    """The (256, 3) uint8 table of colormap `name` (a key of COLORMAPS, any case)."""
    table = COLORMAPS.get(name.lower())
    if table is None:
        raise ValueError(f"unknown colormap {name!r}; known: {', '.join(COLORMAPS)}")
    return table


def colorize(depth: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(h, w) inverse depth -> (h, w, 3) uint8 RGB in colormap `cmap`; near (large inverse depth) is bright.

    The map is first scaled to [0, 1] by its own minimum and maximum (`normalized`), so colours
    compare within one picture, not across pictures. A constant map takes the colormap's first colour.
    """
    return colormap(cmap)[np.round(normalized(depth) * 255).astype(np.uint8)]


METRIC_PNG16_SCALE = 256.0  # metric png16: uint16 units per metre


def gray8(depth: np.ndarray) -> np.ndarray:
    """(h, w) inverse depth -> (h, w) uint8, scaled to its own range."""
    return np.round(normalized(depth) * 255).astype(np.uint8)


def gray16(depth: np.ndarray) -> np.ndarray:
    """(h, w) inverse depth -> (h, w) uint16, scaled to its own range."""
    return np.round(normalized(depth) * 65535).astype(np.uint16)


def to_pil(depth: np.ndarray, mode: str = "gray16", *, metric: bool = False, cmap: str = "inferno"):
    """A depth map as a PIL image, as the files of the same format hold it: "gray16" (mode I;16: own
    range, or metres x 256 for a `metric` map, as png16), "gray8" (mode L) or "color" (RGB inferno);
    pictures show near as bright."""
    from PIL import Image

    if mode == "gray16":
        return Image.fromarray(metric_png16(depth) if metric is True else gray16(depth))
    if mode == "gray8":
        return Image.fromarray(gray8(_shown(depth, metric)))
    if mode == "color":
        return Image.fromarray(colorize(_shown(depth, metric), cmap))
    raise ValueError(f"unknown mode {mode!r}; expected gray16, gray8 or color")


def metric_png16(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 round(metres x 256), clipped to [0, 65535] (KITTI's depth-PNG convention)."""
    return np.clip(np.round(np.asarray(depth, np.float64) * METRIC_PNG16_SCALE), 0, 65535).astype(np.uint16)


def side_by_side(picture: np.ndarray, depth: np.ndarray, cmap: str = "inferno") -> np.ndarray:
    """(h, w, 3) picture (uint8, or float in [0, 1]) and its (h, w) depth -> (h, 2w, 3) uint8."""
    picture = np.asarray(picture)
    if picture.dtype != np.uint8:
        picture = np.round(np.clip(picture, 0, 1) * 255).astype(np.uint8)
    if picture.shape[:2] != np.shape(depth):
        raise ValueError(f"picture {picture.shape[:2]} and depth {np.shape(depth)} differ in size")
    return np.concatenate([picture, colorize(depth, cmap)], axis=1)


def write_pfm(f, depth: np.ndarray) -> None:
    """A grayscale PFM as MiDaS's write_pfm writes it: "Pf", "w h", scale -1.0 (little-endian), rows bottom to top."""
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise ValueError(f"PFM takes an (h, w) map; got shape {depth.shape}")
    h, w = depth.shape
    f.write(b"Pf\n")
    f.write(b"%d %d\n" % (w, h))
    f.write(b"%f\n" % -1.0)
    f.write(np.flipud(depth).astype("<f4").tobytes())


def read_pfm(path) -> np.ndarray:
    """Read a grayscale PFM (either byte order) back to (h, w) float32, top row first."""
    with open(path, "rb") as f:
        if f.readline().rstrip() != b"Pf":
            raise ValueError(f"{path}: not a grayscale PFM file")
        w, h = (int(v) for v in f.readline().split())
        scale = float(f.readline())
        data = np.frombuffer(f.read(), "<f4" if scale < 0 else ">f4")
    if data.size != w * h:
        raise ValueError(f"{path}: {data.size} values for {w}x{h}")
    return np.flipud(data.reshape(h, w)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Frame sequences of videos


class NpyStack:
    """(n, h, w) float32 frames streamed into a .npy file whose header gets the count n on commit()."""

    takes = "depth"  # the raw depth of each frame

    HEADER_BYTES = 128  # magic, version, length and the padded dict: room for any shape

    def __init__(self, path: Path, size: tuple[int, int], replace: bool = True):
        self.size, self.count = size, 0
        self._atomic = atomic_write(path, ".npy", replace=replace)
        self._file = self._atomic.__enter__()
        self._file.write(self._header())

    def _header(self) -> bytes:
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({self.count}, {self.size[0]}, {self.size[1]}), }}"
        text = text.ljust(self.HEADER_BYTES - 10 - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")

    def write(self, depth: np.ndarray):
        self._file.write(np.ascontiguousarray(depth, "<f4").tobytes())
        self.count += len(depth)

    def commit(self):
        self._file.seek(0)
        self._file.write(self._header())
        self._file.seek(0, 2)
        self._atomic.__exit__(None, None, None)

    def discard(self):
        error = RuntimeError("discarded")
        self._atomic.__exit__(RuntimeError, error, None)


class Png16Frames:
    """16-bit grayscale PNGs folder/000000.png, 000001.png, ...: the folder appears whole on commit() (written
    beside it under a temporary name first), or not at all; a folder it replaces (--overwrite) goes whole."""

    takes = "mapped16"  # each frame mapped to uint16 by the video's range (one mapping for the whole video)

    def __init__(self, folder: Path, size: tuple[int, int] | None = None, replace: bool = True):
        from .atomic import partial_prefix

        self.folder, self.count, self.replace = Path(folder), 0, replace
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.folder.parent / f"{partial_prefix()}{self.folder.name}"
        self.tmp.mkdir()

    def write(self, frames: np.ndarray):  # (b, h, w) uint16
        from PIL import Image

        for f in frames:
            Image.fromarray(f).save(self.tmp / f"{self.count:06d}.png", format="PNG")
            self.count += 1

    def commit(self):
        import shutil

        if self.folder.exists() or self.folder.is_symlink():
            if not self.replace:  # another run made it meanwhile: its frames stay
                self.discard()
                raise FileExistsError(f"{self.folder}: appeared meanwhile; not replaced")
            if self.folder.is_dir() and not self.folder.is_symlink():
                shutil.rmtree(self.folder)  # the previous frames of this name, replaced as a whole
        os.rename(self.tmp, self.folder)  # fails rather than merge into a folder another run just filled

    def discard(self):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The format registry: one entry per output format; the CLI's -f, its help and the file names read it.


@dataclass(frozen=True)
class Format:
    """An output format: the file name ending after the picture's stem, and how a depth map is encoded.

    `encode(file, depth, picture, metric)` writes one picture's map (`picture` is given when
    `needs_picture`); None for a format another module writes (the point cloud: geometry.py).
    Videos take the formats that have `frames`: `frames(path, (h, w), replace)` opens a writer of the
    video's frames (its `takes`: the raw depth, or the frames as the video maps them to 16 bits;
    `write(batch)`, then `commit()` or `discard()`), named `<stem><frames_ending>`.
    """

    name: str
    ending: str
    description: str
    encode: Callable[[BinaryIO, np.ndarray, np.ndarray | None, bool], None] | None
    needs_picture: bool = False
    frames: Callable[[Path, tuple[int, int], bool], object] | None = None
    frames_ending: str | None = None
    uses_colormap: bool = False  # encode takes cmap= as well


def _shown(depth, metric):
    """What pictures show, near bright: inverse depth as it is, depth (metric, or RELATIVE_DEPTH) negated."""
    return -np.asarray(depth) if metric else depth


#: The `metric` value of a relative depth map (larger is farther, unknown scale: Depth Anything 3 monocular):
#: pictures show it negated as metric depth, png16 scales it to its own range as inverse depth.
RELATIVE_DEPTH = "relative depth"


def units_of(config):
    """The `metric` value the writers take for a model's output: True (metres), RELATIVE_DEPTH or False."""
    return True if config.is_metric else RELATIVE_DEPTH if config.predicts_depth else False


def _png(f, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(f, format="PNG")


def _png16(f, depth, picture, metric) -> None:
    _png(f, metric_png16(depth) if metric is True else gray16(depth))


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add an output format (a name the CLI's -f takes)."""
    if fmt.name in FORMATS:
        raise ValueError(f"an output format named {fmt.name!r} exists already")
    FORMATS[fmt.name] = fmt
    return fmt


for _fmt in (
    Format("color", "-depth.png", "colormap PNG (--cmap, default inferno), near is bright",
           lambda f, d, p, m, cmap="inferno": _png(f, colorize(_shown(d, m), cmap)), uses_colormap=True),
    Format("gray8", "-depth-gray8.png", "8-bit grayscale PNG", lambda f, d, p, m: _png(f, gray8(_shown(d, m)))),
    Format("png16", "-depth-16.png", "16-bit PNG (color, gray8 and png16 are scaled to each map's own range; a "
           "metric model's png16 holds metres x 256)", _png16,
           frames=Png16Frames, frames_ending="-depth-16"),
    Format("npy", "-depth.npy", "raw float32: inverse depth, or metres for metric models",
           lambda f, d, p, m: np.save(f, np.asarray(d, np.float32)),
           frames=NpyStack, frames_ending="-depth.npy"),
    Format("pfm", "-depth.pfm", "raw float32 as MiDaS writes it", lambda f, d, p, m: write_pfm(f, d)),
    Format("side", "-side.png", "picture and color depth side by side",
           lambda f, d, p, m, cmap="inferno": _png(f, side_by_side(p, _shown(d, m), cmap)), needs_picture=True,
           uses_colormap=True),
    Format("ply", "-points.ply", "coloured point cloud (see the point cloud options)", None, needs_picture=True),
    Format("sky", "-sky.png", "sky mask PNG, sky white (models with a sky output: Depth Anything 3 monocular)", None),
):
    register_format(_fmt)


def write_depth(path, depth: np.ndarray, fmt: str, *, picture: np.ndarray | None = None,
                replace: bool = True, metric=False, cmap: str = "inferno") -> Path:
    """Write `depth` as `fmt` (a key of FORMATS) to `path`, via a temporary file and a rename.

    A format that `needs_picture` takes the `picture`. `replace=False` refuses (FileExistsError)
    to replace a file that is at `path` when the write completes.
    `metric`: `depth` is in metres (see the module's docstring for what each format then holds), or
    RELATIVE_DEPTH: depth of unknown scale (`units_of` says which for a model).
    """
    entry = FORMATS.get(fmt)
    if entry is None or entry.encode is None:
        known = ", ".join(n for n, f in FORMATS.items() if f.encode is not None)
        raise ValueError(f"unknown format {fmt!r}; expected one of {known}")
    if entry.needs_picture and picture is None:
        raise ValueError(f"the {fmt} format needs the picture")
    colour = {"cmap": cmap} if entry.uses_colormap else {}
    with atomic_write(path, Path(entry.ending).suffix, replace=replace) as f:
        entry.encode(f, depth, picture, metric, **colour)
    return Path(path)


def write_sky(path, sky: np.ndarray, *, replace: bool = True) -> Path:
    """Write a bool (h, w) sky mask as an 8-bit PNG (sky 255, the rest 0), via a temporary file and a rename."""
    with atomic_write(path, ".png", replace=replace) as f:
        _png(f, np.where(np.asarray(sky, bool), 255, 0).astype(np.uint8))
    return Path(path)
