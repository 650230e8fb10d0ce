"""Query-product judgment tables (CSV), as in ESCI, WANDS and Home Depot search data.

One row per (query, product) judgment; which columns hold the query, the product, the label,
numeric features and texts is named by the caller (the config). Rows are streamed with the
`csv` module and grouped by query in order of first appearance; rows of one query need not
be contiguous.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import numpy as np

from rankjax.data import lists
from rankjax.data.libsvm import FormatError


def _decoded_lines(f, path: str, encoding: str):
    """Decodes a binary file line by line, so a bad byte is reported with its line."""
    for lineno, raw in enumerate(f, 1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise FormatError(
                f"{path}:{lineno}: cannot decode as {encoding} ({e.reason} at byte {e.start}); "
                "set the encoding (e.g. latin-1)"
            ) from None


def read(
    path: str,
    *,
    query_column: str,
    label_column: str,
    item_column: str | None = None,
    feature_columns: Sequence[str] = (),
    text_columns: Sequence[str] = (),
    encoding: str = "utf-8",
    delimiter: str = ",",
) -> lists.RankingDataset:
    """Reads a judgments table into ranking lists, one list per distinct query.

    Args:
      path: the CSV file (with a header row).
      query_column: column identifying the query (e.g. `search_term`).
      label_column: graded relevance (numeric).
      item_column: product identifier, kept as the `item_id` extra.
      feature_columns: numeric columns used as ranking features.
      text_columns: columns kept as string extras (e.g. product titles) for text rankers.
      encoding: file encoding (Home Depot's is `latin-1`).
      delimiter: field separator.

    Returns:
      The lists; `query_ids` are the query strings.

    Raises:
      FormatError: missing columns, short rows, non-numeric labels or features, or bytes
        that do not decode, each with `path:line`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    wanted = [query_column, label_column, *feature_columns, *text_columns]
    if item_column:
        wanted.append(item_column)
    groups: dict[str, list[int]] = {}
    labels: list[float] = []
    features: list[list[float]] = []
    texts: dict[str, list[str]] = {c: [] for c in text_columns}
    items: list[str] = []
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f, path, encoding), delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise FormatError(f"{path}: empty file, expected a header row")
        missing = [c for c in wanted if c not in header]
        if missing:
            raise FormatError(f"{path}:1: missing column(s) {missing}; the header has {header}")
        col = {c: header.index(c) for c in wanted}
        row_index = 0
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) < len(header):
                raise FormatError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")

            def number(c: str, row=row, lineno=lineno) -> float:
                try:
                    v = float(row[col[c]])
                except ValueError:
                    v = math.nan
                if not math.isfinite(v):
                    raise FormatError(
                        f"{path}:{lineno}: column {c!r} must be a finite number, got "
                        f"{row[col[c]]!r}"
                    )
                return v

            labels.append(number(label_column))
            features.append([number(c) for c in feature_columns])
            for c in text_columns:
                texts[c].append(row[col[c]])
            if item_column:
                items.append(row[col[item_column]])
            groups.setdefault(row[col[query_column]], []).append(row_index)
            row_index += 1
    if row_index == 0:
        raise FormatError(f"{path}: no data rows after the header")
    order = np.concatenate([np.asarray(v, np.int64) for v in groups.values()])
    extras = {f"text:{c}": np.asarray(v, dtype=object)[order] for c, v in texts.items()}
    if item_column:
        extras["item_id"] = np.asarray(items, dtype=object)[order]
    feats = np.asarray(features, np.float32).reshape(row_index, len(feature_columns))
    return lists.from_groups(
        feats[order],
        np.asarray(labels, np.float32)[order],
        [len(v) for v in groups.values()],
        query_ids=np.asarray(list(groups), dtype=object),
        feature_names=tuple(feature_columns),
        extras=extras,
        source=path,
    )
