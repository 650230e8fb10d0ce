"""TREC run and qrels files, so trec_eval, pytrec_eval or ir_measures can score rankjax's
rankings (and other systems' runs can be compared with them per query).

Run line: `qid Q0 docno rank score run_name`, each query's documents by decreasing score,
ties in list order (rankjax's convention; trec_eval re-sorts ties by docno). Qrels line:
`qid 0 docno relevance`. Lists are `[num_lists, list_size]` arrays with `where` False on
padding, or ragged sequences; ids default to `q<i>` and `d<j>` (the item's index in its
list). Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rankjax import files


def is_ragged(x: Any) -> bool:
    """Whether `x` is ragged lists: a non-empty sequence of 1-D lists (arrays or Python
    lists) of any lengths, rather than one padded array."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(np.ndim(v) == 1 for v in x)


def _lists(values: Any, where: Any) -> list[np.ndarray]:
    """Each list's valid values, in list order."""
    if is_ragged(values):
        if where is not None:
            raise ValueError("ragged lists take no `where`: each list's length is its items")
        return [np.asarray(v, np.float64) for v in values]
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(
            f"expected [num_lists, list_size] values or ragged lists, got {values.shape}"
        )
    mask = np.ones(values.shape, bool) if where is None else np.asarray(where, bool)
    if mask.shape != values.shape:
        raise ValueError(f"where {mask.shape} must have the values' shape {values.shape}")
    return [row[m] for row, m in zip(values, mask, strict=True)]


def _ids(lists: list[np.ndarray], query_ids: Sequence[Any] | None, doc_ids: Any):
    """`(query ids, per list doc ids)` as strings, checked against the lists' lengths."""
    qids = [f"q{i}" for i in range(len(lists))] if query_ids is None else list(query_ids)
    if len(qids) != len(lists):
        raise ValueError(f"{len(qids)} query ids for {len(lists)} lists")
    if doc_ids is None:
        docs = [[f"d{j}" for j in range(len(v))] for v in lists]
    else:
        docs = [list(d) for d in doc_ids]
        for i, (d, v) in enumerate(zip(docs, lists, strict=True)):
            if len(d) != len(v):
                raise ValueError(f"list {i} ({qids[i]}): {len(d)} doc ids for {len(v)} items")
    for name in (str(q) for q in qids):
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"query id {name!r}: TREC ids must be non-empty, without spaces")
    return [str(q) for q in qids], [[str(x) for x in d] for d in docs]


def _write_lines(path: str, lines: Iterator[str]) -> None:
    files.write_atomic(path, "".join(line + "\n" for line in lines))


def write_run(
    path: str,
    scores: Any,
    *,
    where: Any = None,
    query_ids: Sequence[Any] | None = None,
    doc_ids: Any = None,
    run_name: str = "rankjax",
) -> None:
    """Writes a TREC run file of the lists' rankings by score.

    Args:
      path: the file to write.
      scores: `[num_lists, list_size]` scores (or ragged lists of scores).
      where: `[num_lists, list_size]` bool, False on padding (None: all valid).
      query_ids: one id per list (default `q<i>`).
      doc_ids: per list, one id per valid item (default `d<j>`).
      run_name: the run's tag (last column).
    """
    lists = _lists(scores, where)
    qids, docs = _ids(lists, query_ids, doc_ids)
    if any(c.isspace() for c in run_name) or not run_name:
        raise ValueError(f"run_name {run_name!r}: must be non-empty, without spaces")

    def lines():
        for qid, values, names in zip(qids, lists, docs, strict=True):
            order = np.argsort(-values, kind="stable")
            for rank, j in enumerate(order, start=1):
                yield f"{qid} Q0 {names[j]} {rank} {values[j]:.9g} {run_name}"

    _write_lines(path, lines())


def write_qrels(
    path: str,
    labels: Any,
    *,
    where: Any = None,
    query_ids: Sequence[Any] | None = None,
    doc_ids: Any = None,
) -> None:
    """Writes a TREC qrels file of the lists' graded labels (integers).

    Args: as `write_run`, with `labels` in place of the scores.

    Raises:
      ValueError: a label that is not a whole number (trec_eval reads integers).
    """
    lists = _lists(labels, where)
    qids, docs = _ids(lists, query_ids, doc_ids)
    for i, v in enumerate(lists):
        if len(v) and not np.all(np.isfinite(v) & (v == np.round(v))):
            raise ValueError(f"list {i} ({qids[i]}): qrels need whole-number labels, got {v}")

    def lines():
        for qid, values, names in zip(qids, lists, docs, strict=True):
            for name, label in zip(names, values, strict=True):
                yield f"{qid} 0 {name} {int(label)}"

    _write_lines(path, lines())
