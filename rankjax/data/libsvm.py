"""LibSVM / LETOR ranking files: `label qid:Q idx:val ... # comment`.

The format of MSLR-WEB10K/30K, Yahoo! LTR, Istella and LETOR 4.0. When lines carry no
`qid:`, groups come from a LightGBM-style `.query` file (one group size per line, in file
order). Files are read line by line into typed buffers, so memory grows with the data, not
with Python objects. Feature indices are 1-based; missing features are 0 (the LibSVM
convention).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from absl import logging

from rankjax.data.dataset import RankingDataset, from_groups, shard_block
from rankjax.data.textio import (
    FormatError,
    bounded_lines,
    decoded_lines,
    excerpt,
    open_binary,
)

__all__ = ["FormatError", "read", "read_group_file"]


def read_group_file(path: str) -> np.ndarray:
    """Reads a `.query` group file: one positive integer (a list size) per line."""
    sizes = []
    with open_binary(path) as f:
        for lineno, line in enumerate(decoded_lines(f, path, "utf-8"), 1):
            line = line.strip()
            if not line:
                continue
            try:
                size = int(line)
            except ValueError:
                raise FormatError(
                    f"{path}:{lineno}: expected a group size (positive integer), "
                    f"got {excerpt(line)}"
                ) from None
            if size < 1:
                raise FormatError(f"{path}:{lineno}: group size must be >= 1, got {size}")
            sizes.append(size)
    return np.asarray(sizes, np.int64)


MISSING_POLICIES = ("reject", "impute")
_MISSING_TOKENS = {"null", "nan", "na", "none", "inf", "+inf", "-inf", "infinity", "-infinity"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_FEATURES = 1_000_000  # a wider inferred width is far more likely a typo than real data


def _parse_features(
    tokens: list[str], path: str, lineno: int, num_features: int | None, missing: str
) -> tuple[np.ndarray, np.ndarray]:
    """Parses `["3:0.5", "7:1", ...]` into (1-based indices, values).

    The fast path lets NumPy parse the whole line; anything it cannot take goes through a
    token-by-token check that names the offending token. Missing values (`NULL`, `NaN`,
    `Inf`) raise under `missing="reject"` and become NaN under `"impute"`.
    """
    try:
        numbers = np.array(" ".join(tokens).replace(":", " ").split(), dtype=np.float64)
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != 2 * len(tokens):
        numbers = _parse_slowly(tokens, path, lineno)
    idx, val = numbers[0::2], numbers[1::2]
    # inf, 1e400 and 2**63 parse as floats: refuse them before any cast to an integer.
    wrong = ~np.isfinite(idx) | (idx < 1) | (idx != np.floor(idx))
    if np.any(wrong):
        bad = tokens[int(np.flatnonzero(wrong)[0])]
        raise FormatError(
            f"{path}:{lineno}: expected 'index:value' with an integer index >= 1, "
            f"got {excerpt(bad)}"
        )
    limit = num_features or MAX_FEATURES
    if idx.max() > limit:
        raise FormatError(
            f"{path}:{lineno}: feature index {idx.max():.0f} exceeds "
            + (
                f"num_features={num_features}"
                if num_features
                else f"{MAX_FEATURES}; set data.num_features if that is really meant"
            )
        )
    idx = idx.astype(np.int64)
    if len(np.unique(idx)) != len(idx):
        raise FormatError(f"{path}:{lineno}: a feature index appears twice on the line")
    too_big = np.isfinite(val) & (np.abs(val) > _FLOAT32_MAX)
    if np.any(too_big):
        bad = tokens[int(np.flatnonzero(too_big)[0])]
        raise FormatError(f"{path}:{lineno}: value {excerpt(bad)} does not fit in float32")
    if missing == "reject" and not np.all(np.isfinite(val)):
        bad = tokens[int(np.flatnonzero(~np.isfinite(val))[0])]
        raise FormatError(
            f"{path}:{lineno}: missing or non-finite feature value {excerpt(bad)}; set "
            "data.missing='impute' to impute such values and add missing-indicator features"
        )
    return idx, np.where(np.isfinite(val), val, np.nan)


def _parse_slowly(tokens: list[str], path: str, lineno: int) -> np.ndarray:
    """Token by token: `[index, value, index, value, ...]`, missing values as NaN."""
    out = []
    for tok in tokens:
        i, sep, v = tok.partition(":")
        try:
            if not sep or ":" in v:
                raise ValueError
            index = int(i)
            value = np.nan if v.lower() in _MISSING_TOKENS else float(v)
        except ValueError:
            raise FormatError(
                f"{path}:{lineno}: expected 'index:value' with an integer index >= 1 and a "
                f"number, got {excerpt(tok)}"
            ) from None
        out += [index, value]
    return np.asarray(out, np.float64)


class _LineAt:
    """The line number of the line starting at byte `offset`, counted only when an error
    message is formatted: a shard read from the middle of a file does not know it."""

    def __init__(self, path: str, offset: int):
        self.path, self.offset = path, offset

    def __format__(self, spec: str) -> str:
        with open(self.path, "rb") as f:
            count, left = 1, self.offset
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                count, left = count + chunk.count(b"\n"), left - len(chunk)
        return format(count, spec)


def _data_part(raw: bytes) -> bytes:
    """A line without its `# comment` and surrounding whitespace."""
    return raw.split(b"#", 1)[0].strip()


def _qid_of(raw: bytes) -> bytes | None:
    tokens = _data_part(raw).split(None, 2)
    return tokens[1][4:] if len(tokens) > 1 and tokens[1].startswith(b"qid:") else None


def _start_of_line(f: BinaryIO, pos: int) -> int:
    """The offset where the line holding byte `pos` starts."""
    end = pos
    while end > 0:
        start = max(0, end - (1 << 16))
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _qid_before(f: BinaryIO, pos: int) -> bytes | None:
    """The `qid` of the last data line that starts before byte `pos` (None if none)."""
    while pos > 0:
        start = _start_of_line(f, pos - 1)
        f.seek(start)
        line = f.readline()
        if _data_part(line):
            return _qid_of(line)
        pos = start
    return None


def _qid_shard_lines(f: BinaryIO, path: str, index: int, count: int) -> Iterator[tuple]:
    """`(line number, raw line)` of the queries that shard `index` of `count` owns.

    The file is cut into `count` byte ranges; a query belongs to the range holding the start
    of its first line. A shard seeks to its range and reads nothing before it but the line
    that tells whether its first lines continue an earlier shard's query; after its range it
    reads only to the end of its last query.
    """
    size = os.fstat(f.fileno()).st_size
    begin, end = size * index // count, size * (index + 1) // count
    previous = _qid_before(f, begin) if begin > 0 else None
    if begin > 0:
        f.seek(begin - 1)
        f.readline()  # to the first line that starts at or after `begin`
    offset, current, started = f.tell(), None, False
    for raw in bounded_lines(f, path, numbered=False):
        here, offset = offset, offset + len(raw)
        if not _data_part(raw):
            continue
        qid = _qid_of(raw)
        if not started:
            if previous is not None and qid in (previous, None):
                continue  # the rest of a query that an earlier shard owns (and checks)
            if here >= end:
                return
            current, started = qid, True
        elif qid is not None and qid != current:
            if here >= end:
                return
            current = qid
        yield _LineAt(path, here), raw


def read(
    path: str,
    *,
    group_file: str | None = None,
    num_features: int | None = None,
    label_range: tuple[float, float] | None = None,
    missing: str = "reject",
    shard: tuple[int, int] = (0, 1),
) -> RankingDataset:
    """Reads a LibSVM ranking file, or one shard of its queries.

    Args:
      path: the data file.
      group_file: a `.query` file giving list sizes when lines have no `qid:`; if None and
        `path + ".query"` exists it is used.
      num_features: feature count; indices above it raise. None infers the largest index.
      label_range: `(low, high)`; a label outside raises. None accepts any finite label.
      missing: `"reject"` raises on `NULL`, `NaN` or `Inf` feature values; `"impute"` reads
        them as NaN for `transforms.fit_transform` to impute.
      shard: `(index, count)`: read only the `index`-th of `count` contiguous blocks of
        queries, so each process of a multi-process job parses only its own data. With
        `qid:` lines a shard seeks to its byte range of the file and reads nothing before
        it; with a group file it skips the lines before its block unparsed. Concatenating
        the shards in order gives the whole file.

    Returns:
      The lists, in file order, with `qid`s (or group numbers) as `query_ids`.

    Raises:
      FormatError: a line that does not parse, with `path:line` and the offending token;
        lines of one `qid` that are not contiguous; group sizes that do not match the lines.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"data.missing={missing!r}; valid: {list(MISSING_POLICIES)}")
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {shard}: expected (index, count) with 0 <= index < count")
    if group_file is None and os.path.exists(path + ".query"):
        group_file = path + ".query"
    group_sizes = read_group_file(group_file) if group_file else None
    parser = _Parser(path, num_features, label_range, missing)
    with open_binary(path) as f:
        if group_sizes is None:
            lines = (
                _qid_shard_lines(f, path, index, count)
                if count > 1
                else enumerate(bounded_lines(f, path), 1)
            )
            for lineno, raw in lines:
                parser.add(lineno, raw)
            if parser.n == 0 and count == 1:
                raise FormatError(f"{path}: no data lines")
            if parser.n and not parser.qids:
                raise FormatError(
                    f"{path}: lines have no 'qid:' and there is no group file ({path}.query)"
                )
            group_sizes = np.asarray(parser.sizes, np.int64)
            query_ids = np.asarray(parser.qids)
        else:
            first, last = shard_block(group_sizes, index, count)
            total = int(group_sizes.sum())
            lo, hi = int(group_sizes[:first].sum()), int(group_sizes[:last].sum())
            to_the_end = last == len(group_sizes)  # then extra lines must raise
            data_line = 0
            for lineno, raw in enumerate(bounded_lines(f, path), 1):
                if not _data_part(raw):
                    continue
                if data_line >= hi and not to_the_end:
                    break  # the rest of the file belongs to later shards
                if data_line >= lo:
                    parser.add(lineno, raw)
                data_line += 1
            if parser.qids:
                raise FormatError(f"{path}: has qid: fields and a group file {group_file}; use one")
            if data_line == 0:
                raise FormatError(f"{path}: no data lines")
            if data_line != (total if to_the_end else hi):
                raise FormatError(
                    f"{group_file}: group sizes sum to {total}, but {path} has "
                    f"{'' if to_the_end else 'only '}{data_line} lines"
                )
            group_sizes = group_sizes[first:last]
            query_ids = np.arange(first, last)
    return parser.dataset(group_sizes, query_ids)


class _Parser:
    """Accumulates parsed lines into typed buffers."""

    def __init__(self, path, num_features, label_range, missing):
        self.path, self.num_features = path, num_features
        self.label_range, self.missing = label_range, missing
        self.labels = array("f")
        self.rows, self.cols, self.vals = array("q"), array("i"), array("f")
        self.qids: list[str] = []
        self.sizes: list[int] = []
        self.seen: set[str] = set()
        self.max_index = 0
        self.n = 0

    def add(self, lineno, raw: bytes) -> None:
        path = self.path
        # Comments may hold any bytes (document titles, URLs): only the data part is decoded.
        try:
            line = raw.split(b"#", 1)[0].decode("ascii").strip()
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}:{lineno}: non-ASCII byte {raw[e.start]:#04x} before any '#' comment"
            ) from None
        if not line:
            return
        tokens = line.split()
        try:
            label = float(tokens[0])
        except ValueError:
            label = np.nan
        if not np.isfinite(label) or abs(label) > _FLOAT32_MAX:
            raise FormatError(
                f"{path}:{lineno}: expected a numeric label first, got {excerpt(tokens[0])}"
            )
        if self.label_range is not None and not (
            self.label_range[0] <= label <= self.label_range[1]
        ):
            raise FormatError(
                f"{path}:{lineno}: label {tokens[0]} is outside data.label_range="
                f"{tuple(self.label_range)} (graded relevance is >= 0 unless "
                "data.label_range says otherwise)"
            )
        feats = tokens[1:]
        if feats and feats[0].startswith("qid:"):
            if self.n and not self.qids:
                raise FormatError(f"{path}:{lineno}: 'qid:' here, but not on the lines before")
            qid = feats[0][4:]
            feats = feats[1:]
            if not self.qids or self.qids[-1] != qid:
                if qid in self.seen:
                    raise FormatError(
                        f"{path}:{lineno}: lines of qid {qid} are not contiguous; "
                        "sort the file by qid"
                    )
                self.seen.add(qid)
                self.qids.append(qid)
                self.sizes.append(0)
            self.sizes[-1] += 1
        elif self.qids:
            raise FormatError(f"{path}:{lineno}: expected 'qid:<id>' after the label")
        if feats:
            idx, val = _parse_features(feats, path, lineno, self.num_features, self.missing)
            self.max_index = max(self.max_index, int(idx.max()))
            self.rows.extend([self.n] * len(idx))
            self.cols.frombytes((idx - 1).astype(np.int32).tobytes())
            self.vals.frombytes(val.astype(np.float32).tobytes())
        self.labels.append(label)
        self.n += 1

    def dataset(self, group_sizes: np.ndarray, query_ids: np.ndarray) -> RankingDataset:
        width = self.num_features or self.max_index
        if self.num_features and self.n and self.max_index < self.num_features:
            logging.warning(
                "%s: feature indices reach %d but data.num_features=%d: features %d-%d are "
                "0 on every line (narrower data than configured?)",
                self.path,
                self.max_index,
                self.num_features,
                self.max_index + 1,
                self.num_features,
            )
        features = np.zeros([self.n, width], np.float32)
        features[np.frombuffer(self.rows, np.int64), np.frombuffer(self.cols, np.int32)] = (
            np.frombuffer(self.vals, np.float32)
        )
        return from_groups(
            features,
            np.frombuffer(self.labels, np.float32).copy(),
            group_sizes,
            query_ids=query_ids,
            feature_names=tuple(str(i + 1) for i in range(width)),
            source=self.path,
        )
