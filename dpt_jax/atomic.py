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
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
