"""Reading an untrusted .npy file: its header checked before any of its data is allocated or read."""

from __future__ import annotations

from typing import Callable

import numpy as np


def read_npy(f, fail: Callable[[str], Exception], check_shape: Callable[[tuple], object], what: str,
             kinds: str = "fiu") -> np.ndarray:
    """The array in the open binary file `f`: the declared shape goes through `check_shape` (which raises the
    caller's error), the dtype must be of `kinds` (never objects), and the data must be exactly as long as the
    header declares. Every other problem raises `fail(message)`; `what` names the array in the messages."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise fail(f"unsupported .npy version {version}")
    shape = tuple(int(s) for s in shape)
    check_shape(shape)
    if dtype.kind not in kinds or dtype.hasobject:
        raise fail(f"{what} has type {dtype}; expected numbers")
    n = int(np.prod(shape)) * dtype.itemsize
    data = f.read(n + 1)
    if len(data) != n:
        raise fail(f"{what} holds {len(data)} bytes, not the {n} its header declares")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
