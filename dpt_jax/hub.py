"""The six official MiDaS v3.1 checkpoints: where they are published, and a local cache of them.

    >>> from dpt_jax import hub
    >>> path = hub.resolve("swin2_tiny_256")   # downloaded on first use, then taken from the cache
    >>> path = hub.resolve("my/own/file.pt")   # an existing file is returned as it is

Registry
--------
``REGISTRY`` maps each model name (the preset names of ``dpt_jax.registry.PRESETS``) to a
``ModelEntry``: its public release URL, the configuration the file must hold, and its size,
*approximately* (the byte total of its tensors; the file is slightly larger because of the
pickle and the zip headers). Short names without the ``dpt_`` prefix work everywhere a name is
taken. No checksums are published for these files; what makes a download trustworthy is the
check described below. ``register()`` adds an entry (a mirror, a fine-tuned checkpoint, a test
fixture).

Cache
-----
``cache_dir()`` is ``$DPT_JAX_CACHE`` when set, else ``$XDG_CACHE_HOME/dpt-jax`` (when that is
an absolute path), else ``~/.cache/dpt-jax``. It holds, per model:

- ``<name>.pt``: the checkpoint; only ever a complete file that passed the check below;
- ``<name>.pt.verified``: a small stamp (size and modification time of the checked file), so
  later uses skip the check; a file that changed since is checked again;
- while downloading, ``<name>.pt.partial`` and ``<name>.pt.partial.json`` (the URL and the
  server's ETag/Last-Modified of the partial bytes): an interrupted download resumes from
  there with an HTTP Range request (with If-Range, so a file that changed on the server is
  fetched again from the start instead of being spliced).

Downloads of one model into one cache directory are serialised with a lock file,
``<name>.pt.lock`` (POSIX ``flock``, released by the system when its holder exits), so two
processes asking for the same model download it once. A process waiting for the lock gives up
with a ``DownloadError`` naming the lock file when the holder has made no visible progress (its
``.partial`` file did not grow) for ``lock_timeout`` seconds.

Stalls
------
Besides ``timeout`` (no byte at all for that long), a transfer that receives fewer than
``stall_bytes`` in any ``stall_timeout``-second window is abandoned as stalled (a server
trickling a byte every few seconds never trips a per-read timeout), and retried like a lost
connection, resuming where it stopped.

Hugging Face Hub repositories
-----------------------------
A repo id ("Intel/dpt-swinv2-tiny-256", "depth-anything/Depth-Anything-V2-Small-hf"), and the
names in ``HF_REPOS``, are fetched with ``huggingface_hub`` (``hf_snapshot``): its cache
(``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), its resumable, checksum-verified
downloads, its tokens and its offline mode (``HF_HUB_OFFLINE=1``: the cache only, no network).
Only ``config.json`` and the safetensors weights are fetched. The MiDaS v3.1 release files
stay on the HTTP code below: they are GitHub release assets, not files of a Hub repository, and
``huggingface_hub`` only serves repositories of a Hub endpoint. So there are two transports
(one per host), one function (``resolve``) that picks them, and one checkpoint reader.

Check
-----
A download is complete when its byte count equals the server's Content-Length. It is then
read as a checkpoint (``read_state_dict``, which also refuses unsafe pickles), its
architecture detected from its keys and shapes must be exactly the registry entry's
configuration, every key must fit the model (``check_state_dict``: nothing missing,
unexpected or mis-shaped) and, for torch zip files, every archive member must match its
CRC-32. Only then is it renamed to ``<name>.pt``. A file that fails is deleted and a
``CheckpointError`` says what was wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write
from .config import DPTConfig
from .registry import PRESETS
from .errors import CheckpointError, DownloadError, UnknownModelError

__all__ = [
    "DEFAULT_MODEL", "HF_REPOS", "REGISTRY", "hf_snapshot", "take_verified", "RELEASE_URL", "DownloadError", "ModelEntry", "UnknownModelError",
    "cache_dir", "cached_path", "download", "get_entry", "known_names", "register", "resolve",
    "unregister", "verify",
]

RELEASE_URL = "https://github.com/isl-org/MiDaS/releases/download/v3_1/{name}.pt"
DEFAULT_MODEL = "dpt_swin2_tiny_256"  # the smallest (about 172 MB) and fastest of the six

_CHUNK = 1 << 20
STALL_TIMEOUT = 60.0  # seconds in which at least STALL_BYTES must arrive
STALL_BYTES = 1 << 20  # so a transfer slower than ~17 kB/s is abandoned as stalled
LOCK_TIMEOUT = 600.0  # seconds of no progress by the lock holder before a waiting process gives up
_USER_AGENT = "dpt-jax (+https://github.com/isl-org/MiDaS checkpoints)"


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable checkpoint."""

    name: str  # registry name; also the cache file's stem
    url: str  # where it is published
    config: DPTConfig  # the architecture the file must hold (detect_config must return exactly this)
    approx_bytes: int | None = None  # approximate file size (tensor bytes); only for messages and progress
    licence: str | None = None  # the weights' licence, shown when the file is downloaded
    file: str | None = None  # the cache file's name, when not <name>.pt (Depth Anything: the release name)

    @property
    def filename(self) -> str:
        return self.file or f"{self.name}.pt"


# Tensor byte totals of the released files (each file is a little larger).
_APPROX_BYTES = {
    "dpt_beit_large_512": 1_581_777_764,
    "dpt_beit_large_384": 1_441_276_772,
    "dpt_beit_base_384": 478_087_940,
    "dpt_swin2_large_384": 880_189_556,
    "dpt_swin2_base_384": 436_057_732,
    "dpt_swin2_tiny_256": 172_048_204,
}

REGISTRY: dict[str, ModelEntry] = {
    name: ModelEntry(name, RELEASE_URL.format(name=name), PRESETS[name], _APPROX_BYTES[name], licence="MIT")
    for name in _APPROX_BYTES
}

# Depth Anything: the official files on Hugging Face (V2 from its README and metric_depth/README,
# V1 from the LiheYoung/Depth-Anything README). Sizes: tensor byte totals of the reference manifests.
# Licences: V2 Small Apache-2.0, Base/Large CC-BY-NC-4.0 (V2 README; the metric models are
# listed there by the same base models); V1: Apache-2.0 (its repository's licence).
_HF = "https://huggingface.co"
_DA_SIZES = {"vits": ("Small", 99_140_356), "vitb": ("Base", 389_883_140), "vitl": ("Large", 1_341_262_596)}
_CC_BY_NC = "CC-BY-NC-4.0 (non-commercial use only)"
for _s, (_word, _bytes) in _DA_SIZES.items():
    _licence = "Apache-2.0" if _s == "vits" else _CC_BY_NC
    _file = f"depth_anything_v2_{_s}.pth"
    REGISTRY[f"da2_{_s}"] = ModelEntry(f"da2_{_s}", f"{_HF}/depth-anything/Depth-Anything-V2-{_word}/resolve/main/{_file}",
                                       PRESETS[f"da2_{_s}"], _bytes, _licence, _file)
    for _data, _repo in (("hypersim", "Hypersim"), ("vkitti", "VKITTI")):
        _name, _file = f"da2_metric_{_data}_{_s}", f"depth_anything_v2_metric_{_data}_{_s}.pth"
        REGISTRY[_name] = ModelEntry(
            _name, f"{_HF}/depth-anything/Depth-Anything-V2-Metric-{_repo}-{_word}/resolve/main/{_file}",
            PRESETS[_name], _bytes, _licence, _file)
    _file = f"depth_anything_{_s}14.pth"
    REGISTRY[f"da1_{_s}"] = ModelEntry(f"da1_{_s}", f"{_HF}/spaces/LiheYoung/Depth-Anything/resolve/main/checkpoints/{_file}",
                                       PRESETS[f"da1_{_s}"], _bytes, "Apache-2.0", _file)
REGISTRY = {name: REGISTRY[name] for name in PRESETS}  # in the presets' order


#: Names served from Hugging Face Hub repositories in the transformers layout (converted by
#: transformers from the original releases); any other "org/name" is taken as a repo id as well.
HF_REPOS: dict[str, str] = {
    "da1_vits": "LiheYoung/depth-anything-small-hf",
    "da1_vitb": "LiheYoung/depth-anything-base-hf",
    "da1_vitl": "LiheYoung/depth-anything-large-hf",
    "da2_vits": "depth-anything/Depth-Anything-V2-Small-hf",
    "da2_vitb": "depth-anything/Depth-Anything-V2-Base-hf",
    "da2_vitl": "depth-anything/Depth-Anything-V2-Large-hf",
    "da2_metric_indoor_vits": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
    "da2_metric_indoor_vitb": "depth-anything/Depth-Anything-V2-Metric-Indoor-Base-hf",
    "da2_metric_indoor_vitl": "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf",
    "da2_metric_outdoor_vits": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",
    "da2_metric_outdoor_vitb": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Base-hf",
    "da2_metric_outdoor_vitl": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf",
}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_HF_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]


# ---------------------------------------------------------------------------------------------
# Registry


_NAME_RX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def register(entry: ModelEntry, *, replace: bool = False) -> ModelEntry:
    """Add `entry` to the registry (`replace=True` to overwrite an entry of the same name)."""
    if not _NAME_RX.fullmatch(entry.name):
        raise ValueError(f"model names are letters, digits, '_', '.' and '-'; got {entry.name!r}")
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"{entry.name!r} is already registered (pass replace=True to overwrite it)")
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def known_names() -> list[str]:
    return list(REGISTRY)


def _lookup(name: str) -> ModelEntry | None:
    if name in REGISTRY:
        return REGISTRY[name]
    return REGISTRY.get(f"dpt_{name}")


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name` (short forms without "dpt_" work too)."""
    entry = _lookup(name)
    if entry is None:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)} "
                                "(the 'dpt_' prefix may be left out)")
    return entry


# ---------------------------------------------------------------------------------------------
# Cache


def cache_dir() -> Path:
    """`$DPT_JAX_CACHE`, else `$XDG_CACHE_HOME/dpt-jax` (absolute paths only), else `~/.cache/dpt-jax`."""
    explicit = os.environ.get("DPT_JAX_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "dpt-jax"
    return Path.home() / ".cache" / "dpt-jax"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp_ok(path: Path, entry: ModelEntry) -> bool:
    try:
        st = path.stat()
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("model") == entry.name
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
    )


def _write_stamp(path: Path, entry: ModelEntry, url: str | None) -> None:
    st = path.stat()
    stamp = {"model": entry.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "url": url,
             "config": entry.config.name}
    _atomic_write_text(_stamp_path(path), json.dumps(stamp, indent=1))


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode())


def _unlink(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def cached_path(name: str, *, cache=None) -> Path | None:
    """The cached file of model `name` if the cache holds a checked copy, else None (no network, no check run)."""
    entry = get_entry(name)
    path = (Path(cache) if cache is not None else cache_dir()) / entry.filename
    return path if _stamp_ok(path, entry) else None


@contextlib.contextmanager
def _locked(lock_path: Path, watched: Path, url: str, progress: bool, lock_timeout: float):
    """An exclusive lock on `lock_path` for the duration of a download (POSIX; elsewhere a no-op).

    While another process holds it, wait as long as that process makes progress (the file
    `watched` grows); after `lock_timeout` seconds without progress, raise DownloadError.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # pragma: no cover - a cache that cannot hold a lock file
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        except OSError:  # pragma: no cover - file systems without flock: go on unlocked
            held = True
        if not held:
            if progress:
                print(f"dpt-jax: waiting for another process downloading into {lock_path.parent} "
                      f"(lock file {lock_path})", file=sys.stderr)
            _wait_for_lock(fd, lock_path, watched, url, lock_timeout)
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_lock(fd: int, lock_path: Path, watched: Path, url: str, lock_timeout: float) -> None:
    import fcntl

    def size() -> int:
        try:
            return watched.stat().st_size
        except OSError:
            return -1

    last_size, last_change = size(), time.monotonic()
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now, current = time.monotonic(), size()
        if current != last_size:
            last_size, last_change = current, now
        elif now - last_change > lock_timeout:
            raise DownloadError(
                url, f"gave up after waiting {lock_timeout:g} s for the lock file {lock_path}: another process "
                f"holds it and its download ({watched}) made no progress in that time. If that process is "
                "stuck, stop it (the lock is released when it exits) and try again; or set DPT_JAX_CACHE "
                "to use another cache directory",
            )
        time.sleep(min(0.2, max(lock_timeout / 10, 0.01)))


# ---------------------------------------------------------------------------------------------
# Check


@functools.lru_cache(maxsize=16)
def _param_shapes(config: DPTConfig) -> dict[str, tuple[int, ...]]:
    from .dpt import param_shapes

    return param_shapes(config)


def _config_differences(got: DPTConfig, want: DPTConfig) -> list[str]:
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(dataclasses.asdict(got)), flat(dataclasses.asdict(want))
    return [f"{k}: {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k != "name" and a.get(k) != b.get(k)]


def verify(path, model) -> DPTConfig:
    """Check that the file at `path` is the checkpoint of `model` (a name or a ModelEntry); returns its config.

    Raises CheckpointError (naming `path`) when the file is unreadable, holds another
    architecture, has missing/unexpected/mis-shaped keys, or (torch zip) fails its CRC-32s.
    """
    entry = model if isinstance(model, ModelEntry) else get_entry(model)
    return _checked(os.fspath(path), entry)[1]


def _checked(path: str, entry: ModelEntry):
    """(state dict, config) of the file at `path` once it passed every check of `verify`."""
    from .convert.keys import check_state_dict
    from .convert.files import read_state_dict
    from .registry import detect_config, recognise

    state = read_state_dict(path)
    family = recognise(state)
    if family is not None and family is not entry.config.family:
        raise CheckpointError(path, f"holds a {family.name} model, not the {entry.config.family.name} model {entry.name}")
    # Files whose keys cannot tell their variant (Depth Anything) are checked as the entry's variant.
    chosen = {"variant": entry.config.name} if "variant" in (entry.config.family.options or {}) else {}
    config = detect_config(state, path, **chosen)
    if config != entry.config:
        if config.family is not entry.config.family:
            what = f"a {config.family.name} model, not the {entry.config.family.name} model {entry.name}"
        else:
            diffs = _config_differences(config, entry.config)
            what = f"another {config.family.name} architecture than {entry.name} (" + "; ".join(diffs) + ")"
        raise CheckpointError(path, f"holds {what}")
    _check_archive(path)
    family = config.family
    problems = check_state_dict(state, family.key_table(config), family.skipped(config), _param_shapes(config))
    if problems:
        raise CheckpointError(path, f"does not fit {entry.name}:\n  " + "\n  ".join(problems))
    return state, config


def _check_archive(path) -> None:
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as e:
            raise CheckpointError(path, f"damaged zip archive: {e}") from None
        if bad is not None:
            raise CheckpointError(path, f"damaged data: archive member {bad!r} does not match its CRC-32")


# The checkpoint read while checking a download, kept for the load that follows (one read, not two):
# (path, size, mtime_ns) -> Checkpoint; at most one, handed out once.
_VERIFIED: dict = {}


def _verified_checkpoint(path, entry: ModelEntry):
    """verify() that also builds the parameter tree (the same reading the load needs) and returns it."""
    from .checkpoint import convert_state_dict

    state, config = _checked(os.fspath(path), entry)
    return convert_state_dict(state, config, os.fspath(path))


def _remember(path: Path, checkpoint) -> None:
    st = path.stat()
    _VERIFIED.clear()
    checkpoint.path = os.fspath(path)
    _VERIFIED[(os.fspath(path), st.st_size, st.st_mtime_ns)] = checkpoint


def take_verified(path):
    """The Checkpoint read when `path` was checked after its download, if the file is unchanged since; once."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _VERIFIED.pop((os.fspath(path), st.st_size, st.st_mtime_ns), None)


def _verify_and_stamp(path: Path, entry: ModelEntry, url: str | None) -> None:
    _remember(path, _verified_checkpoint(path, entry))
    _write_stamp(path, entry, url)


# ---------------------------------------------------------------------------------------------
# Download


class _Interrupted(Exception):
    """A transfer that stopped early but can be resumed (connection lost, timeout)."""


class _Restart(Exception):
    """The partial bytes cannot be continued; start over from byte 0."""


def _human(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) of a Content-Range header ("bytes 100-199/200" or "bytes */200")."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _open(url: str, headers: dict, timeout: float):
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as e:
        if isinstance(e.reason, (TimeoutError, socket.timeout)):
            raise _Interrupted(f"no answer within {timeout:g} s") from None
        if isinstance(e.reason, (ConnectionResetError, ConnectionAbortedError)):
            raise _Interrupted(f"connection lost ({e.reason})") from None
        raise DownloadError(url, f"{e.reason} (check the network connection, or download the file "
                                 "yourself and pass its path)") from None
    except (TimeoutError, socket.timeout):
        raise _Interrupted(f"no answer within {timeout:g} s") from None
    except (http.client.HTTPException, ConnectionError) as e:
        raise _Interrupted(f"connection lost ({type(e).__name__}: {e})") from None
    except ValueError as e:  # malformed URL
        raise DownloadError(url, str(e)) from None


@dataclass
class _StallWatch:
    """Refuses transfers that receive fewer than `min_bytes` in any `seconds`-second window."""

    seconds: float
    min_bytes: int
    total: int | None
    mark_bytes: int
    mark_time: float = dataclasses.field(default_factory=time.monotonic)

    def update(self, have: int) -> None:
        now = time.monotonic()
        wanted = self.min_bytes if self.total is None else min(self.min_bytes, self.total - self.mark_bytes)
        if have - self.mark_bytes >= wanted:
            self.mark_bytes, self.mark_time = have, now
        elif now - self.mark_time > self.seconds:
            raise _Interrupted(
                f"stalled: only {have - self.mark_bytes} bytes in the last {now - self.mark_time:.3g} s "
                f"(at least {wanted} expected within {self.seconds:g} s) after {have} bytes"
            )


def _fetch_once(url: str, partial: Path, meta_path: Path, *, desc: str, approx: int | None,
                show_bar: bool, timeout: float, stall_timeout: float, stall_bytes: int) -> None:
    """One request: continue `partial` (or start it) until it is complete; raises _Interrupted/_Restart."""
    have = partial.stat().st_size if partial.exists() else 0
    meta = _read_meta(meta_path)
    if have and meta.get("url") != url:  # partial bytes of unknown or other origin
        _unlink(partial, meta_path)
        have, meta = 0, {}
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    try:
        # A read blocked for longer than the stall window is a stall as well.
        response = _open(url, headers, min(timeout, stall_timeout))
    except urllib.error.HTTPError as e:
        with contextlib.closing(e):
            if e.code == 416 and have:  # nothing left to send: complete already, or a stale partial
                _, total = _content_range(e.headers.get("Content-Range"))
                if total is None:
                    total = meta.get("total")
                if total == have:
                    return
                raise _Restart(f"the server refused to continue at byte {have}") from None
            reason = f" {e.reason}" if e.reason else ""
            raise DownloadError(url, f"HTTP {e.code}{reason}") from None

    with response:
        if response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"))
            if first != have or (meta.get("total") is not None and total != meta.get("total")):
                raise _Restart(f"the server answered the request for bytes {have}- with "
                               f"{response.headers.get('Content-Range')!r}")
            mode = "ab"
        elif response.status == 200:  # a fresh start, or a server that ignores Range / a changed file
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            have, mode = 0, "wb"
            meta = {"url": url, "total": total, "etag": response.headers.get("ETag"),
                    "last_modified": response.headers.get("Last-Modified")}
            _atomic_write_text(meta_path, json.dumps(meta))
        else:
            raise DownloadError(url, f"unexpected HTTP status {response.status} {response.reason}")

        if total is not None:
            free = shutil.disk_usage(partial.parent).free
            if free < total - have:
                raise DownloadError(url, f"{_human(total - have)} still to download but only {_human(free)} "
                                         f"free in {partial.parent} (set DPT_JAX_CACHE to use another directory)")

        from tqdm import tqdm

        with open(partial, mode) as f, tqdm(
            total=total if total is not None else approx, initial=have, unit="B", unit_scale=True,
            unit_divisor=1024, desc=desc, file=sys.stderr, disable=not show_bar, leave=False,
        ) as bar:
            watch = _StallWatch(stall_timeout, stall_bytes, total, have)
            try:
                while True:
                    chunk = response.read1(_CHUNK)  # what has arrived (read() would wait for a full chunk)
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
                    watch.update(have)
            except (TimeoutError, socket.timeout):
                raise _Interrupted(f"no data for {min(timeout, stall_timeout):g} s after {have} bytes") from None
            except (http.client.HTTPException, OSError) as e:
                raise _Interrupted(f"connection lost after {have} bytes ({type(e).__name__}: {e})") from None
            finally:
                f.flush()
            os.fsync(f.fileno())

    if total is not None and have != total:
        if have > total:
            raise _Restart(f"received {have} bytes, more than the announced {total}")
        raise _Interrupted(f"the connection closed after {have} of {total} bytes")


def _fetch(url: str, partial: Path, *, desc: str, approx: int | None, progress: bool,
           timeout: float, retries: int, stall_timeout: float, stall_bytes: int) -> None:
    meta_path = partial.with_name(partial.name + ".json")
    show_bar = progress and sys.stderr.isatty()
    failures = restarts = 0
    while True:
        try:
            _fetch_once(url, partial, meta_path, desc=desc, approx=approx, show_bar=show_bar, timeout=timeout,
                        stall_timeout=stall_timeout, stall_bytes=stall_bytes)
            _unlink(meta_path)
            return
        except _Restart as e:
            _unlink(partial, meta_path)
            restarts += 1
            if restarts > 2:
                raise DownloadError(url, f"{e}; giving up after restarting twice") from None
        except _Interrupted as e:
            failures += 1
            if failures > retries:
                kept = partial.stat().st_size if partial.exists() else 0
                hint = (f"; the {kept} bytes received are kept in {partial} and the next attempt resumes there"
                        if kept else "")
                raise DownloadError(url, f"{e} (tried {failures} time{'s' * (failures > 1)}){hint}") from None
            if progress:
                print(f"dpt-jax: {desc}: {e}; resuming", file=sys.stderr)
            time.sleep(min(0.25 * 2 ** (failures - 1), 8.0))


def download(name: str, *, cache=None, progress: bool = True, url: str | None = None,
             timeout: float = 60.0, retries: int = 3, stall_timeout: float = STALL_TIMEOUT,
             stall_bytes: int = STALL_BYTES, lock_timeout: float = LOCK_TIMEOUT) -> Path:
    """The path of the checked checkpoint of model `name` in the cache, downloading it if needed.

    - `cache`: the cache directory (default: `cache_dir()`).
    - `progress`: report on stderr (a progress bar when stderr is a terminal, one line otherwise).
    - `url`: download from here instead of the registry's URL (a mirror); the file must still
      be the registry's model. A cached copy is used without any network access, whatever `url`.
    - `timeout`: seconds without an answer or data before a request counts as failed.
    - `retries`: how many times a lost connection, a timeout or a stall is retried (each retry
      resumes where the previous one stopped); HTTP errors are not retried.
    - `stall_timeout`, `stall_bytes`: a transfer receiving fewer than `stall_bytes` bytes in any
      `stall_timeout` seconds is abandoned as stalled (so a trickling server cannot hold it forever).
    - `lock_timeout`: while another process downloads the same model into the same cache, wait
      for it as long as its partial file grows; give up after this many seconds without growth.

    Raises DownloadError (naming the URL) when the file cannot be fetched (partial bytes are
    kept for the next attempt to resume from), and CheckpointError when the fetched file is not
    the model's checkpoint (it is then deleted).
    """
    entry = get_entry(name)
    url = url or entry.url
    directory = Path(cache) if cache is not None else cache_dir()
    dest = directory / entry.filename
    if _stamp_ok(dest, entry):
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with _locked(dest.with_name(dest.name + ".lock"), partial, url, progress, lock_timeout):
        if _stamp_ok(dest, entry):  # another process finished it while we waited
            return dest
        if dest.is_file():  # put there by hand, or the stamp is stale: check it instead of fetching
            try:
                _verify_and_stamp(dest, entry, None)
                return dest
            except CheckpointError as e:
                if progress:
                    print(f"dpt-jax: the cached {dest} is damaged ({e.message.splitlines()[0]}); "
                          "downloading it again", file=sys.stderr)
                _unlink(dest, _stamp_path(dest))
        _unlink(_stamp_path(dest))

        if entry.licence:  # shown on every download, quiet or not
            print(f"dpt-jax: {entry.name} is published under the licence {entry.licence}", file=sys.stderr)
        if progress and not sys.stderr.isatty():
            print(f"dpt-jax: downloading {entry.name} (about {_human(entry.approx_bytes)}) from {url} to {dest}",
                  file=sys.stderr)
        _fetch(url, partial, desc=entry.name, approx=entry.approx_bytes, progress=progress,
               timeout=timeout, retries=retries, stall_timeout=stall_timeout, stall_bytes=stall_bytes)
        try:
            checkpoint = _verified_checkpoint(partial, entry)
        except CheckpointError as e:
            _unlink(partial)
            raise CheckpointError(
                dest,
                f"the file downloaded from {url} is not a valid {entry.name} checkpoint and was deleted: "
                f"{e.message}\nRun the download again; if it fails the same way, the file at that URL is not "
                f"the {entry.name} checkpoint.",
            ) from None
        os.replace(partial, dest)
        _write_stamp(dest, entry, url)
        _remember(dest, checkpoint)
    return dest


# ---------------------------------------------------------------------------------------------
# Names or paths


def hf_snapshot(repo_id: str, *, revision: str | None = None, progress: bool = True) -> Path:
    """The local folder of Hub repository `repo_id` (config.json + safetensors weights), via huggingface_hub.

    Offline (HF_HUB_OFFLINE=1, or no network) a cached snapshot is used without any network
    access; without one, DownloadError says where the files are expected and how to pass a folder.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    from .convert import hf

    url = f"{constants.ENDPOINT}/{repo_id}"
    cache = Path(constants.HF_HUB_CACHE)
    expected = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / (revision or "<revision>")
    local = ("download it where the network is reachable (huggingface-cli download "
             f"{repo_id}) into that cache, or pass the path of a local folder holding config.json and "
             "model.safetensors instead of the name")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HF_FILES,
                                        tqdm_class=None if progress else _SilentBar))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise UnknownModelError(f"{repo_id!r}: no such Hugging Face Hub repository, or it needs a token you do not "
                                f"have ({type(e).__name__}); known names: {', '.join(known_names() + list(HF_REPOS))}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise DownloadError(url, f"not in the Hugging Face cache and {why}: the files are expected in {expected}/; "
                                 f"{local}") from None
    except OSError as e:
        raise DownloadError(url, f"{type(e).__name__}: {str(e)[:300]}; {local}") from None
    if not hf.is_hf_folder(folder):
        raise DownloadError(url, f"the cached snapshot {folder} holds no config.json (incomplete download?); {local}")
    return folder


class _SilentBar:
    """A tqdm stand-in that shows nothing (progress=False)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args):
        pass

    def close(self):
        pass


def resolve(model=None, *, cache=None, progress: bool = True) -> Path:
    """The checkpoint for `model`: an existing file or Hugging Face folder (returned as it is), a
    registry name (short forms work; downloaded on first use, from the cache afterwards), a name
    of `HF_REPOS` or a Hugging Face Hub repo id "org/name" (fetched with huggingface_hub).

    `None` means DEFAULT_MODEL. Anything else raises UnknownModelError listing the known names.
    """
    from .convert import hf

    if model is None:
        model = DEFAULT_MODEL
    text = os.fspath(model)
    if os.path.isfile(text) or hf.is_hf_folder(text):
        return Path(text)
    if os.path.exists(text):
        raise UnknownModelError(f"{text!r} is not a checkpoint file (it is a directory without a config.json, "
                                "or a special file)")
    if isinstance(model, str) and _lookup(model) is not None:
        return download(model, cache=cache, progress=progress)
    if isinstance(model, str) and (model in HF_REPOS or _REPO_ID.fullmatch(model)) \
            and not model.endswith((".pt", ".pth", ".safetensors", ".bin")):
        return hf_snapshot(HF_REPOS.get(model, model), progress=progress)
    looks_like_path = os.sep in text or "/" in text or text.endswith((".pt", ".pth", ".safetensors"))
    what = "no such file, and not" if looks_like_path else "neither an existing file nor"
    raise UnknownModelError(f"{text!r}: {what} a known model name; known models: {', '.join(REGISTRY)}, "
                            f"{', '.join(HF_REPOS)} (the 'dpt_' prefix may be left out), or a Hugging Face "
                            "Hub repo id such as Intel/dpt-swinv2-tiny-256")
