"""Resumable, bounded HTTP downloads of one file: the transport behind `hub` for files at a URL.

`fetch(url, partial)` continues the bytes already in `partial` with an HTTP Range request (with
If-Range, so a file that changed on the server is fetched again from the start instead of being
spliced), retries lost connections, and abandons a transfer that receives fewer than
`stall_bytes` in any `stall_timeout`-second window (a server trickling a byte every few seconds
never trips a per-read timeout). `locked(...)` serialises the processes downloading one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write
from .errors import DownloadError

_CHUNK = 1 << 20
STALL_TIMEOUT = 60.0  # seconds in which at least STALL_BYTES must arrive
STALL_BYTES = 1 << 20  # so a transfer slower than ~17 kB/s is abandoned as stalled
LOCK_TIMEOUT = 600.0  # seconds of no progress by the lock holder before a waiting process gives up
_USER_AGENT = "dpt-jax (+https://github.com/isl-org/MiDaS checkpoints)"


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode())


def unlink(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _synced(f, url: str, partial: Path) -> None:
    """Flush and fsync the partial file; a disk error is one DownloadError saying so (no retry helps)."""
    try:
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        raise DownloadError(url, f"cannot write {partial}: {e.strerror or e} (free some space, or set "
                                 "DPT_JAX_CACHE to another directory)") from None


def max_bytes_unknown(approx: int | None) -> int:
    """The most a transfer of unannounced size may send: twice the expected size, else 8 GB."""
    return 2 * approx if approx else 8 * 10**9


def file_digest(path, algorithm: str = "sha256", prefix: bytes = b"") -> str:
    """The hex digest of `prefix` followed by the bytes of `path`, read in chunks (a file of any size)."""
    digest = hashlib.new(algorithm, prefix)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


@contextlib.contextmanager
def locked(lock_path: Path, watched: Path, url: str, progress: bool, lock_timeout: float):
    """An exclusive lock on `lock_path` for the duration of a download (POSIX; elsewhere a no-op).

    While another process holds it, wait as long as that process makes progress (the file
    `watched` grows); after `lock_timeout` seconds without progress, raise DownloadError. The
    holder removes the lock file as it lets go (no empty files stay in the cache), so a lock is
    only held once the file locked is still the one at `lock_path`.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    told = False
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # pragma: no cover - a cache that cannot hold a lock file
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress and not told:
                print(f"dpt-jax: waiting for another process downloading into {lock_path.parent} "
                      f"(lock file {lock_path})", file=sys.stderr)
                told = True
            try:
                _wait_for_lock(fd, lock_path, watched, url, lock_timeout)
            except BaseException:
                os.close(fd)
                raise
        except OSError:  # pragma: no cover - file systems without flock: go on unlocked
            try:
                yield
            finally:
                os.close(fd)
            return
        if _same_file(fd, lock_path):
            break
        os.close(fd)  # the holder removed the file while we waited for it: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # while still held: a process waiting on this file sees it gone
            lock_path.unlink()
        os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


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


class _Interrupted(Exception):
    """A transfer that stopped early but can be resumed (connection lost, timeout)."""


class _Restart(Exception):
    """The partial bytes cannot be continued; start over from byte 0."""


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
        raise DownloadError(url, f"{e.reason}: check the network connection, or fetch {url} where the network "
                                 "is reachable and pass the file's path (-m PATH, or dpt_jax.load(PATH))") from None
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
                show_bar: bool, timeout: float, stall_timeout: float, stall_bytes: int,
                limit: int | None = None) -> None:
    """One request: continue `partial` (or start it) until it is complete; raises _Interrupted/_Restart."""
    have = partial.stat().st_size if partial.exists() else 0
    meta = _read_meta(meta_path)
    if have and meta.get("url") != url:  # partial bytes of unknown or other origin
        unlink(partial, meta_path)
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
            write_text(meta_path, json.dumps(meta))
        else:
            raise DownloadError(url, f"unexpected HTTP status {response.status} {response.reason}")

        if total is not None and limit is not None and total > limit:
            raise DownloadError(url, f"announces {human_size(total)}; at most {human_size(limit)} are taken")
        if total is not None:
            free = shutil.disk_usage(partial.parent).free
            if free < total - have:
                raise DownloadError(url, f"{human_size(total - have)} still to download but only {human_size(free)} "
                                         f"free in {partial.parent} (set DPT_JAX_CACHE to use another directory)")

        from tqdm import tqdm

        with open(partial, mode) as f, tqdm(
            total=total if total is not None else approx, initial=have, unit="B", unit_scale=True,
            unit_divisor=1024, desc=desc, file=sys.stderr, disable=not show_bar, leave=False,
        ) as bar:
            watch = _StallWatch(stall_timeout, stall_bytes, total, have)
            cap = total if total is not None else max_bytes_unknown(approx) if limit is None else limit
            try:
                while True:
                    chunk = response.read1(_CHUNK)  # what has arrived (read() would wait for a full chunk)
                    if not chunk:
                        break
                    if have + len(chunk) > cap:
                        raise DownloadError(url, f"sent more than {human_size(cap)} without announcing its size "
                                                 "(Content-Length); refused")
                    try:
                        f.write(chunk)
                    except OSError as e:  # the disk, not the connection: no retry can help
                        raise DownloadError(url, f"cannot write {partial}: {e.strerror or e} (free some space, or "
                                                 "set DPT_JAX_CACHE to another directory)") from None
                    have += len(chunk)
                    bar.update(len(chunk))
                    watch.update(have)
            except DownloadError:
                raise
            except (TimeoutError, socket.timeout):
                raise _Interrupted(f"no data for {min(timeout, stall_timeout):g} s after {have} bytes") from None
            except (http.client.HTTPException, OSError) as e:
                raise _Interrupted(f"connection lost after {have} bytes ({type(e).__name__}: {e})") from None
            finally:
                _synced(f, url, partial)

    if total is not None and have != total:
        if have > total:
            raise _Restart(f"received {have} bytes, more than the announced {total}")
        raise _Interrupted(f"the connection closed after {have} of {total} bytes")


def fetch(url: str, partial: Path, *, desc: str, approx: int | None, progress: bool,
           timeout: float, retries: int, stall_timeout: float = STALL_TIMEOUT, stall_bytes: int = STALL_BYTES,
           limit: int | None = None) -> None:
    """Download `url` into `partial` (continuing the bytes there); `limit`: the most bytes taken, announced
    or not (default: the announced size, else twice `approx`)."""
    meta_path = partial.with_name(partial.name + ".json")
    show_bar = progress and sys.stderr.isatty()
    failures = restarts = 0
    while True:
        try:
            _fetch_once(url, partial, meta_path, desc=desc, approx=approx, show_bar=show_bar, timeout=timeout,
                        stall_timeout=stall_timeout, stall_bytes=stall_bytes, limit=limit)
            unlink(meta_path)
            return
        except _Restart as e:
            unlink(partial, meta_path)
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
