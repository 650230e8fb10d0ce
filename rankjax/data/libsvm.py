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
from rankjax.data.textio import FormatError, decoded_lines, open_binary

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
                    f"{path}:{lineno}: expected a group size (positive integer), got {line!r}"
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
    if not (np.all(idx >= 1) and np.all(idx == np.floor(idx))):
        bad = tokens[int(np.flatnonzero((idx < 1) | (idx != np.floor(idx)))[0])]
        raise FormatError(
            f"{path}:{lineno}: expected 'index:value' with an integer index >= 1, got {bad!r}"
        )
    idx = idx.astype(np.int64)
    limit = num_features or MAX_FEATURES
    if idx.max() > limit:
        raise FormatError(
            f"{path}:{lineno}: feature index {idx.max()} exceeds "
            + (
                f"num_features={num_features}"
                if num_features
                else f"{MAX_FEATURES}; set data.num_features if that is really meant"
            )
        )
    if len(np.unique(idx)) != len(idx):
        raise FormatError(f"{path}:{lineno}: a feature index appears twice on the line")
    too_big = np.isfinite(val) & (np.abs(val) > _FLOAT32_MAX)
    if np.any(too_big):
        bad = tokens[int(np.flatnonzero(too_big)[0])]
        raise FormatError(f"{path}:{lineno}: value {bad!r} does not fit in float32")
    if missing == "reject" and not np.all(np.isfinite(val)):
        bad = tokens[int(np.flatnonzero(~np.isfinite(val))[0])]
        raise FormatError(
            f"{path}:{lineno}: missing or non-finite feature value {bad!r}; set "
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
                f"number, got {tok!r}"
            ) from None
        out += [index, value]
    return np.asarray(out, np.float64)


def read(
    path: str,
    *,
    group_file: str | None = None,
    num_features: int | None = None,
    label_range: tuple[float, float] | None = None,
    missing: str = "reject",
) -> lists.RankingDataset:
    """Reads a LibSVM ranking file.

    Args:
      path: the data file.
      group_file: a `.query` file giving list sizes when lines have no `qid:`; if None and
        `path + ".query"` exists it is used.
      num_features: feature count; indices above it raise. None infers the largest index.
      label_range: `(low, high)`; a label outside raises. None accepts any finite label.
      missing: `"reject"` raises on `NULL`, `NaN` or `Inf` feature values; `"impute"` reads
        them as NaN for `lists.fit_transform` to impute.

    Returns:
      The lists, in file order, with `qid`s (or group numbers) as `query_ids`.

    Raises:
      FormatError: a line that does not parse, with `path:line` and the offending token;
        lines of one `qid` that are not contiguous; group sizes that do not match the lines.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"data.missing={missing!r}; valid: {list(MISSING_POLICIES)}")
    if group_file is None and os.path.exists(path + ".query"):
        group_file = path + ".query"
    labels = array("f")
    rows, cols, vals = array("q"), array("i"), array("f")
    qids: list[str] = []
    sizes: list[int] = []
    seen: set[str] = set()
    max_index = 0
    n = 0
    with open_binary(path) as f:
        # Comments may hold any bytes (document titles, URLs): only the data part is decoded.
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.split(b"#", 1)[0].decode("ascii").strip()
            except UnicodeDecodeError as e:
                raise FormatError(
                    f"{path}:{lineno}: non-ASCII byte {raw[e.start]:#04x} before any '#' comment"
                ) from None
            if not line:
                continue
            tokens = line.split()
            try:
                label = float(tokens[0])
            except ValueError:
                label = np.nan
            if not np.isfinite(label) or abs(label) > _FLOAT32_MAX:
                raise FormatError(
                    f"{path}:{lineno}: expected a numeric label first, got {tokens[0]!r}"
                )
            if label_range is not None and not label_range[0] <= label <= label_range[1]:
                raise FormatError(
                    f"{path}:{lineno}: label {tokens[0]} is outside data.label_range="
                    f"{tuple(label_range)}"
                )
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
                idx, val = _parse_features(feats, path, lineno, num_features, missing)
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
