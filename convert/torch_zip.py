"""Safe, lazy, torch-free reading of PyTorch and safetensors checkpoints.

``read_state_dict(path)`` returns an ordered mapping ``key -> TensorRef``.  A
``TensorRef`` knows its shape and numpy dtype; its bytes are only read from disk
when ``TensorRef.read()`` is called.  The format is detected from the file's
bytes, not from its name.

The torch zip format (``torch.save`` since torch 1.6)
-----------------------------------------------------
A zip archive (entries normally stored uncompressed) whose entries all live in
one top folder; the folder's name is arbitrary (``archive/`` in 2022-era torch,
the file's stem in recent torch), so it is taken from ``<folder>/data.pkl``::

    <folder>/data.pkl        pickle (protocol 2) of the state dict
    <folder>/data/<key>      raw bytes of one storage, one entry per storage
    <folder>/byteorder       optional, "little" or "big" (absent: little)
    <folder>/version, .format_version, .storage_alignment, .data/serialization_id

Inside ``data.pkl`` a tensor is ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, backward_hooks[, metadata])``,
optionally wrapped in ``torch._utils._rebuild_parameter[_with_state]``.  A
storage is a pickle *persistent id*, the tuple ``('storage', torch.FloatStorage,
key, location, numel)``, whose bytes are the zip entry ``<folder>/data/<key>``.
The state dict is a ``collections.OrderedDict`` on which torch sets a
``_metadata`` attribute (a pickle BUILD); the file may also hold a wrapper such
as ``{"model": state_dict, "optimizer": ...}``.

Safety model
------------
Checkpoints are untrusted.  Unpickling can call any importable callable, so
``data.pkl`` is read by ``_RestrictedUnpickler``, whose ``find_class`` knows only
an explicit allow-list of (module, name) pairs and maps each one to a harmless
stand-in defined here: ``collections.OrderedDict`` to a dict subclass, the torch
rebuild functions to objects that merely *record* storage/offset/size/stride,
and the ``torch.*Storage`` classes to inert, non-callable dtype markers.  Every
other global (``os.system``, ``builtins.eval``, ...) is refused before anything
runs.  Stand-ins are immutable and refuse pickle's BUILD, mapping keys must be
strings or ints, persistent ids must be well-formed storage tuples, and torch
itself is never imported.  Members must be stored uncompressed (as torch.save
writes them) and data.pkl is at most 16 MiB.  Tensors must be non-overlapping
views within their storage (no stride-0 expansion), see ``_view_problem``.  All
metadata (storage entries present and large enough, tensor views within their
storage, safetensors offsets within the file) is validated before
``read_state_dict`` returns; every failure is a ``CheckpointError`` naming the
file.  Legacy (pre-1.6, non-zip) torch files are refused: they can only be read
by unpickling the whole file.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from .tensors import BFLOAT16, MAX_ELEMENTS, MAX_NDIM, TensorRef, bounded, byteswapped, is_count, show

__all__ = ["read_torch_zip"]


# torch storage class name -> numpy dtype of its elements.  UntypedStorage
# counts bytes, so it reads as uint8 (as torch itself does).
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": BFLOAT16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}

# torch.save spends about 200 pickle bytes per tensor (186-217 B in tests/fixtures/*.pt), so the
# largest official MiDaS v3.1 checkpoint (487 tensors) has a data.pkl of about 100 KB.  16 MiB
# leaves room for ~80,000 tensors while bounding what unpickling can allocate (at most a few dozen
# bytes of Python objects per pickle byte).
_MAX_PICKLE_BYTES = 16 << 20
# The tensors of a file may together hold at most this many times the elements of the storages
# they view: torch.save writes each tensor once (views of a shared storage split it; tied weights
# repeat it), whereas a crafted file makes thousands of tensors out of one small storage.
_MAX_VIEW_REUSE = 4
_ZIP_LOCAL_HEADER_BYTES = 30
_WRAPPER_KEYS = ("model", "state_dict")  # {"model": sd, "optimizer": ...} and the like


# --------------------------------------------------------------------------
# Format detection


# --------------------------------------------------------------------------
# torch zip: archive access


@contextmanager
def _zip_errors(path, what: str):
    """Turn the errors zipfile raises on damaged archives into CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise CheckpointError(path, f"{what}: {exc}") from exc
    except MemoryError:
        raise CheckpointError(path, f"{what}: not enough memory") from None


def read_torch_zip(path) -> dict[str, TensorRef]:
    with _zip_errors(path, "not a readable zip archive (truncated or corrupt?)"):
        file_size = os.path.getsize(path)
        zf = zipfile.ZipFile(path)
    with zf:
        archive = _TorchArchive(path, zf, file_size)
        obj = archive.unpickle()
    state_dict = _unwrap_state_dict(path, obj)
    refs = OrderedDict((key, archive.tensor_ref(key, spec)) for key, spec in state_dict.items())
    _check_view_reuse(path, state_dict.values())
    return refs


class _TorchArchive:
    """The records of one torch zip checkpoint, checked as they are looked up."""

    def __init__(self, path, zf: zipfile.ZipFile, file_size: int):
        self.path = path
        self.zf = zf
        self.file_size = file_size
        self._refuse_compressed_members()
        self.prefix = self._find_prefix()
        self.byteorder = self._read_byteorder()
        self.storages: dict[str, _Storage] = {}

    def _refuse_compressed_members(self) -> None:
        """torch.save writes every member uncompressed (ZIP_STORED); a compressed one could inflate without bound."""
        for info in self.zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise CheckpointError(
                    self.path,
                    f"archive member {show(info.filename)} is compressed (method {info.compress_type}, "
                    f"{info.compress_size} bytes stored for {info.file_size}); torch.save stores members "
                    "uncompressed, so this file was not written by torch.save and is refused",
                )

    def _find_prefix(self) -> str:
        pickles = [n for n in self.zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            names = ", ".join(show(n) for n in self.zf.namelist()[:5]) or "none"
            raise CheckpointError(
                self.path,
                f"zip archive has no '<folder>/data.pkl' record, so it is not a torch checkpoint (entries: {names})",
            )
        if len(set(pickles)) > 1:
            raise CheckpointError(self.path, f"zip archive has {len(set(pickles))} data.pkl records, expected one")
        return pickles[0][: -len("data.pkl")]

    def _read_byteorder(self) -> str:
        name = self.prefix + "byteorder"
        if self._info(name) is None:
            return "little"
        raw = self._read_record(name, limit=16)
        value = raw.decode("ascii", "replace").strip()
        if value not in ("little", "big"):
            raise CheckpointError(self.path, f"byteorder record is {raw[:16]!r}, expected 'little' or 'big'")
        return value

    def _info(self, name: str) -> zipfile.ZipInfo | None:
        try:
            return self.zf.getinfo(name)
        except KeyError:
            return None

    def _read_record(self, name: str, limit: int) -> bytes:
        info = self.zf.getinfo(name)
        if info.file_size > limit:
            raise CheckpointError(
                self.path,
                f"record {show(name)} is implausibly large ({info.file_size} bytes; at most {limit} accepted)"
            )
        with _zip_errors(self.path, f"cannot read record {show(name)} (truncated or corrupt?)"):
            return self.zf.read(info)

    def unpickle(self):
        data = self._read_record(self.prefix + "data.pkl", limit=_MAX_PICKLE_BYTES)
        unpickler = _RestrictedUnpickler(data, self)
        try:
            return unpickler.load()
        except _Refused as exc:
            raise CheckpointError(self.path, f"data.pkl: {exc}") from None
        except CheckpointError:
            raise
        except MemoryError:
            raise CheckpointError(self.path, "data.pkl: not enough memory to unpickle it") from None
        except RecursionError:
            raise CheckpointError(self.path, "data.pkl is nested too deeply") from None
        except Exception as exc:  # any failure of a corrupt pickle stream
            raise CheckpointError(
                self.path, f"data.pkl is not a valid pickle ({type(exc).__name__}: {bounded(str(exc))})"
            ) from None

    def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        """Look up (and check, once) the zip entry holding storage ``key``."""
        known = self.storages.get(key)
        if known is not None:
            if (known.dtype, known.numel) != (dtype, numel):
                raise _Refused(f"storage {show(key)} is referenced with conflicting types or sizes")
            return known
        member = f"{self.prefix}data/{key}"
        info = self._info(member)
        if info is None:
            raise _Refused(
                f"storage {show(key)} is referenced but its entry {show(member)} is missing from the archive"
            )
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise _Refused(
                f"storage entry {show(member)} holds {info.file_size} bytes but data.pkl declares "
                f"{numel} x {dtype} = {nbytes} bytes"
            )
        data_end = info.header_offset + _ZIP_LOCAL_HEADER_BYTES + len(info.filename.encode()) + info.compress_size
        if data_end > self.file_size:
            raise _Refused(f"storage entry {show(member)} extends past the end of the file (truncated?)")
        storage = _Storage(key, member, dtype, numel)
        self.storages[key] = storage
        return storage

    def tensor_ref(self, key: str, spec: _TensorSpec) -> TensorRef:
        storage = spec.storage
        problem = _view_problem(spec.offset, spec.shape, spec.stride, storage.numel)
        if problem is not None:
            raise CheckpointError(
                self.path,
                f"tensor {show(key)} (shape {spec.shape}, stride {spec.stride}, offset {spec.offset}) is refused: "
                f"{problem} (its storage {show(storage.member)} holds {storage.numel} elements)",
            )
        source = _ZipTensorSource(self.path, storage.member, storage.numel, spec.offset, spec.stride, self.byteorder)
        return TensorRef(key, spec.shape, storage.dtype, source)


def _view_problem(offset: int, shape: tuple[int, ...], stride: tuple[int, ...], numel: int) -> str | None:
    """What is wrong with a strided view of a ``numel``-element storage (None: nothing).

    Accepted: views whose elements are all distinct and lie within the storage; that is, with the
    dimensions of size > 1 taken in increasing stride order, each stride steps over everything
    the smaller ones span.  This covers every contiguous, permuted (transposed) or sliced view
    torch.save writes, and makes a tensor hold at most as many elements as its storage.  Refused:
    expanding views (stride 0 on a dimension of size > 1) and any other self-overlapping view,
    and views reaching past the storage's end.  (Sizes, strides and offsets are non-negative
    ints, and at most ``MAX_NDIM`` of them, by the time this runs.)
    """
    if math.prod(max(n, 1) for n in shape) > MAX_ELEMENTS or offset > MAX_ELEMENTS:
        return f"it declares more than 2**{MAX_ELEMENTS.bit_length() - 1} elements"
    if 0 in shape:
        return None if offset <= numel else "its offset lies past the end of its storage"
    span = 1  # storage elements spanned by the dimensions checked so far
    for step, size in sorted((s, n) for n, s in zip(shape, stride) if n > 1):
        if step < span:
            if step == 0:
                return "it is an expanding view (stride 0 on a dimension of size > 1), which repeats elements"
            return "its strides make several indices share one storage element (an overlapping view)"
        span += (size - 1) * step
    if offset + span > numel:
        return f"it needs {offset + span} elements: storage too small"
    return None


def _check_view_reuse(path, specs) -> None:
    """Refuse files whose tensors together hold far more elements than their storages."""
    viewed = sum(math.prod(spec.shape) for spec in specs)
    stored = sum({id(spec.storage): spec.storage.numel for spec in specs}.values())
    if viewed > _MAX_VIEW_REUSE * stored:
        raise CheckpointError(
            path,
            f"its tensors hold {viewed} elements in all, more than {_MAX_VIEW_REUSE} times the {stored} elements "
            "of the storages they view: storages reused by many tensors, as no torch.save state dict does",
        )


@dataclass(frozen=True)
class _ZipTensorSource:
    path: str | os.PathLike
    member: str
    storage_numel: int
    offset: int
    stride: tuple[int, ...]
    byteorder: str

    def load(self, ref: TensorRef) -> np.ndarray:
        if math.prod(ref.shape) == 0:
            return np.zeros(ref.shape, ref.dtype)
        raw = self._read_storage(ref.key, self.storage_numel * ref.dtype.itemsize)
        itemsize = ref.dtype.itemsize
        view = np.ndarray(
            ref.shape, ref.dtype, buffer=raw, offset=self.offset * itemsize,
            strides=tuple(s * itemsize for s in self.stride),
        )  # bounds were checked by tensor_ref; numpy re-checks them
        try:
            array = np.array(view, order="C", copy=True)
        except MemoryError:
            raise CheckpointError(
                self.path, f"not enough memory to read tensor {show(ref.key)} ({view.nbytes} bytes)"
            ) from None
        if self.byteorder != sys.byteorder:
            array = byteswapped(array)
        return array

    def _read_storage(self, key: str, nbytes: int) -> bytes:
        # Reading the whole entry lets zipfile verify its CRC.
        with _zip_errors(self.path, f"cannot read tensor {show(key)} from {show(self.member)} (truncated or corrupt?)"):
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as entry:
                raw = entry.read()
        if len(raw) != nbytes:
            raise CheckpointError(
                self.path, f"tensor {show(key)}: entry {show(self.member)} has {len(raw)} bytes, expected {nbytes}"
            )
        return raw


# --------------------------------------------------------------------------
# torch zip: the restricted unpickler and its stand-ins


class _Refused(Exception):
    """Something in data.pkl that this reader refuses; the message says what."""


class _StandIn:
    """Base of the objects the unpickler creates: immutable, and they refuse pickle's BUILD."""

    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setstate__(self, state):
        raise _Refused(f"refuses to set state on {type(self).__name__}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce_ex__(self, protocol):
        raise TypeError(f"{type(self).__name__} is not picklable")


class _StateDict(OrderedDict):
    """Stand-in for collections.OrderedDict; ignores torch's ``_metadata`` state."""

    def __init__(self, *args, **kwargs):
        if args or kwargs:  # torch pickles an OrderedDict as OrderedDict() followed by SETITEMS
            raise _Refused("OrderedDict(...) with arguments is not what torch writes")
        super().__init__()

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise _Refused("unexpected OrderedDict state")

    def __setitem__(self, key, value):
        _check_key(key)
        super().__setitem__(key, value)


def _check_key(key) -> None:
    """Mapping keys in a state dict are strings (names) or ints (optimizer state); hashing
    anything else (a tuple of tuples sharing memo entries) could take exponential time."""
    if type(key) not in (str, int):
        raise _Refused(f"mapping key is {show(key)}; only strings and ints are accepted")


class _Storage(_StandIn):
    """A storage referenced by data.pkl: a zip entry holding ``numel`` elements."""

    __slots__ = ("key", "member", "dtype", "numel")

    def __init__(self, key: str, member: str, dtype: np.dtype, numel: int):
        super().__init__(key=key, member=member, dtype=dtype, numel=numel)


class _StorageType(_StandIn):
    """Stand-in for a ``torch.*Storage`` class: only marks a dtype, not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        super().__init__(name=name, dtype=dtype)

    def __repr__(self):
        return self.name


class _TensorSpec(_StandIn):
    """What ``_rebuild_tensor_v2`` would build: a strided view of a storage."""

    __slots__ = ("storage", "offset", "shape", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        super().__init__(storage=storage, offset=offset, shape=shape, stride=stride)


def _as_counts(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM or not all(is_count(v) for v in value):
        raise _Refused(
            f"tensor {what} must be a tuple of at most {MAX_NDIM} ints in [0, 2**48], got {show(value)}"
        )
    return tuple(value)


class _RebuildTensor(_StandIn):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``."""

    __slots__ = ()

    def __call__(self, *args):
        if len(args) not in (6, 7):
            raise _Refused(f"_rebuild_tensor_v2 takes 6 or 7 arguments, got {len(args)}")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _Storage):
            raise _Refused(f"_rebuild_tensor_v2 got {show(storage)} instead of a storage")
        if not is_count(offset):
            raise _Refused(f"tensor storage offset must be an int in [0, 2**48], got {show(offset)}")
        shape = _as_counts(size, "size")
        strides = _as_counts(stride, "stride")
        if len(shape) != len(strides):
            raise _Refused(f"tensor size {shape} and stride {strides} differ in length")
        return _TensorSpec(storage, offset, shape, strides)


class _RebuildParameter(_StandIn):
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: a parameter is its tensor."""

    __slots__ = ("n_args",)

    def __init__(self, n_args: int):
        super().__init__(n_args=n_args)

    def __call__(self, *args):
        if len(args) != self.n_args or not isinstance(args[0], _TensorSpec):
            raise _Refused("malformed _rebuild_parameter call")
        return args[0]


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals data.pkl may name, mapped to fresh stand-ins."""
    allowed = {
        ("collections", "OrderedDict"): _StateDict,
        ("torch._utils", "_rebuild_tensor_v2"): _RebuildTensor(),
        ("torch._utils", "_rebuild_parameter"): _RebuildParameter(3),
        ("torch._utils", "_rebuild_parameter_with_state"): _RebuildParameter(4),
    }
    for name, dtype in _TORCH_STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(f"torch.{name}", dtype)
    return allowed


def _refuse_opcode(name: str):
    def refuse(self):
        raise _Refused(f"pickle opcode {name} is refused (torch.save state dicts do not use it)")

    return refuse


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (so that each opcode can be checked) with an allow-list of globals.

    Dict keys must be strings or ints (hashing is the one place where a small pickle could make
    unpickling itself take exponential time), and the set opcodes, which torch never writes, are
    refused.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    for _opcode, _name in ((pickle.EMPTY_SET, "EMPTY_SET"), (pickle.ADDITEMS, "ADDITEMS"),
                           (pickle.FROZENSET, "FROZENSET"), (pickle.INST, "INST"), (pickle.OBJ, "OBJ"),
                           (pickle.NEWOBJ, "NEWOBJ"), (pickle.NEWOBJ_EX, "NEWOBJ_EX")):
        dispatch[_opcode[0]] = _refuse_opcode(_name)
    del _opcode, _name

    def __init__(self, data: bytes, archive: _TorchArchive):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._globals = _allowed_globals()

    def load_dict(self):
        items = self.pop_mark()
        keys = items[0::2]
        for key in keys:
            _check_key(key)
        self.append(dict(zip(keys, items[1::2])))

    dispatch[pickle.DICT[0]] = load_dict

    def load_setitem(self):
        _check_key(self.stack[-2])
        super().load_setitem()

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        for i in range(0, len(items), 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def find_class(self, module, name):
        stand_in = self._globals.get((module, name))
        if stand_in is not None:
            return stand_in
        if module == "torch" and str(name).endswith("Storage"):
            raise _Refused(f"unknown storage type 'torch.{bounded(str(name))}'")
        raise _Refused(
            f"refuses to load global '{bounded(str(module))}.{bounded(str(name))}': a state dict may only "
            "contain tensors and (ordered) dicts, so this checkpoint is malformed or malicious"
        )

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"unsupported persistent id ({show(pid)}; expected a 5-tuple starting 'storage')")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or not key:
            raise _Refused(f"storage key must be a non-empty string, got {show(key)}")
        if not isinstance(storage_type, _StorageType):
            raise _Refused(f"unknown storage type ({show(storage_type)}) for storage {show(key)}")
        if not is_count(numel):
            raise _Refused(f"storage {show(key)} has invalid size {show(numel)}")
        return self._archive.storage(key, storage_type.dtype, numel)


def _describe(value) -> str:
    if isinstance(value, Mapping):
        return "a nested mapping"
    return f"a {type(value).__name__}"


def _unwrap_state_dict(path, obj) -> Mapping[str, _TensorSpec]:
    """Find the flat ``name -> tensor`` mapping in what data.pkl holds."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"data.pkl holds {_describe(obj)}, not a state dict")
    for wrapper_key in _WRAPPER_KEYS:
        inner = obj.get(wrapper_key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(path, f"state dict key {show(key)} is not a string")
        if not isinstance(value, _TensorSpec):
            raise CheckpointError(path, f"state dict entry {show(key)} is {_describe(value)}, not a tensor")
    return obj


