"""Opening a file a user names, without hanging on it; writing one whole or not at all (`atomic_write`).

A path given as data, params or an image may name a FIFO or a device: a plain `open` then waits
for a writer that never comes. `open_regular` opens without blocking, asks the OS what the file
is, and refuses anything but a regular file with an `OSError` whose words fit a one-line message.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(OSError):
    """A FIFO, socket or device where a file was expected."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading once the OS says it is a regular file. Raises OSError:
    FileNotFoundError, IsADirectoryError, NotARegularFile or the open's own (permissions, I/O)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", str(Path(path)))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place (the file is whole or
    not there). Here, not in `runs.params_file`, so that the figure worker writes PNGs without importing JAX."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        # mkstemp makes owner-only files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
