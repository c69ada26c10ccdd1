"""Writing depth maps: colour PNG, 16-bit PNG or raw .npy, each written atomically.

What the numbers are depends on the model (`DPTConfig.is_metric`):
  relative models (MiDaS, Depth Anything relative): inverse depth of unknown scale and shift;
    npy holds it as predicted, png16 and color scale each picture to its own range (near is bright);
  metric models (Depth Anything metric): depth in metres; npy holds metres, png16 holds
    round(metres x 256) as uint16 (KITTI's depth-PNG convention: 1/256 m steps up to 255.99 m),
    the same scale for every picture, not normalised; color is per picture, near is bright.
"""

from __future__ import annotations

from pathlib import Path

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

FORMATS = {"color": ".png", "png16": ".png", "npy": ".npy"}


def normalized(depth: np.ndarray) -> np.ndarray:
    """Inverse depth scaled to [0, 1] by its own range (all zeros for a constant map), as MiDaS's write_depth."""
    depth = np.asarray(depth, np.float64)
    lo, hi = float(depth.min()), float(depth.max())
    if not np.isfinite([lo, hi]).all():
        raise ValueError("the depth map has NaN or infinite values")
    if hi - lo <= np.finfo(np.float32).eps * max(abs(hi), 1.0):
        return np.zeros_like(depth)
    return (depth - lo) / (hi - lo)


def colorize(depth: np.ndarray) -> np.ndarray:
    """(h, w) inverse depth -> (h, w, 3) uint8 RGB; near is bright."""
    return INFERNO[np.round(normalized(depth) * 255).astype(np.uint8)]


METRIC_PNG16_SCALE = 256.0  # metric png16: uint16 units per metre


def write_depth(path, depth: np.ndarray, fmt: str, metric: bool = False) -> Path:
    """Write `depth` as `fmt` ("color", "png16" or "npy") to `path`, via a temporary file and a rename.

    `metric`: `depth` is in metres (see the module's docstring for what each format then holds).
    """
    from PIL import Image

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    with atomic_write(path, FORMATS[fmt]) as f:
        if fmt == "npy":
            np.save(f, np.asarray(depth, np.float32))
        elif fmt == "png16" and metric:
            scaled = np.clip(np.round(np.asarray(depth, np.float64) * METRIC_PNG16_SCALE), 0, 65535)
            Image.fromarray(scaled.astype(np.uint16)).save(f, format="PNG")
        elif fmt == "png16":
            Image.fromarray(np.round(normalized(depth) * 65535).astype(np.uint16)).save(f, format="PNG")
        else:
            Image.fromarray(colorize(-np.asarray(depth) if metric else depth)).save(f, format="PNG")
    return Path(path)
