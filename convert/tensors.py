"""What every checkpoint reader shares: the lazy tensor reference and the bounds on what a file may declare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

# Declared element counts (storage sizes, tensor sizes ignoring zero dims, strides, offsets) above
# 2**48 are refused outright: far beyond any file, and numpy cannot even describe some of them.
MAX_ELEMENTS = 1 << 48
MAX_NDIM = 32  # numpy's own limit on older versions; real weights have at most 5


@dataclass(frozen=True)
class TensorRef:
    """One tensor of a checkpoint: its metadata now, its data on ``read()``."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    _source: Any = field(repr=False, compare=False)  # has load(ref) -> array

    def read(self) -> np.ndarray:
        """Read only this tensor's bytes; returns a C-contiguous array of ``shape``/``dtype``."""
        return self._source.load(self)


def is_count(value) -> bool:
    return type(value) is int and 0 <= value <= MAX_ELEMENTS


def bounded(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def show(value) -> str:
    """A short description of an untrusted value for a message, in time independent of its size.

    Strings and small numbers are shown (strings cut to 80 characters); anything else only by type
    and length, never by repr(): a pickle can build a list whose repr is 10**14 bytes in a few
    hundred bytes, by sharing sublists through its memo.
    """
    if isinstance(value, str):
        return repr(bounded(value))
    if type(value) in (bool, float) or value is None:
        return repr(value)
    if type(value) is int:
        return str(value) if value.bit_length() <= 64 else f"an int of {value.bit_length()} bits"
    if isinstance(value, (tuple, list, dict, bytes, bytearray, set, frozenset)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def byteswapped(array: np.ndarray) -> np.ndarray:
    if array.dtype.itemsize == 1:
        return array
    return array.view(f"u{array.dtype.itemsize}").byteswap().view(array.dtype)
