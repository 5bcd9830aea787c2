"""Opening a file a user names, without hanging on it.

A path given as data, params or an image may name a FIFO or a device: a plain `open` then waits
for a writer that never comes. `open_regular` opens without blocking, asks the OS what the file
is, and refuses anything but a regular file with an `OSError` whose words fit a one-line message.
"""

from __future__ import annotations

import errno
import os
import stat
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
