"""Query-product judgment tables (CSV), as in ESCI, WANDS and Home Depot search data.

One row per (query, product) judgment; which columns hold the query, the product, the label,
numeric features and texts is named by the caller (the config). Rows are streamed with the
`csv` module and grouped by query in order of first appearance; rows of one query need not
be contiguous.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence

import numpy as np

from rankjax.data.dataset import RankingDataset, from_groups
from rankjax.data.libsvm import MISSING_POLICIES
from rankjax.data.textio import FormatError, decoded_lines, excerpt, open_binary

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MISSING = {"null", "nan", "na", "none", "inf", "+inf", "-inf", "infinity", "-infinity"}


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
    label_range: tuple[float, float] | None = None,
    missing: str = "reject",
) -> RankingDataset:
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
      label_range: `(low, high)`; a label outside raises. None accepts any finite label.
      missing: `"reject"` raises on an empty, `NULL`, `NaN` or infinite feature value;
        `"impute"` reads it as NaN for `transforms.fit_transform` to impute.

    Returns:
      The lists; `query_ids` are the query strings.

    Raises:
      FormatError: missing columns, short rows, non-numeric labels or features, or bytes
        that do not decode, each with `path:line`.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"data.missing={missing!r}; valid: {list(MISSING_POLICIES)}")
    wanted = [query_column, label_column, *feature_columns, *text_columns]
    if item_column:
        wanted.append(item_column)
    groups: dict[str, list[int]] = {}
    labels: list[float] = []
    features: list[list[float]] = []
    texts: dict[str, list[str]] = {c: [] for c in text_columns}
    items: list[str] = []
    with open_binary(path) as f:
        # strict: a quote left open is an error, not a field swallowing the rest of the file.
        reader = _checked(
            csv.reader(decoded_lines(f, path, encoding), delimiter=delimiter, strict=True), path
        )
        header = next(reader, None)
        if header is None:
            raise FormatError(f"{path}: empty file, expected a header row")
        absent = [c for c in wanted if c not in header]
        if absent:
            raise FormatError(f"{path}:1: missing column(s) {absent}; the header has {header}")
        col = {c: header.index(c) for c in wanted}
        row_index = 0
        for row in reader:
            lineno = reader.line_num
            if lineno - reader.row_start > 100:  # far more lines than a quoted text spans
                raise FormatError(
                    f"{path}:{reader.row_start}: one row runs over {lineno - reader.row_start} "
                    "lines: a quote left open? (a quoted field may hold line breaks, but not "
                    "this many)"
                )
            if not row:
                continue
            if len(row) < len(header):
                raise FormatError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")

            def number(c: str, row=row, lineno=lineno, is_feature=True) -> float:
                text = row[col[c]].strip()
                try:
                    v = float(text)
                except ValueError:  # None: not a number, nor a recognised missing marker
                    v = math.nan if not text or text.lower() in _MISSING else None
                if v is not None and math.isfinite(v) and abs(v) <= _FLOAT32_MAX:
                    return v
                if v is not None and is_feature and missing == "impute":
                    return math.nan
                hint = "; set data.missing='impute' to impute it" if is_feature else ""
                raise FormatError(
                    f"{path}:{lineno}: column {c!r} must be a finite number within float32 range, "
                    f"got {excerpt(text)}{hint}"
                )

            label = number(label_column, is_feature=False)
            if label_range is not None and not label_range[0] <= label <= label_range[1]:
                raise FormatError(
                    f"{path}:{lineno}: label {label} in column {label_column!r} is outside "
                    f"data.label_range={tuple(label_range)} (graded relevance is >= 0 unless "
                    "data.label_range says otherwise)"
                )
            labels.append(label)
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
    return from_groups(
        feats[order],
        np.asarray(labels, np.float32)[order],
        [len(v) for v in groups.values()],
        query_ids=np.asarray(list(groups), dtype=object),
        feature_names=tuple(feature_columns),
        extras=extras,
        source=path,
    )


class _checked:
    """A csv reader whose `csv.Error`s (e.g. a quote still open at the end of the file)
    are `FormatError`s naming the line where the row began; `row_start` is that line."""

    def __init__(self, reader, path: str):
        self.reader, self.path, self.row_start = reader, path, 1

    def __iter__(self):
        return self

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __next__(self):
        self.row_start = self.reader.line_num + 1
        try:
            return next(self.reader)
        except csv.Error as e:
            raise FormatError(
                f"{self.path}:{self.row_start}: malformed CSV ({e}): a quote left open?"
            ) from None
