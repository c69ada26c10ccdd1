"""Tests for dpt_jax.convert.torch_zip: the safe, lazy, torch-free checkpoint reader.

torch is never imported.  Besides the fixtures written by a real torch.save, the
tests write torch-style zip checkpoints themselves with ``write_torch_zip``: a
pure-Python pickler that emits the same opcodes torch does (GLOBAL
'torch._utils _rebuild_tensor_v2', persistent-id storages such as
torch.FloatStorage) without needing torch to be importable.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dpt_jax.convert.files import read_state_dict
from dpt_jax.convert.safetensors_io import read_safetensors_metadata
from dpt_jax.convert.tensors import TensorRef
from dpt_jax.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_NAMES = ["mini_beit", "mini_swin2", "mini_swin2_pw"]


# --------------------------------------------------------------------------
# A torch-free writer of torch-style zip checkpoints


class Global:
    """A global named by module and name, pickled as GLOBAL without importing it."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args):  # pickle's save_reduce insists on a callable
        raise AssertionError("only ever pickled")


class Call:
    """Pickles as REDUCE: ``func(*args)`` when unpickled."""

    def __init__(self, func, *args):
        self.func = func
        self.args = args

    def __reduce__(self):
        return (self.func, self.args)


class Storage:
    """One storage: a zip entry ``<folder>/data/<key>`` and its torch type name."""

    _TYPE_NAMES = {
        np.dtype(np.float32): "FloatStorage",
        np.dtype(np.float64): "DoubleStorage",
        np.dtype(np.float16): "HalfStorage",
        np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
        np.dtype(np.int64): "LongStorage",
        np.dtype(np.int32): "IntStorage",
        np.dtype(np.uint8): "ByteStorage",
        np.dtype(np.bool_): "BoolStorage",
    }

    def __init__(self, key: str, values: np.ndarray, byteorder: str = "little", type_name: str | None = None):
        values = np.ascontiguousarray(values).ravel()
        self.key = key
        self.type_name = type_name or self._TYPE_NAMES[values.dtype]
        self.numel = values.size
        if byteorder == "big" and values.dtype.itemsize > 1:
            values = values.view(f"u{values.dtype.itemsize}").byteswap()
        self.data = values.tobytes()


def tensor(storage: Storage, offset: int, shape, stride) -> Call:
    """What torch pickles for a tensor: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), storage, offset, tuple(shape), tuple(stride), False,
                OrderedDict())


def parameter(t: Call) -> Call:
    return Call(Global("torch._utils", "_rebuild_parameter"), t, True, OrderedDict())


class TorchLikePickler(pickle._Pickler):
    """The pure-Python pickler, taught to write ``Global`` by name and storages as persistent ids."""

    def __init__(self, file):
        # fix_imports=False keeps Python 3 names (builtins.eval, not __builtin__.eval) in the payload tests.
        super().__init__(file, protocol=2, fix_imports=False)
        self.storages: dict[str, Storage] = {}

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages[obj.key] = obj
            return ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj) -> tuple[bytes, dict[str, Storage]]:
    buffer = io.BytesIO()
    pickler = TorchLikePickler(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.storages


def write_torch_zip(path: Path, obj=None, *, pickle_bytes: bytes | None = None, edit_pickle=None,
                    folder: str = "archive", byteorder: str | None = None, omit: tuple[str, ...] = (),
                    replace: dict | None = None) -> Path:
    """Write a 2022-era style torch checkpoint (``archive/``, no byteorder record by default).

    ``pickle_bytes`` replaces data.pkl outright; ``edit_pickle`` transforms the pickle of ``obj``;
    ``omit``/``replace`` drop or swap the bytes of storage entries."""
    data_pkl, storages = torch_pickle(obj) if pickle_bytes is None else (pickle_bytes, {})
    if edit_pickle is not None:
        data_pkl = edit_pickle(data_pkl)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", data_pkl)
        if byteorder is not None:
            zf.writestr(f"{folder}/byteorder", byteorder)
        for key, storage in storages.items():
            if key not in omit:
                zf.writestr(f"{folder}/data/{key}", (replace or {}).get(key, storage.data))
        zf.writestr(f"{folder}/version", "3\n")
    return path


def simple_state_dict() -> OrderedDict:
    weight = Storage("0", np.arange(6, dtype=np.float32))
    sd = OrderedDict()
    sd["weight"] = tensor(weight, 0, (2, 3), (3, 1))
    sd["bias"] = tensor(Storage("1", np.array([1.5, -2.0], dtype=np.float32)), 0, (2,), (1,))
    return sd


def write_safetensors_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def expect_error(path: Path, *fragments: str) -> CheckpointError:
    """read_state_dict(path) fails with a CheckpointError naming the file and containing fragments."""
    with pytest.raises(CheckpointError) as info:
        sd = read_state_dict(path)
        for ref in sd.values():  # errors that can only surface on reading
            ref.read()
    return check_error(info.value, path, *fragments)


def check_error(error: CheckpointError, path: Path, *fragments: str) -> CheckpointError:
    assert error.path == str(path)
    assert str(path) in str(error)
    for fragment in fragments:
        assert fragment in str(error), str(error)
    return error


# --------------------------------------------------------------------------
# Real torch.save fixtures


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_pt_matches_safetensors_bit_for_bit(name):
    refs = read_state_dict(FIXTURES / f"{name}.pt")
    expected = load_file(str(FIXTURES / f"{name}.safetensors"))  # independent reference reader
    assert set(refs) == set(expected)
    for key, ref in refs.items():
        assert isinstance(ref, TensorRef) and ref.key == key
        array = ref.read()
        assert array.shape == ref.shape == expected[key].shape, key
        assert array.dtype == ref.dtype == expected[key].dtype, key
        assert array.flags.c_contiguous
        assert array.tobytes() == expected[key].tobytes(), key


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_own_safetensors_reader_matches_library(name):
    refs = read_state_dict(FIXTURES / f"{name}.safetensors")
    expected = load_file(str(FIXTURES / f"{name}.safetensors"))
    assert set(refs) == set(expected)
    for key, ref in refs.items():
        array = ref.read()
        assert array.dtype == expected[key].dtype and array.shape == expected[key].shape
        assert array.tobytes() == expected[key].tobytes(), key


def test_int64_buffers_are_read_as_int64():
    refs = read_state_dict(FIXTURES / "mini_beit.pt")
    index = refs["pretrained.model.blocks.0.attn.relative_position_index"]
    assert index.dtype == np.int64
    assert {ref.dtype for ref in refs.values()} == {np.dtype(np.float32), np.dtype(np.int64)}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_key_order_is_state_dict_order(name):
    manifest = json.loads((FIXTURES / f"{name}.json").read_text())
    expected_order = [entry["key"] for entry in manifest["state_dict"]]
    refs = read_state_dict(FIXTURES / f"{name}.pt")
    assert list(refs) == expected_order
    assert [list(ref.shape) for ref in refs.values()] == [entry["shape"] for entry in manifest["state_dict"]]


def test_format_is_detected_from_bytes_not_extension(tmp_path):
    swapped_pt = tmp_path / "really_safetensors.pt"
    swapped_st = tmp_path / "really_torch.safetensors"
    swapped_pt.write_bytes((FIXTURES / "mini_swin2.safetensors").read_bytes())
    swapped_st.write_bytes((FIXTURES / "mini_swin2.pt").read_bytes())
    assert set(read_state_dict(swapped_pt)) == set(read_state_dict(swapped_st))


def test_safetensors_metadata():
    metadata = read_safetensors_metadata(FIXTURES / "mini_beit.safetensors")
    assert metadata["format"] == "pt"
    assert all(isinstance(v, str) for v in metadata.values())


def test_safetensors_metadata_absent_and_wrong_format(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.ones(3, np.float32)}, str(plain))
    assert read_safetensors_metadata(plain) == {}
    with pytest.raises(CheckpointError) as info:
        read_safetensors_metadata(FIXTURES / "mini_beit.pt")
    check_error(info.value, FIXTURES / "mini_beit.pt", "not a safetensors file")


# --------------------------------------------------------------------------
# Hand-written 2022-era style checkpoints


def test_2022_style_archive_with_views_wrapper_and_dtypes(tmp_path):
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    shared = Storage("0", grid)
    halves = np.array([0.5, -1.25, 3.0], dtype=np.float16)
    bf16 = np.array([1.0, -2.5, 1e30], dtype=ml_dtypes.bfloat16)
    index = np.array([[0, 7], [2**40, -3]], dtype=np.int64)
    mask = np.array([True, False, True])

    sd = OrderedDict()
    sd["z.grid"] = parameter(tensor(shared, 0, (3, 4), (4, 1)))
    sd["a.transposed"] = tensor(shared, 0, (4, 3), (1, 4))  # non-contiguous view of the same storage
    sd["m.row1"] = tensor(shared, 4, (4,), (1,))  # non-zero storage offset
    sd["m.col2"] = tensor(shared, 2, (3,), (4,))  # offset and stride
    sd["half"] = tensor(Storage("1", halves), 0, (3,), (1,))
    sd["bf16"] = tensor(Storage("2", bf16), 0, (3,), (1,))
    sd["index"] = tensor(Storage("3", index), 0, (2, 2), (2, 1))
    sd["mask"] = tensor(Storage("4", mask), 0, (3,), (1,))
    sd["scalar"] = tensor(Storage("5", np.array([7.0], np.float64)), 0, (), ())
    sd["empty"] = tensor(Storage("6", np.zeros(0, np.float32)), 0, (0, 3), (3, 1))
    sd._metadata = OrderedDict([("", {"version": 1}), ("z", {"version": 1})])
    optimizer = {"state": {0: {"step": 3, "exp_avg": tensor(Storage("7", np.ones(2, np.float32)), 0, (2,), (1,))}},
                 "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}
    path = write_torch_zip(tmp_path / "old.pt", {"model": sd, "optimizer": optimizer, "epoch": 12})

    refs = read_state_dict(path)
    assert list(refs) == list(sd)  # insertion order, not sorted
    expected = {
        "z.grid": grid, "a.transposed": grid.T, "m.row1": grid[1], "m.col2": grid[:, 2], "half": halves,
        "bf16": bf16, "index": index, "mask": mask, "scalar": np.array(7.0), "empty": np.zeros((0, 3), np.float32),
    }
    for key, want in expected.items():
        got = refs[key].read()
        assert refs[key].shape == want.shape and refs[key].dtype == want.dtype, key
        assert got.shape == want.shape and got.dtype == want.dtype, key
        assert got.flags.c_contiguous and got.flags.writeable, key
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key


def test_state_dict_wrapper_key(tmp_path):
    path = write_torch_zip(tmp_path / "wrapped.pt", {"state_dict": simple_state_dict(), "global_step": 5})
    assert list(read_state_dict(path)) == ["weight", "bias"]


def test_big_endian_byteorder_record(tmp_path):
    values = np.array([1.0, -2.0, 3.5], dtype=np.float32)
    ints = np.array([1, -2, 2**50], dtype=np.int64)
    sd = {"f": tensor(Storage("0", values, byteorder="big"), 0, (3,), (1,)),
          "i": tensor(Storage("1", ints, byteorder="big"), 0, (3,), (1,))}
    refs = read_state_dict(write_torch_zip(tmp_path / "be.pt", sd, byteorder="big"))
    np.testing.assert_array_equal(refs["f"].read(), values)
    np.testing.assert_array_equal(refs["i"].read(), ints)


def test_refs_stay_valid_after_reading_and_read_twice(tmp_path):
    refs = read_state_dict(write_torch_zip(tmp_path / "a.pt", simple_state_dict()))
    first = refs["weight"].read()
    first[0, 0] = 100.0  # the caller owns the array
    np.testing.assert_array_equal(refs["weight"].read(), np.arange(6, dtype=np.float32).reshape(2, 3))


# --------------------------------------------------------------------------
# Laziness


def test_read_state_dict_reads_only_the_pickle(monkeypatch):
    opened = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    refs = read_state_dict(FIXTURES / "mini_beit.pt")
    assert sorted(opened) == ["mini_beit/byteorder", "mini_beit/data.pkl"]

    opened.clear()
    refs["pretrained.model.cls_token"].read()
    assert opened == ["mini_beit/data/0"]


def test_corrupt_storage_fails_only_when_that_tensor_is_read(tmp_path):
    good = Storage("0", np.arange(64, dtype=np.float32))
    bad_values = np.linspace(1000.0, 2000.0, 64, dtype=np.float32)
    bad = Storage("1", bad_values)
    path = write_torch_zip(tmp_path / "crc.pt", {"good": tensor(good, 0, (64,), (1,)),
                                                 "bad": tensor(bad, 0, (8, 8), (8, 1))})
    raw = bytearray(path.read_bytes())
    position = raw.find(bad.data)
    assert position > 0 and raw.find(bad.data, position + 1) == -1
    raw[position + 10] ^= 0xFF  # flip one byte of the stored data: the zip CRC no longer matches
    path.write_bytes(bytes(raw))

    refs = read_state_dict(path)  # only the pickle is read: still fine
    np.testing.assert_array_equal(refs["good"].read(), np.arange(64, dtype=np.float32))
    with pytest.raises(CheckpointError) as info:
        refs["bad"].read()
    check_error(info.value, path, "'bad'", "archive/data/1", "CRC")


def test_safetensors_read_touches_only_its_byte_range(tmp_path, monkeypatch):
    path = tmp_path / "two.safetensors"
    save_file({"a": np.arange(4, dtype=np.float32), "b": np.arange(1000, dtype=np.int64)}, str(path))
    refs = read_state_dict(path)
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    start = header_end + json.loads(data[8:header_end])["b"]["data_offsets"][0]
    data[start:start + 8000] = b"\xff" * 8000  # clobber all of "b" after the header was parsed
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(refs["a"].read(), np.arange(4, dtype=np.float32))


# --------------------------------------------------------------------------
# Refusals: malicious pickles


MARKER = "pwned.txt"


def malicious_payloads(marker: Path):
    return {
        "os.system": Call(Global("os", "system"), f"touch {marker}"),
        "__builtin__.eval": Call(Global("__builtin__", "eval"), f"open({str(marker)!r}, 'w').close()"),
        "posix.system": Call(os.system, f"touch {marker}"),  # what pickling os.system itself writes
        "builtins.eval": Call(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": Call(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": Call(exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("global_name", ["os.system", "posix.system", "builtins.eval", "__builtin__.eval",
                                         "subprocess.call", "builtins.exec"])
@pytest.mark.parametrize("placement", ["value", "top_level"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, global_name, placement):
    marker = tmp_path / MARKER
    payload = malicious_payloads(marker)[global_name]
    sd = simple_state_dict()
    if placement == "value":
        sd["evil"] = payload
        obj = sd
    else:
        obj = payload
    path = write_torch_zip(tmp_path / "evil.pt", obj)
    expect_error(path, "refuses to load global", f"'{global_name}'")
    assert not marker.exists()


def test_malicious_payload_is_live_under_plain_pickle(tmp_path):
    # Sanity check of the test above: the same bytes do run code under an unrestricted unpickler.
    marker = tmp_path / MARKER
    data, _ = torch_pickle({"evil": malicious_payloads(marker)["builtins.eval"]})
    pickle.loads(data)
    assert marker.exists()


def test_stand_ins_cannot_be_called_or_built_upon(tmp_path):
    call_storage_class = write_torch_zip(tmp_path / "call.pt", {"x": Call(Global("torch", "FloatStorage"))})
    with pytest.raises(CheckpointError) as info:
        read_state_dict(call_storage_class)
    check_error(info.value, call_storage_class, "data.pkl")

    # GLOBAL torch._utils._rebuild_tensor_v2, EMPTY_DICT, BUILD: try to set attributes on the stand-in.
    build = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.EMPTY_DICT + \
        pickle.BUILD + pickle.STOP
    path = write_torch_zip(tmp_path / "build.pt", pickle_bytes=build)
    expect_error(path, "refuses to set state")


def test_malformed_persistent_id_is_refused(tmp_path):
    class BadIdPickler(TorchLikePickler):
        def persistent_id(self, obj):
            return ("module", "os", "system") if isinstance(obj, Storage) else None

    buffer = io.BytesIO()
    BadIdPickler(buffer).dump(simple_state_dict())
    path = write_torch_zip(tmp_path / "pid.pt", pickle_bytes=buffer.getvalue())
    expect_error(path, "unsupported persistent id")


# --------------------------------------------------------------------------
# Refusals: damaged or invalid files


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_pt(tmp_path, fraction):
    data = (FIXTURES / "mini_beit.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    expect_error(path, "truncated or corrupt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    expect_error(path, "empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x13\x37" + np.random.default_rng(0).bytes(4094))
    expect_error(path, "unrecognized format")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.pt", "cannot open")


def test_legacy_torch_format(tmp_path):
    legacy_magic = 0x1950A86A20F9469CFC6C  # the first thing pre-1.6 torch.save pickled
    path = tmp_path / "legacy.pt"
    path.write_bytes(pickle.dumps(legacy_magic, protocol=2) + pickle.dumps(1001, protocol=2))
    expect_error(path, "legacy", "not supported", "re-save")


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/readme.txt", "hello")
    expect_error(path, "data.pkl", "not a torch checkpoint")


def test_corrupt_pickle(tmp_path):
    cut = write_torch_zip(tmp_path / "cut.pt", simple_state_dict(), edit_pickle=lambda data: data[: len(data) // 2])
    expect_error(cut, "data.pkl is not a valid pickle")
    garbage = write_torch_zip(tmp_path / "garbage.pt", pickle_bytes=b"\x80\x02\xff\xfe not a pickle")
    expect_error(garbage, "data.pkl is not a valid pickle")


def test_missing_storage_entry(tmp_path):
    path = write_torch_zip(tmp_path / "missing.pt", simple_state_dict(), omit=("1",))
    expect_error(path, "storage '1'", "missing")


def test_storage_entry_smaller_than_declared(tmp_path):
    path = write_torch_zip(tmp_path / "short.pt", simple_state_dict(), replace={"0": b"\x00" * 8})
    expect_error(path, "archive/data/0", "8 bytes", "24 bytes")


def test_storage_too_small_for_tensor_view(tmp_path):
    storage = Storage("0", np.arange(6, dtype=np.float32))
    sd = {"ok": tensor(storage, 0, (6,), (1,)), "overrun": tensor(storage, 2, (2, 3), (3, 1))}
    path = write_torch_zip(tmp_path / "overrun.pt", sd)
    expect_error(path, "'overrun'", "storage too small")


def test_unknown_storage_type(tmp_path):
    weird = Storage("0", np.zeros(4, np.uint8), type_name="QInt8Storage")
    path = write_torch_zip(tmp_path / "qint.pt", {"q": tensor(weird, 0, (4,), (1,))})
    expect_error(path, "unknown storage type", "torch.QInt8Storage")


@pytest.mark.parametrize("value, described", [(3, "int"), ({"inner": "x"}, "nested mapping"), ([1, 2], "list")])
def test_non_tensor_state_dict_values(tmp_path, value, described):
    sd = simple_state_dict()
    sd["junk"] = value
    path = write_torch_zip(tmp_path / "junk.pt", sd)
    expect_error(path, "'junk'", described, "not a tensor")


def test_not_a_mapping(tmp_path):
    path = write_torch_zip(tmp_path / "list.pt", [1, 2, 3])
    expect_error(path, "not a state dict")


@pytest.mark.parametrize("cut, fragment", [(100, "header claims"), (0.5, "run past")])
def test_truncated_safetensors(tmp_path, cut, fragment):
    data = (FIXTURES / "mini_swin2.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: cut if isinstance(cut, int) else int(len(data) * cut)])
    expect_error(path, fragment)


def test_safetensors_truncated_after_header_was_read(tmp_path):
    path = tmp_path / "late.safetensors"
    save_file({"a": np.ones(4, np.float32), "b": np.ones(100, np.float32)}, str(path))
    refs = read_state_dict(path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(CheckpointError) as info:
        for ref in refs.values():
            ref.read()
    check_error(info.value, path, "truncated")


VALID_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("entry, fragment", [
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}, "run past"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "invalid data_offsets"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "invalid shape"),
    ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}, "unsupported dtype"),
])
def test_safetensors_header_that_lies(tmp_path, entry, fragment):
    path = write_safetensors_raw(tmp_path / "lies.safetensors", {"x": entry}, b"\x00" * 8)
    expect_error(path, "'x'", fragment)


def test_safetensors_overlapping_and_gapped_offsets(tmp_path):
    overlap = {"a": VALID_ENTRY, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    path = write_safetensors_raw(tmp_path / "overlap.safetensors", overlap, b"\x00" * 12)
    expect_error(path, "overlaps")
    gap = {"a": VALID_ENTRY, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}
    path = write_safetensors_raw(tmp_path / "gap.safetensors", gap, b"\x00" * 16)
    expect_error(path, "gap")


def test_safetensors_bad_header_json_and_metadata(tmp_path):
    path = tmp_path / "json.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    expect_error(path, "not valid JSON")
    path = write_safetensors_raw(tmp_path / "meta.safetensors", {"__metadata__": {"n": 1}, "x": VALID_ENTRY},
                                 b"\x00" * 8)
    expect_error(path, "__metadata__")


def test_safetensors_bf16_and_metadata(tmp_path):
    values = np.array([[1.0, -0.5], [3.0, 1e-3]], dtype=ml_dtypes.bfloat16)
    header = {"__metadata__": {"config": '{"a": 1}'}, "w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}
    path = write_safetensors_raw(tmp_path / "bf16.safetensors", header, values.tobytes())
    ref = read_state_dict(path)["w"]
    assert ref.dtype == np.dtype(ml_dtypes.bfloat16)
    assert ref.read().tobytes() == values.tobytes()
    assert read_safetensors_metadata(path) == {"config": '{"a": 1}'}


# --------------------------------------------------------------------------
# Hostile files: each class of hole found by fuzzing, built small inside the test.
# Nothing here allocates what the hostile files declare.


def op_str(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def op_int(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def op_put(i: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", i)


def op_get(i: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", i)


def op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_storage(key: str, numel: int, type_name: str = "FloatStorage") -> bytes:
    """The persistent id torch writes for a storage."""
    numel_ops = op_int(numel) if numel < 2**31 else pickle.LONG1 + bytes([16]) + numel.to_bytes(16, "little")
    return (pickle.MARK + op_str("storage") + op_global("torch", type_name) + op_str(key) + op_str("cpu")
            + numel_ops + pickle.TUPLE + pickle.BINPERSID)


def op_tuple(*ints: int) -> bytes:
    return pickle.MARK + b"".join(op_int(n) for n in ints) + pickle.TUPLE


def op_tensor(storage_ops: bytes, offset: bytes, size: bytes, stride: bytes) -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, False, {})."""
    return (op_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage_ops + offset + size + stride
            + pickle.NEWFALSE + pickle.EMPTY_DICT + pickle.TUPLE + pickle.REDUCE)


def op_list_dag(depth: int, first_memo: int) -> bytes:
    """A list of 2 lists of 2 lists ... ``depth`` deep, each level stored once and referenced twice
    through the memo: 10 bytes a level, but a repr (or a walk) visits 2**depth leaves."""
    ops = pickle.EMPTY_LIST + op_put(first_memo)
    for level in range(1, depth + 1):
        ops += pickle.POP + pickle.MARK + op_get(first_memo + level - 1) * 2 + pickle.LIST + op_put(first_memo + level)
    return ops


def op_tuple_dag(depth: int, first_memo: int) -> bytes:
    ops = pickle.EMPTY_TUPLE + op_put(first_memo)
    for level in range(1, depth + 1):
        ops += pickle.POP + op_get(first_memo + level - 1) * 2 + pickle.TUPLE2 + op_put(first_memo + level)
    return ops


def write_raw_torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)
    return path


def refused_before_reading_tensors(path: Path, monkeypatch, *fragments: str) -> CheckpointError:
    """read_state_dict refuses the file without opening any storage entry."""
    opened = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert not [name for name in opened if "/data/" in name], opened
    return check_error(info.value, path, *fragments)


# 1. Views that need more elements than their storage holds


@pytest.mark.parametrize("shape, stride, fragment", [
    ((1000, 1000), (0, 0), "expanding view"),  # one float read as a million
    ((2**20, 2**20, 2**8), (0, 0, 0), "expanding view"),  # the 60 GB kind: declared, never allocated
    ((3, 1000), (1, 0), "expanding view"),
    ((4, 4), (1, 1), "overlapping view"),  # no zero stride, still 16 elements out of 7
    ((4, 3), (2, 1), "overlapping view"),
    ((2, 3), (3, 2), "overlapping view"),
])
def test_expanding_and_overlapping_views_are_refused_before_reading(tmp_path, monkeypatch, shape, stride, fragment):
    storage = Storage("0", np.arange(16, dtype=np.float32))
    sd = {"ok": tensor(storage, 0, (16,), (1,)), "view": tensor(storage, 0, shape, stride)}
    path = write_torch_zip(tmp_path / "views.pt", sd)
    refused_before_reading_tensors(path, monkeypatch, "'view'", fragment, "holds 16 elements")


def test_view_past_the_storage_end_is_refused(tmp_path, monkeypatch):
    storage = Storage("0", np.arange(16, dtype=np.float32))
    path = write_torch_zip(tmp_path / "past.pt", {"t": tensor(storage, 10, (2, 4), (1, 2))})  # 10 + 7 + 1 > 16
    refused_before_reading_tensors(path, monkeypatch, "'t'", "needs 18 elements", "storage too small")


def test_legitimate_views_still_read(tmp_path):
    grid = np.arange(24, dtype=np.float32)
    shared = Storage("0", grid)
    sd = {"q": tensor(shared, 0, (2, 4), (4, 1)),  # a fused qkv split into three views
          "k": tensor(shared, 8, (2, 4), (4, 1)),
          "v_t": tensor(shared, 16, (4, 2), (1, 4)),  # transposed
          "every_other": tensor(shared, 1, (2, 3), (12, 2)),  # sliced with steps
          "single": tensor(shared, 5, (1, 1, 3), (0, 7, 1)),  # stride 0 on size-1 dims is harmless
          "padded_rows": tensor(shared, 0, (3, 2), (8, 1))}
    refs = read_state_dict(write_torch_zip(tmp_path / "views.pt", sd))
    np.testing.assert_array_equal(refs["k"].read(), grid[8:16].reshape(2, 4))
    np.testing.assert_array_equal(refs["v_t"].read(), grid[16:24].reshape(2, 4).T)
    np.testing.assert_array_equal(refs["every_other"].read(), grid.reshape(2, 12)[:, 1:7:2])
    np.testing.assert_array_equal(refs["single"].read(), grid[5:8].reshape(1, 1, 3))
    np.testing.assert_array_equal(refs["padded_rows"].read(), grid.reshape(3, 8)[:, :2])


def test_many_tensors_out_of_one_storage_are_refused(tmp_path, monkeypatch):
    storage = Storage("0", np.arange(64, dtype=np.float32))
    sd = {f"copy{i}": tensor(storage, 0, (8, 8), (8, 1)) for i in range(5)}  # 5 x 64 elements out of 64
    path = write_torch_zip(tmp_path / "reuse.pt", sd)
    refused_before_reading_tensors(path, monkeypatch, "320 elements", "4 times", "64 elements")
    tied = write_torch_zip(tmp_path / "tied.pt", {k: sd[k] for k in ("copy0", "copy1")})  # tied weights: fine
    assert len(read_state_dict(tied)) == 2


# 2. Messages never repr() what the file holds


def test_refusal_messages_do_not_walk_attacker_values(tmp_path):
    # _rebuild_tensor_v2(storage, 0, <list DAG>, (1,), False, {}): the size is 22 levels of shared sublists.
    dag = op_list_dag(22, first_memo=0)
    data = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + op_str("w")
            + op_tensor(op_storage("0", 1), op_int(0), dag, op_tuple(1)) + pickle.SETITEM + pickle.STOP)
    path = write_raw_torch_zip(tmp_path / "dag.pt", data, {"0": b"\x00" * 4})
    error = expect_error(path, "tensor size", "a list of length 2")
    assert "[[" not in str(error) and len(str(error)) < 400 + len(str(path))


def test_huge_keys_are_cut_in_messages(tmp_path):
    key = "k" * 1_000_000
    sd = {key: 3}
    error = expect_error(write_torch_zip(tmp_path / "longkey.pt", sd), "not a tensor", "1000000 characters")
    assert len(str(error)) < 400 + len(str(tmp_path))


def test_mapping_keys_that_are_shared_tuples_are_refused(tmp_path):
    # {<tuple DAG>: 1}: hashing (or repr of) the key visits 2**24 leaves.
    data = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + op_tuple_dag(24, first_memo=0) + op_int(1)
            + pickle.SETITEM + pickle.STOP)
    path = write_raw_torch_zip(tmp_path / "tuplekey.pt", data, {})
    error = expect_error(path, "mapping key is a tuple of length 2", "only strings and ints")
    assert "((" not in str(error)


# 3. Nothing the unpickler creates can be changed after it was checked


@pytest.mark.parametrize("state", [
    {"member": "archive/data/1"},  # redirect the checked storage to an entry never size-checked
    {"dtype": "float32"},  # old code: AttributeError: 'str' object has no attribute 'itemsize'
    {"numel": 2},
])
def test_build_cannot_rewrite_a_checked_storage(tmp_path, state):
    def op_value(value):
        return op_str(value) if isinstance(value, str) else op_int(value)

    state_ops = pickle.EMPTY_DICT + b"".join(op_str(k) + op_value(v) + pickle.SETITEM for k, v in state.items())
    data = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + op_str("w")
            + op_tensor(op_storage("0", 1) + op_put(0), op_int(0), op_tuple(1), op_tuple(1)) + pickle.SETITEM
            + op_get(0) + state_ops + pickle.BUILD + pickle.POP + pickle.STOP)
    other = np.array([123.0], np.float32).tobytes()
    path = write_raw_torch_zip(tmp_path / "build.pt", data,
                               {"0": np.array([1.0], np.float32).tobytes(), "1": other})
    expect_error(path, "data.pkl", "refuses to set state on _Storage")


def test_build_with_slot_state_is_refused_on_every_stand_in(tmp_path):
    targets = {
        "storage": op_storage("0", 1),
        "tensor": op_tensor(op_storage("0", 1), op_int(0), op_tuple(1), op_tuple(1)),
        "storage type": op_global("torch", "FloatStorage"),
        "rebuild function": op_global("torch._utils", "_rebuild_parameter"),
    }
    slot_state = pickle.NONE + pickle.EMPTY_DICT + op_str("numel") + op_int(10**6) + pickle.SETITEM + pickle.TUPLE2
    for what, target in targets.items():
        data = pickle.PROTO + b"\x02" + target + slot_state + pickle.BUILD + pickle.STOP
        path = write_raw_torch_zip(tmp_path / f"{what}.pt", data, {"0": b"\x00" * 4})
        expect_error(path, "refuses to set state")


# 4. Size of data.pkl and compression


def test_fixtures_are_stored_uncompressed_with_small_pickles():
    """What the limits rest on: torch.save stores every member uncompressed, ~200 pickle bytes a tensor."""
    from dpt_jax.convert.torch_zip import _MAX_PICKLE_BYTES

    largest_official = max(json.loads(p.read_text())["state_dict_num_keys"]
                           for p in (FIXTURES / "manifests").glob("*.json"))
    for name in FIXTURE_NAMES:
        with zipfile.ZipFile(FIXTURES / f"{name}.pt") as zf:
            infos = zf.infolist()
            assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
            pickle_bytes = zf.getinfo(f"{name}/data.pkl").file_size
        per_tensor = pickle_bytes / sum("/data/" in info.filename for info in infos)
        assert per_tensor < 250
        assert 100 * per_tensor * largest_official < _MAX_PICKLE_BYTES  # a 100x margin over the biggest release


def test_compressed_members_are_refused(tmp_path):
    for member in ("archive/data.pkl", "archive/data/0"):
        path = write_torch_zip(tmp_path / "deflated.pt", simple_state_dict())
        with zipfile.ZipFile(path) as zf:
            contents = {info.filename: zf.read(info) for info in zf.infolist()}
        with zipfile.ZipFile(path, "w") as zf:
            for name, raw in contents.items():
                zf.writestr(name, raw, zipfile.ZIP_DEFLATED if name == member else zipfile.ZIP_STORED)
        expect_error(path, f"'{member}' is compressed", "torch.save stores members uncompressed")


def test_oversized_pickle_is_refused_without_reading_it(tmp_path):
    path = write_torch_zip(tmp_path / "big.pkl.pt", simple_state_dict())
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # the first central directory entry is archive/data.pkl
    assert raw[entry + 46:entry + 46 + 16] == b"archive/data.pkl"
    raw[entry + 20:entry + 28] = struct.pack("<II", 20 << 20, 20 << 20)  # declares 20 MiB, holds ~200 bytes
    path.write_bytes(bytes(raw))
    expect_error(path, "'archive/data.pkl' is implausibly large", "20971520 bytes", "16777216")


# 5. Every failure is a CheckpointError naming the file


@pytest.mark.parametrize("shape", [(0, 2**70), (0, 2**40, 2**40), (1,) * 40])
def test_absurd_declared_sizes_are_checkpoint_errors(tmp_path, shape):
    storage = Storage("0", np.zeros(1, np.float32))
    path = write_torch_zip(tmp_path / "absurd.pt", {"t": tensor(storage, 0, shape, (0,) * len(shape))})
    expect_error(path, "data.pkl" if len(shape) > 32 or max(shape) > 2**48 else "'t'")


def test_absurd_storage_size_is_a_checkpoint_error(tmp_path):
    data = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + op_str("w")
            + op_tensor(op_storage("0", 2**70), op_int(0), op_tuple(1), op_tuple(1)) + pickle.SETITEM + pickle.STOP)
    path = write_raw_torch_zip(tmp_path / "numel.pt", data, {"0": b""})
    expect_error(path, "storage '0' has invalid size", "an int of 71 bits")


@pytest.mark.parametrize("entry, fragment", [
    ({"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}, "invalid shape"),
    ({"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}, "invalid shape"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype a list"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}, "invalid data_offsets"),
    ({"dtype": "F32", "shape": "[1]", "data_offsets": [0, 4]}, "invalid shape"),
])
def test_safetensors_absurd_declarations_are_checkpoint_errors(tmp_path, entry, fragment):
    path = write_safetensors_raw(tmp_path / "absurd.safetensors", {"x": entry}, b"\x00" * 4)
    expect_error(path, "'x'", fragment)


def test_safetensors_header_length_cap(tmp_path):
    path = tmp_path / "header.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    expect_error(path, "implausibly large", "at most 16777216")


def test_atomic_write_names_the_file_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno

    from dpt_jax.atomic import atomic_write

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    target = tmp_path / "converted.safetensors"
    with pytest.raises(OSError) as info:
        with atomic_write(target) as f:
            f.write(b"data")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target) and str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
