"""Converter memory: peak RSS of converting a synthesized full-size checkpoint, against the parameter bytes.

A manifest (tests/fixtures/manifests/<name>.json in the repository, or any manifest file) lists
the exact keys, shapes and dtypes of a released checkpoint; `synthesize_checkpoint` writes a
.safetensors file with that layout and random data, and `convert_memory` converts it in a fresh
process and reads that process's own memory high-water mark.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dpt_jax.convert.safetensors_io import write_safetensors

from .measure import MARKER, child_result, python_child

#: The manifests of the released checkpoints, in the repository this benchmarks folder belongs to.
DEFAULT_MANIFEST_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "manifests"


def resolve_manifest(name_or_path, manifest_dir=None) -> Path:
    """A manifest file: a path to a .json, or a name (dpt_beit_large_512, beit_large_512) in `manifest_dir`."""
    p = Path(name_or_path)
    if p.suffix == ".json" and p.is_file():
        return p
    folder = Path(manifest_dir) if manifest_dir is not None else DEFAULT_MANIFEST_DIR
    name = str(name_or_path)
    if not name.startswith("dpt_"):
        name = "dpt_" + name
    p = folder / f"{name}.json"
    if not p.is_file():
        known = sorted(x.stem for x in folder.glob("*.json")) if folder.is_dir() else []
        raise ValueError(f"no manifest {name_or_path!r} in {folder}; known: {', '.join(known) or '(none found)'}"
                         + ("" if known else " (pass --manifests DIR, or a manifest .json path)"))
    return p


class _RandomTensors(Mapping):
    """The tensors of a manifest's state_dict, each made when asked for (floats N(0, 1), integers 0)."""

    def __init__(self, entries, seed: int):
        self._entries = {e["key"]: (i, tuple(e["shape"]), np.dtype(e["dtype"])) for i, e in enumerate(entries)}
        self._seed = seed

    def __getitem__(self, key):
        index, shape, dtype = self._entries[key]
        if not np.issubdtype(dtype, np.floating):
            return np.zeros(shape, dtype)
        rng = np.random.default_rng([self._seed, index])  # the same tensor each time it is asked for
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


def synthesize_checkpoint(manifest, path, seed: int = 0) -> dict:
    """Write a .safetensors file with exactly the keys, shapes and dtypes of a manifest's state_dict,
    filled with random data, one tensor in memory at a time (dpt_jax.checkpoint.write_safetensors)."""
    man = manifest if isinstance(manifest, dict) else json.loads(Path(manifest).read_text())
    entries = man["state_dict"]
    write_safetensors(path, _RandomTensors(entries, seed), {"format": "pt"})
    tensor_bytes = sum(math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize for e in entries)
    return {"keys": len(entries), "tensor_bytes": tensor_bytes, "file_bytes": Path(path).stat().st_size}


_CONVERT_CHILD = f"""
import json, resource, sys, time
from benchmarks.measure import current_rss_mb, status_kb
from dpt_jax.checkpoint import count_params, read_checkpoint, write_converted
from flax import traverse_util
src, dst = sys.argv[1], sys.argv[2]
rss_import = current_rss_mb()
t0 = time.perf_counter()
checkpoint = read_checkpoint(src)
t1 = time.perf_counter()
write_converted(dst, checkpoint.config, checkpoint.params)
t2 = time.perf_counter()
nbytes = sum(a.nbytes for a in traverse_util.flatten_dict(checkpoint.params).values())
ru_maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
hwm = status_kb("VmHWM")
print({MARKER!r} + json.dumps({{"model": checkpoint.config.name, "param_count": count_params(checkpoint.params),
      "param_bytes": int(nbytes), "rss_after_import_mb": rss_import, "convert_s": t1 - t0, "write_s": t2 - t1,
      "ru_maxrss_mb": ru_maxrss_mb, "peak_rss_mb": hwm / 1024 if hwm is not None else ru_maxrss_mb,
      "peak_source": "VmHWM" if hwm is not None else "ru_maxrss"}}), flush=True)
"""


def convert_memory(manifest, workdir=None, keep: bool = False, manifest_dir=None) -> dict:
    """Peak RSS of a fresh process running read_checkpoint + write_converted on a synthesized full-size
    checkpoint, and its ratio to the bytes of the converted float32 parameters.

    The peak is the child's own high-water mark (VmHWM). Its ru_maxrss is recorded too, but on Linux
    that value carries over the parent's RSS at fork time through exec (a parent holding 700 MB
    makes every child report >= 700 MB), so it is only an upper bound; elsewhere it is the peak.
    """
    manifest = resolve_manifest(manifest, manifest_dir)
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="dpt-jax-convert-")
        workdir = own_tmp.name
    workdir = Path(workdir)
    src, dst = workdir / f"{manifest.stem}.synthetic.safetensors", workdir / f"{manifest.stem}.converted.safetensors"
    try:
        t = time.perf_counter()
        synth = synthesize_checkpoint(manifest, src)
        synth_s = time.perf_counter() - t
        proc = subprocess.run(python_child(_CONVERT_CHILD, str(src), str(dst)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child = child_result(proc.stdout)
        if proc.returncode or child is None:
            raise RuntimeError(f"conversion process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        out = {"manifest": manifest.stem, "source_file_bytes": synth["file_bytes"], "synthesize_s": synth_s,
               "converted_file_bytes": dst.stat().st_size, **child}
        pb = child["param_bytes"] / 2**20
        out["peak_over_param_bytes"] = child["peak_rss_mb"] / pb
        out["peak_minus_import_over_param_bytes"] = (child["peak_rss_mb"] - child["rss_after_import_mb"]) / pb
        return out
    finally:
        if not keep:
            for p in (src, dst):
                p.unlink(missing_ok=True)
        if own_tmp is not None:
            own_tmp.cleanup()
