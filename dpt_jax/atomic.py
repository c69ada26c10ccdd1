"""Writing files so that readers never see half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, suffix: str = ""):
    """Yield a binary file that becomes `path` only if the block finishes; otherwise nothing is left behind.

    The data goes to a temporary file in the same folder, is flushed to disk, gets the usual
    permissions for a new file (0666 less the umask; mkstemp would leave 0600), and is renamed.
    An OSError that names no file or only the temporary one (a full disk, a failed fsync, a missing
    folder) is raised again naming `path`.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=folder)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        if exc.filename is not None and not os.fspath(exc.filename).startswith(os.path.join(folder, ".partial-")):
            raise  # names its file already (an error of the caller's own, or of reading something else)
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)
