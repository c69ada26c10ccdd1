"""The safetensors format: the one reader and the one writer of dpt-jax.

8-byte little-endian header length N, N bytes of JSON mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
data section that follows the header) plus an optional ``"__metadata__"``
mapping of strings.  Parsed here directly so that a tensor read touches only
its own byte range.

Everything a header declares is checked before anything is allocated: dtypes from the
safetensors vocabulary, shapes within the bounds of `tensors`, each tensor's bytes exactly its
shape's, the tensors tiling the data section without overlaps or gaps.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import CheckpointError
from .tensors import BFLOAT16, MAX_ELEMENTS, MAX_NDIM, TensorRef, bounded, byteswapped, is_count, show

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": BFLOAT16,
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

# A header spends about 100 bytes per tensor (the largest official DPT checkpoint has 487 tensors:
# ~50 KB). 16 MiB and 100,000 tensors leave room for any DPT model while bounding what parsing
# the JSON can allocate (a 99 MB header of zero-size tensors took 1.9 GB before it was refused).
_MAX_SAFETENSORS_HEADER_BYTES = 16 << 20
MAX_TENSORS = 100_000


def read_safetensors(path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    header, data_start, data_size = _read_safetensors_header(path)
    metadata = _safetensors_metadata(path, header.pop("__metadata__", {}))
    refs = OrderedDict()
    spans = []
    for key, entry in header.items():
        dtype, shape, (begin, end) = _parse_safetensors_entry(path, key, entry)
        if end > data_size:
            raise CheckpointError(
                path, f"tensor {show(key)}: data_offsets [{begin}, {end}] run past the {data_size}-byte data section "
                "(truncated file or lying header)"
            )
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                path, f"tensor {show(key)}: shape {shape} {dtype} needs {expected} bytes but data_offsets "
                f"[{begin}, {end}] span {end - begin}"
            )
        spans.append((begin, end, key))
        refs[key] = TensorRef(key, shape, dtype, _FileSpanSource(path, data_start + begin, end - begin))
    _check_spans_tile(path, spans, data_size)
    return refs, metadata


def _read_safetensors_header(path) -> tuple[dict, int, int]:
    """The parsed JSON header, where the data section starts and its size."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, "too short to be a safetensors file")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > _MAX_SAFETENSORS_HEADER_BYTES:
                raise CheckpointError(
                    path, f"safetensors header size {header_size} is implausibly large "
                    f"(at most {_MAX_SAFETENSORS_HEADER_BYTES} bytes accepted)"
                )
            if header_size > file_size - 8:
                raise CheckpointError(
                    path, f"safetensors header claims {header_size} bytes but only {file_size - 8} follow (truncated?)"
                )
            raw = f.read(header_size)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read safetensors header: {exc.strerror or exc}") from exc
    declared = raw.count(b'"data_offsets"')  # counted before parsing: each tensor entry names its offsets once
    if declared > MAX_TENSORS:
        raise CheckpointError(path, f"safetensors header declares {declared} tensors; at most {MAX_TENSORS} are "
                                    "accepted")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"safetensors header is not valid JSON: {bounded(str(exc))}") from None
    except RecursionError:
        raise CheckpointError(path, "safetensors header is not valid JSON: nested too deeply") from None
    except MemoryError:
        raise CheckpointError(path, "safetensors header: not enough memory to parse it") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    return header, 8 + header_size, file_size - 8 - header_size


def _safetensors_metadata(path, metadata) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(path, "safetensors __metadata__ must map strings to strings")
    return dict(metadata)


def _parse_safetensors_entry(path, key: str, entry) -> tuple[np.dtype, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"safetensors entry {show(key)} is not a JSON object")
    dtype_name = entry.get("dtype")
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise CheckpointError(
            path, f"tensor {show(key)} has unsupported dtype {show(dtype_name)} "
            f"(known: {', '.join(DTYPES)})"
        )
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(is_count(n) for n in shape)
            or math.prod(max(n, 1) for n in shape) > MAX_ELEMENTS):
        raise CheckpointError(
            path, f"tensor {show(key)} has invalid shape {show(shape)} (expected at most {MAX_NDIM} "
            "non-negative ints, at most 2**48 elements)"
        )
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CheckpointError(path, f"tensor {show(key)} has invalid data_offsets {show(offsets)}")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _check_spans_tile(path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """Tensors must cover the data section exactly, without overlaps or gaps."""
    position = 0
    for begin, end, key in sorted(spans):
        if begin != position:
            problem = "overlaps the previous tensor" if begin < position else f"leaves a gap at byte {position}"
            raise CheckpointError(path, f"tensor {show(key)}: data_offsets [{begin}, {end}] {problem}")
        position = end
    if position != data_size:
        raise CheckpointError(path, f"data section has {data_size} bytes but the tensors cover {position}")


@dataclass(frozen=True)
class _FileSpanSource:
    path: str | os.PathLike
    start: int
    nbytes: int

    def load(self, ref: TensorRef) -> np.ndarray:
        try:
            buffer = bytearray(self.nbytes)
            with open(self.path, "rb") as f:
                f.seek(self.start)
                got = f.readinto(buffer)
        except MemoryError:
            raise CheckpointError(
                self.path, f"not enough memory to read tensor {show(ref.key)} ({self.nbytes} bytes)"
            ) from None
        except OSError as exc:
            raise CheckpointError(self.path, f"cannot read tensor {show(ref.key)}: {exc.strerror or exc}") from exc
        if got != self.nbytes:
            raise CheckpointError(
                self.path, f"tensor {show(ref.key)}: expected {self.nbytes} bytes at offset {self.start}, "
                f"got {got} (truncated?)"
            )
        array = np.frombuffer(buffer, dtype=ref.dtype).reshape(ref.shape)
        if sys.byteorder != "little":
            array = byteswapped(array)
        return array


def read_safetensors_metadata(path) -> dict[str, str]:
    """The ``__metadata__`` mapping of a safetensors file ({} if it has none)."""
    if not is_safetensors(path):
        raise CheckpointError(path, "not a safetensors file")
    return read_safetensors(path)[1]


def is_safetensors(path) -> bool:
    """Whether the file's bytes start as a safetensors file does (an 8-byte length, then a JSON object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(path, f"cannot open: {exc.strerror or exc}") from exc
    return head[8:9] == b"{"


def write_safetensors(path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Stream `arrays` into a safetensors file, one array at a time, via a temporary file and a rename.

    A crash or a full disk leaves no partial file at `path`.
    """
    from ..atomic import atomic_write

    names = {dtype: name for name, dtype in DTYPES.items()}
    header, offset = {}, 0
    for key, a in arrays.items():
        header[key] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with atomic_write(path, ".safetensors") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
