"""Reading text files line by line with errors that name the file and line."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO


class FormatError(ValueError):
    """A malformed input file; the message names the file, the line and what was expected."""


def excerpt(text: str | bytes, limit: int = 60) -> str:
    """`repr` of `text` cut to about `limit` characters, so an error quoting a 100 MB token
    stays one short line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def open_binary(path: str) -> BinaryIO:
    """Opens `path` for reading, with a one-line error if it does not exist or is not a
    regular file (a folder, a FIFO, a device: reading one could hang or never end)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path}: is a folder, expected a file")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise FileNotFoundError(f"{path}: not a regular file (a pipe or a device), expected a file")
    return open(path, "rb")


# The longest line a reader takes: a LibSVM line with MAX_FEATURES features is about 20
# MiB. A longer one is far more likely a file that is not line data (or lost its line
# breaks) than real data, and reading it whole would take memory many times its size.
MAX_LINE_BYTES = 64 << 20


def bounded_lines(
    f: BinaryIO, path: str, limit: int = MAX_LINE_BYTES, numbered: bool = True
) -> Iterator[bytes]:
    """`f`'s lines, refusing one longer than `limit` bytes before reading it whole.

    Args:
      f: a binary file, read from where it stands.
      path: its name, for errors.
      limit: the longest line taken, in bytes.
      numbered: whether `f` was read from its start (errors then name the line number).

    Raises:
      FormatError: naming the line.
    """
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit:
            where = f"{path}:{lineno}" if numbered else path
            raise FormatError(
                f"{where}: a line longer than {limit:,} bytes; a data file's lines "
                "are far shorter (line breaks lost, or not a data file?)"
            )
        yield raw


def decoded_lines(f: BinaryIO, path: str, encoding: str) -> Iterator[str]:
    """Decodes a binary file line by line, so a bad byte is reported with its line number."""
    for lineno, raw in enumerate(bounded_lines(f, path), 1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}:{lineno}: cannot decode as {encoding} ({e.reason} at byte {e.start}); "
                "set the encoding (e.g. latin-1)"
            ) from None
