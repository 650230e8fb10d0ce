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

import numpy as np

from rankjax.data import lists


class FormatError(ValueError):
    """A malformed input file; the message names the file, the line and what was expected."""


def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    return open(path, encoding="utf-8", errors="strict")


def read_group_file(path: str) -> np.ndarray:
    """Reads a `.query` group file: one positive integer (a list size) per line."""
    sizes = []
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                size = int(line)
            except ValueError:
                raise FormatError(
                    f"{path}:{lineno}: expected a group size (positive integer), got {line!r}"
                ) from None
            if size < 1:
                raise FormatError(f"{path}:{lineno}: group size must be >= 1, got {size}")
            sizes.append(size)
    return np.asarray(sizes, np.int64)


def _parse_features(
    tokens: list[str], path: str, lineno: int, num_features: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Parses `["3:0.5", "7:1", ...]` into (1-based indices, values).

    The fast path lets NumPy parse the whole line; anything it cannot take goes through a
    token-by-token check that names the offending token.
    """
    try:
        numbers = np.array(" ".join(tokens).replace(":", " ").split(), dtype=np.float64)
    except ValueError:
        numbers = None
    if numbers is not None and len(numbers) == 2 * len(tokens):
        idx, val = numbers[0::2], numbers[1::2]
        if np.all(idx >= 1) and np.all(idx == np.floor(idx)):
            idx = idx.astype(np.int64)
            if num_features is not None and idx.max() > num_features:
                raise FormatError(
                    f"{path}:{lineno}: feature index {idx.max()} exceeds "
                    f"num_features={num_features}"
                )
            return idx, val
    for tok in tokens:
        i, sep, v = tok.partition(":")
        try:
            good = bool(sep) and ":" not in v and int(i) >= 1 and float(v) is not None
        except ValueError:
            good = False
        if not good:
            raise FormatError(
                f"{path}:{lineno}: expected 'index:value' with an integer index >= 1 and a "
                f"number, got {tok!r}"
            )
    raise FormatError(f"{path}:{lineno}: could not parse the features")


def read(
    path: str,
    *,
    group_file: str | None = None,
    num_features: int | None = None,
) -> lists.RankingDataset:
    """Reads a LibSVM ranking file.

    Args:
      path: the data file.
      group_file: a `.query` file giving list sizes when lines have no `qid:`; if None and
        `path + ".query"` exists it is used.
      num_features: feature count; indices above it raise. None infers the largest index.

    Returns:
      The lists, in file order, with `qid`s (or group numbers) as `query_ids`.

    Raises:
      FormatError: a line that does not parse, with `path:line` and the offending token;
        lines of one `qid` that are not contiguous; group sizes that do not match the lines.
    """
    if group_file is None and os.path.exists(path + ".query"):
        group_file = path + ".query"
    labels = array("f")
    rows, cols, vals = array("q"), array("i"), array("f")
    qids: list[str] = []
    sizes: list[int] = []
    seen: set[str] = set()
    max_index = 0
    n = 0
    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            tokens = line.split()
            try:
                label = float(tokens[0])
            except ValueError:
                raise FormatError(
                    f"{path}:{lineno}: expected a numeric label first, got {tokens[0]!r}"
                ) from None
            feats = tokens[1:]
            if feats and feats[0].startswith("qid:"):
                qid = feats[0][4:]
                feats = feats[1:]
                if not qids or qids[-1] != qid:
                    if qid in seen:
                        raise FormatError(
                            f"{path}:{lineno}: lines of qid {qid} are not contiguous; "
                            "sort the file by qid"
                        )
                    seen.add(qid)
                    qids.append(qid)
                    sizes.append(0)
                sizes[-1] += 1
            elif qids:
                raise FormatError(f"{path}:{lineno}: expected 'qid:<id>' after the label")
            if feats:
                idx, val = _parse_features(feats, path, lineno, num_features)
                max_index = max(max_index, int(idx.max()))
                rows.extend([n] * len(idx))
                cols.frombytes((idx - 1).astype(np.int32).tobytes())
                vals.frombytes(val.astype(np.float32).tobytes())
            labels.append(label)
            n += 1
    if n == 0:
        raise FormatError(f"{path}: no data lines")
    if qids and group_file:
        raise FormatError(f"{path}: has qid: fields and a group file {group_file}; use one")
    if not qids:
        if group_file is None:
            raise FormatError(
                f"{path}: lines have no 'qid:' and there is no group file ({path}.query)"
            )
        group_sizes = read_group_file(group_file)
        if group_sizes.sum() != n:
            raise FormatError(
                f"{group_file}: group sizes sum to {group_sizes.sum()}, but {path} has {n} lines"
            )
        query_ids = np.arange(len(group_sizes))
    else:
        group_sizes = np.asarray(sizes, np.int64)
        query_ids = np.asarray(qids)
    width = num_features or max_index
    features = np.zeros([n, width], np.float32)
    features[np.frombuffer(rows, np.int64), np.frombuffer(cols, np.int32)] = np.frombuffer(
        vals, np.float32
    )
    return lists.from_groups(
        features,
        np.frombuffer(labels, np.float32).copy(),
        group_sizes,
        query_ids=query_ids,
        feature_names=tuple(str(i + 1) for i in range(width)),
        source=path,
    )
