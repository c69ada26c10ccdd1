"""Key tables: which source-checkpoint key fills which parameter of the Flax tree, and how.

A table is a list of `Entry(source, target, layout)`. `check_state_dict` compares a checkpoint
with a table and the model's parameter shapes without reading any tensor data, listing every
missing, unexpected and mis-shaped key at once; `convert_state_dict` then reads exactly the
tensors the table names. The tables themselves live with each encoder family (beit.py,
swinv2.py) and the neck layouts (midas.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import ConversionError

# How a PyTorch array becomes a Flax one.
LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,  # (out, in) -> (in, out)
    "conv": lambda a: a.transpose(2, 3, 1, 0),  # (out, in, kh, kw) -> (kh, kw, in, out)
    "conv_transpose": lambda a: a.transpose(2, 3, 0, 1),  # (in, out, k, k) -> (k, k, in, out)
}
# ... and back (a Flax array as the PyTorch checkpoint holds it): for writing other formats.
INVERSE_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "conv_transpose": lambda a: a.transpose(2, 3, 0, 1),
}
_SHAPE_OF = {
    "copy": lambda s: s,
    "linear": lambda s: s[::-1],
    "conv": lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None,
    "conv_transpose": lambda s: (s[2], s[3], s[0], s[1]) if len(s) == 4 else None,
}


@dataclass(frozen=True)
class Entry:
    source: str  # PyTorch state-dict key
    target: str  # "/"-joined path in the Flax params tree
    layout: str  # key of LAYOUTS


@dataclass(frozen=True)
class Skip:
    pattern: str  # regular expression over source keys
    reason: str  # why the model does not need it


def shape_of(state: Mapping, key: str, path, ndim: int, kind: str = "checkpoint") -> tuple[int, ...]:
    """The shape of `key`, checked: the one way detection reads a shape. A missing key, or one of another
    rank (a crafted scalar where a matrix belongs), is a ConversionError naming the file and the key."""
    if key not in state:
        raise ConversionError(path, f"not a {kind}: key {key!r} is missing")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ConversionError(path, f"{key[:80]} has {len(shape)} dimensions {shape}; a {kind} has {ndim}")
    return shape


# -- table pieces ---------------------------------------------------------------------------------


def weights(src, dst, layout, bias=True) -> list[Entry]:
    """A Linear or Conv: weight -> kernel (re-laid out), bias -> bias."""
    out = [Entry(f"{src}.weight", f"{dst}/kernel", layout)]
    return out + ([Entry(f"{src}.bias", f"{dst}/bias", "copy")] if bias else [])


def linear(src, dst, bias=True) -> list[Entry]:
    return weights(src, dst, "linear", bias)


def conv(src, dst, bias=True, layout="conv") -> list[Entry]:
    return weights(src, dst, layout, bias)


def norm(src, dst) -> list[Entry]:
    return [Entry(f"{src}.weight", f"{dst}/scale", "copy"), Entry(f"{src}.bias", f"{dst}/bias", "copy")]


def biased_qkv_and_mlp(s, d) -> list[Entry]:
    """The pieces the BEiT and SwinV2 blocks share: layers.QKV (q and v biases) and layers.Mlp."""
    return [
        Entry(f"{s}.attn.q_bias", f"{d}/attn/qkv/q_bias", "copy"),
        Entry(f"{s}.attn.v_bias", f"{d}/attn/qkv/v_bias", "copy"),
        Entry(f"{s}.attn.qkv.weight", f"{d}/attn/qkv/qkv/kernel", "linear"),
    ] + linear(f"{s}.mlp.fc1", f"{d}/mlp/fc1") + linear(f"{s}.mlp.fc2", f"{d}/mlp/fc2")


# -- applying a table -------------------------------------------------------------------------------


def skipped_keys(state: Iterable[str], skips: Iterable[Skip]) -> list[str]:
    rx = [re.compile(s.pattern) for s in skips]
    return [k for k in state if any(r.fullmatch(k) for r in rx)]


def check_state_dict(state: Mapping, table: list[Entry], skips: Iterable[Skip],
                     expected_shapes: Mapping[str, tuple], shown: Callable[[str], str] = str) -> list[str]:
    """Every way `state` fails to fit the model (missing, unexpected, mis-shaped keys); reads no tensor data.

    `shown(key)`: how a key is named in the messages (a file of another layout names its own keys).
    """
    known = {e.source for e in table} | set(skipped_keys(state, skips))
    missing = [shown(e.source) for e in table if e.source not in state]
    unexpected = [shown(k) for k in state if k not in known]
    untargeted = sorted(set(expected_shapes) - {e.target for e in table})
    mis_shaped = []
    for e in table:
        if e.source in state:
            got = _SHAPE_OF[e.layout](tuple(state[e.source].shape))
            want = tuple(expected_shapes.get(e.target, ()))
            if got != want:
                mis_shaped.append(f"{shown(e.source)}: shape {tuple(state[e.source].shape)} does not fit "
                                  f"{e.target} {want}")
    return problem_list(missing=missing, unexpected=unexpected, mis_shaped=mis_shaped,
                        **{"model parameters with no source": untargeted})


MAX_LISTED = 50  # problems listed per group; the rest are counted


def problem_list(**groups: list[str]) -> list[str]:
    """["3 missing:\\n    a\\n    b\\n    c", ...] for the non-empty groups (underscores read as dashes).

    Each group lists at most MAX_LISTED items, each cut to 200 characters, then "... and N more".
    """
    out = []
    for title, items in groups.items():
        if not items:
            continue
        shown = [i if len(i) <= 200 else i[:200] + f"... ({len(i)} characters)" for i in items[:MAX_LISTED]]
        if len(items) > MAX_LISTED:
            shown.append(f"... and {len(items) - MAX_LISTED:,} more")
        out.append(f"{len(items)} {title.replace('_', '-')}:\n    " + "\n    ".join(shown))
    return out


def apply_table(state: Mapping, table: list[Entry]) -> dict:
    """The nested Flax tree of NumPy arrays that `table` makes of `state` (reads only the tensors it names)."""
    params: dict = {}
    for e in table:
        array = np.ascontiguousarray(LAYOUTS[e.layout](state[e.source].read()))
        node = params
        *parents, leaf = e.target.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = array
    return params
