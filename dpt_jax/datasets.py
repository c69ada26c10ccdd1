"""Evaluation datasets: each one's on-disk layout, ground-truth format and default protocol.

    DATASETS[name].open(root) -> [Sample]   the layout is checked first: a folder that does not match is one
                                            DatasetError naming what is missing
    Sample.picture                          a pictures.Source (size known, pixels read on demand)
    Sample.load_truth() -> (depth, valid)   ground truth in metres (h, w) float32 and where it exists

Readers never unpickle (np.load(allow_pickle=False)) and check sizes a file declares against what it holds
before reading it. The NYUv2 labeled .mat is MATLAB v7.3 (HDF5): it needs h5py, the `eval` extra.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DatasetError
from .inputs import IMAGE_SUFFIXES
from .pictures import MAX_PIXELS, Source, open_source


@dataclass(frozen=True)
class Protocol:
    """How a dataset is scored by default: its split, crop, depth caps, and where these rules come from."""

    split: str
    crop: str = "none"  # a metrics.CROPS name
    min_depth: float = 1e-3  # valid ground truth: min_depth < gt < max_depth
    max_depth: float = float("inf")
    source: str = ""


@dataclass(frozen=True)
class Sample:
    """One picture of a dataset and its ground truth."""

    name: str  # its id in the dataset (a relative path without suffix, or an index)
    picture: Source
    load_truth: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> depth (h, w) float32 metres, valid (h, w) bool
    sequence: str | None = None  # the video it belongs to (Sintel's scene), for one alignment per video


@dataclass(frozen=True)
class Dataset:
    name: str
    layout: str  # what `--data` must hold, one line
    protocol: Protocol
    open: Callable[[Path], list[Sample]]


# ---------------------------------------------------------------------------------------------
# Small readers of ground-truth formats


def _depth_and_valid(depth: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float32 depth with 0 where it is missing (not finite, not positive or not in `valid`), and its mask."""
    depth = np.asarray(depth, np.float32)
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= valid
    return np.where(ok, depth, 0).astype(np.float32), ok


def read_png16(path, scale: float) -> np.ndarray:
    """A 16-bit grayscale PNG as float32 value / scale (KITTI: metres x 256)."""
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG"]) as img:
            if img.mode not in ("I;16", "I;16B", "I"):  # an 8-bit picture here would be read as nonsense depth
                raise DatasetError(path, f"expected a 16-bit grayscale PNG; got mode {img.mode}")
            return np.asarray(img, np.float32) / np.float32(scale)
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(path, f"cannot read the 16-bit PNG: {e}") from None


def read_npy(path, ndim: tuple[int, ...] = (2,)) -> np.ndarray:
    """A .npy array (never unpickled; its header is checked against the file's size by a memory map)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(path, f"not a readable .npy array: {str(e)[:200]}") from None
    if array.ndim not in ndim or array.dtype.kind not in "fiub":
        raise DatasetError(path, f"expected a numeric array of {' or '.join(map(str, ndim))} dimensions; "
                                 f"got {array.dtype} {array.shape}")
    return np.array(array)


def read_mask_png(path) -> np.ndarray:
    """A mask picture: nonzero is valid."""
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG"]) as img:
            return np.asarray(img.convert("L")) > 0
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(path, f"cannot read the mask: {e}") from None


def read_raw_float32(path, size: tuple[int, int]) -> np.ndarray:
    """ETH3D's depth: raw little-endian float32, row-major, (h, w) of its picture; inf where missing."""
    h, w = size
    nbytes = Path(path).stat().st_size
    if nbytes != h * w * 4:
        raise DatasetError(path, f"{nbytes} bytes; a {w}x{h} float32 depth map holds {h * w * 4}")
    return np.fromfile(path, "<f4").reshape(h, w)


SINTEL_TAG = 202021.25


def read_sintel_dpt(path) -> np.ndarray:
    """A Sintel .dpt depth file: float32 tag 202021.25, int32 width, int32 height, float32 rows."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or struct.unpack("<f", head[:4])[0] != SINTEL_TAG:
            raise DatasetError(path, "not a Sintel .dpt file (no 202021.25 tag)")
        w, h = struct.unpack("<ii", head[4:])
        held = Path(path).stat().st_size - 12  # checked before anything of the declared size is read
        if w <= 0 or h <= 0 or held != w * h * 4:
            raise DatasetError(path, f"{held} bytes of depth; {w}x{h} needs {max(w * h * 4, 0)}")
        return np.frombuffer(f.read(held), "<f4").reshape(h, w)


def read_pfm(path) -> np.ndarray:
    """A grayscale PFM (output.read_pfm), its errors named as dataset errors."""
    from .output import read_pfm as read

    try:
        return read(path)
    except (OSError, ValueError) as e:
        raise DatasetError(path, f"cannot read the PFM: {str(e)[:200]}") from None


def read_middlebury_calib(path) -> dict[str, float]:
    """calib.txt of Middlebury 2014: focal (cam0's fx, pixels), doffs (pixels) and baseline (mm)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise DatasetError(path, f"cannot read: {e.strerror or e}") from None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        cam0 = [float(v) for v in re.split(r"[\s;]+", fields["cam0"].strip().strip("[]").strip())]
        return {"focal": cam0[0], "doffs": float(fields["doffs"]), "baseline": float(fields["baseline"])}
    except (KeyError, ValueError, IndexError):
        raise DatasetError(path, "expected Middlebury calib.txt lines cam0=[f 0 cx; 0 f cy; 0 0 1], doffs=, "
                                 "baseline=") from None


def middlebury_depth(disparity: np.ndarray, calib: dict[str, float]) -> np.ndarray:
    """Depth in metres from Middlebury disparity: baseline * f / (d + doffs) (baseline in mm); inf stays inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (calib["baseline"] * calib["focal"] / (disparity.astype(np.float64) + calib["doffs"]) / 1000.0)


# A minimal reader of MATLAB v5 .mat numeric arrays (NYUv2's splits.mat), so no general unpickler is needed.
_MAT_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15


def _mat_elements(data: bytes, endian: str, where):
    """(type, payload) of each data element in `data`."""
    pos = 0
    while pos + 8 <= len(data):
        first, second = struct.unpack(endian + "II", data[pos:pos + 8])
        if first >> 16:  # small data element: type and size in one word, payload in the next 4 bytes
            kind, size, start, step = first & 0xFFFF, first >> 16, pos + 4, 8
        else:
            kind, size, start = first, second, pos + 8
            step = 8 + (size if kind == _MI_COMPRESSED else (size + 7) // 8 * 8)
        if start + size > len(data):
            raise DatasetError(where, "truncated MATLAB data element")
        yield kind, data[start:start + size]
        pos += step


def read_mat_v5(path) -> dict[str, np.ndarray]:
    """Numeric arrays of a MATLAB v5 .mat file by name (column-major, as MATLAB stores them)."""
    raw = Path(path).read_bytes()
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        raise DatasetError(path, "not a MATLAB v5 .mat file")
    endian = "<" if raw[126:128] == b"IM" else ">"
    out = {}

    def matrix(payload):
        parts = list(_mat_elements(payload, endian, path))
        if len(parts) < 4 or len(parts[1][1]) % 4:
            return
        dims = np.frombuffer(parts[1][1], endian + "i4")
        name = parts[2][1].decode("ascii", "replace")
        kind, values = parts[3]
        if (kind not in _MAT_TYPES or (dims < 0).any()
                or int(np.prod(dims, dtype=np.int64)) * np.dtype(_MAT_TYPES[kind]).itemsize != len(values)):
            return  # not a plain numeric array: not one NYUv2 needs
        out[name] = np.frombuffer(values, endian + _MAT_TYPES[kind]).reshape(tuple(dims), order="F")

    for kind, payload in _mat_elements(raw[128:], endian, path):
        if kind == _MI_COMPRESSED:
            try:
                inner = zlib.decompressobj().decompress(payload, 1 << 28)
            except zlib.error as e:
                raise DatasetError(path, f"corrupt compressed MATLAB element: {e}") from None
            for k, p in _mat_elements(inner, endian, path):
                if k == _MI_MATRIX:
                    matrix(p)
        elif kind == _MI_MATRIX:
            matrix(payload)
    return out


# ---------------------------------------------------------------------------------------------
# Layout helpers


def _require(root: Path, *paths: str) -> None:
    """One DatasetError naming every required path missing under root."""
    if not root.is_dir():
        raise DatasetError(root, "no such folder" if not root.exists() else "not a folder")
    missing = [p for p in paths if not (root / p).exists()]
    if missing:
        raise DatasetError(root, f"missing {', '.join(missing)}")


def _lazy_picture(path: Path) -> Source:
    """The picture's Source: its header is read now (a bad picture is named before any model loads), its pixels
    when the model needs them."""
    return open_source(path)


def _pictures_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _nonempty(root: Path, samples: list[Sample], what: str) -> list[Sample]:
    if not samples:
        raise DatasetError(root, f"no {what} found")
    return samples


# ---------------------------------------------------------------------------------------------
# The datasets


NYU_MAT, NYU_SPLITS = "nyu_depth_v2_labeled.mat", "splits.mat"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DatasetError("NYUv2's labeled .mat is MATLAB v7.3 (HDF5) and needs h5py: pip install "
                           "'dpt-jax[eval]'") from None
    return h5py


def open_nyuv2(root: Path) -> list[Sample]:
    """NYUv2 labeled: nyu_depth_v2_labeled.mat (images (N, 3, W, H) uint8, depths (N, W, H) metres) and
    splits.mat (testNdxs, 1-based: Eigen's 654 test pictures)."""
    _require(root, NYU_MAT, NYU_SPLITS)
    mat, splits = root / NYU_MAT, root / NYU_SPLITS
    with open(mat, "rb") as f:
        head = f.read(1024)
    if HDF5_SIGNATURE not in (head[:8], head[512:520]):
        raise DatasetError(mat, "not a MATLAB v7.3 (HDF5) file, as the NYUv2 labeled .mat is")
    test = read_mat_v5(splits).get("testNdxs")
    if test is None:
        raise DatasetError(splits, "has no testNdxs array")
    h5py = _h5py()
    try:
        with h5py.File(mat, "r") as f:
            images, depths = f["images"], f["depths"]
            n, channels, w, h = images.shape
            if channels != 3 or depths.shape != (n, w, h) or images.dtype != np.uint8 or h * w > MAX_PIXELS:
                raise DatasetError(mat, f"expected images (N, 3, W, H) uint8 and depths (N, W, H); got images "
                                        f"{images.shape} {images.dtype}, depths {depths.shape}")
    except (OSError, KeyError) as e:
        raise DatasetError(mat, f"cannot read images and depths: {str(e)[:200]}") from None
    indices = [int(i) for i in np.asarray(test).ravel()]
    bad = [i for i in indices if not 1 <= i <= n]
    if bad:
        raise DatasetError(splits, f"test index {bad[0]} is outside the {n} pictures of {NYU_MAT}")

    def read(name: str, i: int) -> np.ndarray:
        with h5py.File(mat, "r") as f:
            return np.asarray(f[name][i - 1])

    samples = []
    for i in indices:
        samples.append(Sample(
            f"{i:04d}", Source(f"{mat}[{i}]", (h, w), lambda i=i: np.ascontiguousarray(read("images", i).T)),
            lambda i=i: _depth_and_valid(read("depths", i).T)))
    return samples


KITTI_SPLIT = "eigen_test_files_with_gt.txt"
#: Where KITTI's depth PNGs may lie under the root: beside the raw data, or in the annotated depth download.
KITTI_DEPTH_ROOTS = ("", "data_depth_annotated", "data_depth_annotated/train", "data_depth_annotated/val")


def open_kitti(root: Path) -> list[Sample]:
    """KITTI, Eigen split: eigen_test_files_with_gt.txt (lines: picture, depth PNG or None, focal; pictures under
    root, depth PNGs under root or a KITTI_DEPTH_ROOTS folder), depth 16-bit PNG in metres x 256 (0: no depth)."""
    _require(root, KITTI_SPLIT)
    samples, missing = [], []
    for line in (root / KITTI_SPLIT).read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[1] == "None":  # pictures without ground truth are not scored
            continue
        picture = root / parts[0]
        depth = next((root / d / parts[1] for d in KITTI_DEPTH_ROOTS if (root / d / parts[1]).is_file()),
                     root / parts[1])
        missing += [str(p.relative_to(root)) for p in (picture, depth) if not p.is_file()]
        if not missing:
            samples.append(Sample(str(Path(parts[0]).with_suffix("")), _lazy_picture(picture),
                                  lambda depth=depth: _depth_and_valid(read_png16(depth, 256.0))))
    if missing:
        raise DatasetError(root, f"{len(missing)} files of {KITTI_SPLIT} missing: {', '.join(missing[:3])}"
                                 + (" ..." if len(missing) > 3 else ""))
    return _nonempty(root, samples, f"lines with ground truth in {KITTI_SPLIT}")


def open_eth3d(root: Path) -> list[Sample]:
    """ETH3D (multi-view DSLR): <scene>/images/dslr_images/*.JPG and <scene>/ground_truth_masked/dslr_images/
    <same name> (raw float32 depth of the picture's size, inf where missing)."""
    _require(root)
    samples, missing = [], []
    for picture in sorted(root.glob("*/images/dslr_images/*")):
        if picture.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        scene = picture.parents[2]
        depth = scene / "ground_truth_masked" / "dslr_images" / picture.name
        if not depth.is_file():
            missing.append(str(depth.relative_to(root)))
            continue
        source = _lazy_picture(picture)
        samples.append(Sample(f"{scene.name}/{picture.stem}", source,
                              lambda d=depth, s=source.size: _depth_and_valid(read_raw_float32(d, s))))
    if missing:
        raise DatasetError(root, f"missing {len(missing)} depth files: {', '.join(missing[:3])}")
    return _nonempty(root, samples, "<scene>/images/dslr_images/ pictures")


def open_diode(root: Path) -> list[Sample]:
    """DIODE: any depth of folders with NAME.png, NAME_depth.npy ((H, W, 1) or (H, W) metres) and
    NAME_depth_mask.npy (nonzero valid); val/indoors and val/outdoor in the release."""
    _require(root)
    samples, missing = [], []
    for picture in _pictures_under(root):
        if picture.stem.endswith(("_depth", "_depth_mask")):
            continue
        depth, mask = (picture.with_name(picture.stem + s) for s in ("_depth.npy", "_depth_mask.npy"))
        missing += [str(p.relative_to(root)) for p in (depth, mask) if not p.is_file()]

        def truth(depth=depth, mask=mask):
            d = read_npy(depth, (2, 3))
            return _depth_and_valid(d.reshape(d.shape[:2]), read_npy(mask) > 0)

        samples.append(Sample(str(picture.relative_to(root).with_suffix("")), _lazy_picture(picture), truth))
    if missing:
        raise DatasetError(root, f"missing {len(missing)} files: {', '.join(missing[:3])}")
    return _nonempty(root, samples, "pictures")


def open_sintel(root: Path) -> list[Sample]:
    """MPI Sintel training: training/clean/<scene>/frame_NNNN.png and training/depth/<scene>/frame_NNNN.dpt."""
    _require(root, "training/clean", "training/depth")
    samples, missing = [], []
    for picture in sorted((root / "training" / "clean").glob("*/*.png")):
        scene = picture.parent.name
        depth = root / "training" / "depth" / scene / (picture.stem + ".dpt")
        if not depth.is_file():
            missing.append(str(depth.relative_to(root)))
            continue
        samples.append(Sample(f"{scene}/{picture.stem}", _lazy_picture(picture),
                              lambda d=depth: _depth_and_valid(read_sintel_dpt(d)), sequence=scene))
    if missing:
        raise DatasetError(root, f"missing {len(missing)} depth files: {', '.join(missing[:3])}")
    return _nonempty(root, samples, "training/clean/<scene>/*.png frames")


def _middlebury_scene(folder: Path, name: str) -> Sample:
    disparity = next((folder / n for n in ("disp0.pfm", "disp0GT.pfm") if (folder / n).is_file()), None)
    if disparity is None or not (folder / "calib.txt").is_file() or not (folder / "im0.png").is_file():
        raise DatasetError(folder, "a Middlebury 2014 scene holds im0.png, disp0.pfm (or disp0GT.pfm) and calib.txt")
    calib = read_middlebury_calib(folder / "calib.txt")
    return Sample(name, _lazy_picture(folder / "im0.png"),
                  lambda: _depth_and_valid(middlebury_depth(read_pfm(disparity), calib)))


def open_middlebury(root: Path) -> list[Sample]:
    """Middlebury 2014: scene folders (or one) with im0.png, disp0.pfm / disp0GT.pfm (inf: unknown) and calib.txt
    (depth = baseline * f / (disparity + doffs))."""
    _require(root)
    if (root / "calib.txt").is_file():
        return [_middlebury_scene(root, root.name)]
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and (p / "calib.txt").is_file())
    return _nonempty(root, [_middlebury_scene(p, p.name) for p in scenes], "scene folders with calib.txt")


def open_folder(root: Path) -> list[Sample]:
    """A generic folder: images/NAME.<picture suffix>, depth/NAME.npy (metres) or depth/NAME.png (16-bit,
    metres x 256), optional mask/NAME.png (nonzero valid); NAME may have sub-folders."""
    _require(root, "images", "depth")
    samples, missing = [], []
    for picture in _pictures_under(root / "images"):
        rel = picture.relative_to(root / "images").with_suffix("")
        depth = next((root / "depth" / rel.with_suffix(s) for s in (".npy", ".png")
                      if (root / "depth" / rel.with_suffix(s)).is_file()), None)
        if depth is None:
            missing.append(f"depth/{rel}.npy or .png")
            continue
        mask = root / "mask" / rel.with_suffix(".png")

        def truth(depth=depth, mask=mask):
            d = read_npy(depth) if depth.suffix == ".npy" else read_png16(depth, 256.0)
            return _depth_and_valid(d, read_mask_png(mask) if mask.is_file() else None)

        samples.append(Sample(str(rel), _lazy_picture(picture), truth))
    if missing:
        raise DatasetError(root, f"missing {len(missing)} depth maps: {', '.join(missing[:3])}")
    return _nonempty(root, samples, "pictures under images/")


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("nyuv2", f"{NYU_MAT} and {NYU_SPLITS}",
            Protocol("Eigen test split, 654 pictures (splits.mat testNdxs)", "eigen", 1e-3, 10.0,
                     "crop and caps: Marigold's NYU dataset and BTS/ZoeDepth (Eigen et al. 2014)"), open_nyuv2),
    Dataset("kitti", f"{KITTI_SPLIT}, the pictures it names, their depth PNGs (or under data_depth_annotated/)",
            Protocol("Eigen test split, lines with ground truth (BTS's eigen_test_files_with_gt.txt)", "garg",
                     1e-3, 80.0, "Garg crop (Garg et al. 2016) as BTS and Monodepth2; 80 m cap as Marigold"),
            open_kitti),
    Dataset("eth3d", "<scene>/images/dslr_images/ and <scene>/ground_truth_masked/dslr_images/",
            Protocol("every DSLR picture with ground truth", "none", 1e-5, float("inf"), "Marigold's ETH3D dataset"),
            open_eth3d),
    Dataset("diode", "NAME.png, NAME_depth.npy, NAME_depth_mask.npy (e.g. val/indoors, val/outdoor)",
            Protocol("validation (indoors + outdoor)", "none", 0.6, 350.0, "Marigold's DIODE dataset"), open_diode),
    Dataset("sintel", "training/clean/<scene>/*.png and training/depth/<scene>/*.dpt",
            Protocol("training set, clean pass", "none", 1e-3, 70.0, "Video Depth Anything's eval.py (sintel)"),
            open_sintel),
    Dataset("middlebury", "scene folders with im0.png, disp0.pfm or disp0GT.pfm, calib.txt",
            Protocol("every scene given", "none", 1e-3, float("inf"), "Middlebury 2014 (Scharstein et al. 2014)"),
            open_middlebury),
    Dataset("folder", "images/NAME.jpg|png, depth/NAME.npy|png (metres; PNG: x 256), optional mask/NAME.png",
            Protocol("every picture under images/"), open_folder),
)}


def open_dataset(name: str, root) -> list[Sample]:
    """The samples of dataset `name` under `root`, its layout checked (DatasetError names what is missing)."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name].open(Path(root))
