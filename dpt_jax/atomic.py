"""Writing files so that readers never see half of one.

A file being written is a hidden temporary file in the target's folder, named
``.partial-<pid>-<host>-<random><suffix>`` (``<host>``: 8 hex digits of a hash of the host name),
renamed onto the target when complete. A process killed with SIGKILL cannot remove its
temporary file; `clean_stale_partials` removes the ones whose process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def partial_prefix() -> str:
    """The name prefix of this process's temporary files and folders (what `clean_stale_partials` removes
    once the process is gone)."""
    return f"{PARTIAL_PREFIX}{os.getpid()}-{_host_tag()}-"


@contextlib.contextmanager
def atomic_write(path, suffix: str = "", *, replace: bool = True):
    """Yield a binary file that becomes `path` only if the block finishes; otherwise nothing is left behind.

    The data goes to a temporary file in the same folder, is flushed to disk, gets the usual
    permissions for a new file (0666 less the umask; mkstemp would leave 0600), and is renamed.
    `replace=False`: raise FileExistsError instead of replacing a file that appeared at `path`
    meanwhile (the final step is then a hard link, which never replaces).
    An OSError that names no file or only the temporary one (a full disk, a failed fsync, a missing
    folder) is raised again naming `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(), suffix=suffix, dir=folder)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError if something is there now
            os.unlink(tmp)
    except OSError as exc:
        _discard(tmp)
        if isinstance(exc, FileExistsError) or (
            exc.filename is not None and not os.fspath(exc.filename).startswith(os.path.join(folder, PARTIAL_PREFIX))
        ):
            raise  # names its file already (an error of the caller's own, or of reading something else)
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


_PARTIAL_RX = re.compile(re.escape(PARTIAL_PREFIX) + r"(\d+)-([0-9a-f]{8})-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_partials(folder) -> list[Path]:
    """Remove the temporary files `atomic_write` left in `folder` (not its sub-folders) when killed, and the
    temporary folders named alike (a Hugging Face export in the making).

    Only entries named as this module names them, written on this host, whose process is no
    longer running, are removed; those of running writers, other hosts and other programs stay.
    Returns the removed paths.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host = _host_tag()
    for entry in entries:
        m = _PARTIAL_RX.match(entry.name)
        is_dir = entry.is_dir(follow_symlinks=False)
        if not m or m.group(2) != host or not (is_dir or entry.is_file(follow_symlinks=False)):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            shutil.rmtree(entry.path) if is_dir else os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


def check_output(path, *, inputs=(), overwrite: bool = False, folder: bool = False) -> None:
    """The one output rule of every command, checked before any work: never write over an input (a file
    given, or anything inside a folder given), never write into a folder holding an input, and never
    replace an existing file unless `overwrite` (a `folder` output: its own rule, `convert.hf.write`)."""
    target = Path(os.path.abspath(os.fspath(path)))
    resolved = Path(os.path.realpath(target))
    for given in inputs:
        source = Path(os.path.realpath(os.fspath(given)))
        if not source.exists():
            continue
        inside = source.is_dir() and (resolved == source or source in resolved.parents)
        if resolved == source or inside or (folder and resolved in source.parents):
            raise ValueError(f"{path}: would write over the input {given}; choose another output")
    if not folder and (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path}: exists; not replaced (--overwrite / overwrite=True replaces it)")
