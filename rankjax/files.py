"""Writing a run's files safely: atomically, and never through a symbolic link.

A file a run writes is first written in full to a temporary name beside it and then
renamed over the final name, so a reader (or a run killed mid-write) never sees half a
file. Neither the temporary nor the final name is followed if it is a symbolic link: a
link planted in a workdir cannot make a run write outside it (the link itself is
replaced, the file it points to is left alone).
"""

from __future__ import annotations

import os
from typing import IO

# Not following links: the final component of the path (directories above may be links,
# e.g. a workdir on another disk).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _create(path: str) -> int:
    """A new file at `path` for writing; whatever was there, a link included, is removed."""
    if os.path.lexists(path):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)


def write_atomic(path: str, data: str | bytes) -> None:
    """Writes `data` to `path` atomically (text as UTF-8), not following links.

    Raises:
      OSError: the write failed (disk full, permissions); `path` keeps its old contents.
    """
    tmp = f"{path}.tmp.{os.getpid()}"
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = _create(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def open_append(path: str) -> IO[str]:
    """`path` opened for appending text, created if absent.

    Raises:
      OSError: `path` is a symbolic link (ELOOP), named in the message.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise OSError(
                e.errno, f"{path} is a symbolic link; rankjax does not write through one"
            ) from None
        raise
    return os.fdopen(fd, "a", encoding="utf-8")
