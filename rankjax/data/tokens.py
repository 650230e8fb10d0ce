"""Token arrays for text rankers: tokenized once per dataset, trimmed per batch.

`add_tokens` turns a dataset's query strings (its `query_ids`) and item texts (`text:*`
extras, e.g. product titles) into integer extras, which batches then carry like any other
per-item array:

  tokens        [num_items, T] int32  `[CLS] query [SEP] item text [SEP]` (cross-encoders)
  token_types   [num_items, T] int8   0 for the query segment, 1 for the item segment
  query_tokens  [num_items, Tq] int32 `[CLS] query [SEP]`, the same for a list's items
  item_tokens   [num_items, Ti] int32 `[CLS] item text [SEP]` (bi-encoders)

Id 0 is `[PAD]` (as in every BERT vocabulary; a vocabulary that pads elsewhere has its pad
id swapped with 0, `data.tokenizer.swap_pad`), so a token's mask is `ids != 0`.
`trim_token_axes` cuts a batch's token axis to its longest sequence, rounded up to a
bucket width: together with length-bucketed training batches (`batches.TrainBatches`) this
keeps the padding a model computes on low while XLA compiles only a few shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rankjax.data.dataset import RankingDataset

ENCODINGS = ("pairs", "separate", "both")
TOKEN_KEYS = ("tokens", "token_types", "query_tokens", "item_tokens")


def item_texts(dataset: RankingDataset, columns: Sequence[str]) -> list[str]:
    """The text of each item: its `text:<column>` extras joined by spaces."""
    missing = [c for c in columns if f"text:{c}" not in dataset.extras]
    if missing:
        have = [k.removeprefix("text:") for k in dataset.extras if k.startswith("text:")]
        raise ValueError(
            f"{dataset.source}: data.text.item_columns {missing} are not text columns of the "
            f"data (it has {have}; list them in data.text_columns)"
        )
    parts = [dataset.extras[f"text:{c}"] for c in columns]
    return [" ".join(str(p[i]) for p in parts) for i in range(dataset.num_items)]


def query_texts(dataset: RankingDataset) -> list[str]:
    """The query string of each item (its list's query id)."""
    return [str(q) for q in np.repeat(dataset.query_ids, dataset.list_sizes)]


def add_tokens(
    dataset: RankingDataset, tokenizer: Any, item_columns: Sequence[str], encoding: str
) -> RankingDataset:
    """Returns `dataset` with token extras (module docstring) added.

    Args:
      dataset: lists whose query ids are query strings and whose extras hold item texts.
      tokenizer: a `rankjax.text.Tokenizer` (its `max_length` truncates).
      item_columns: the text columns that make an item's text.
      encoding: `"pairs"` (cross-encoder input), `"separate"` (bi-encoder input) or
        `"both"`.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"data.text.encoding={encoding!r}; valid: {list(ENCODINGS)}")
    queries, items = query_texts(dataset), item_texts(dataset, item_columns)
    extras = dict(dataset.extras)
    if encoding in ("pairs", "both"):
        enc = tokenizer.encode(queries, items)
        extras["tokens"] = enc.input_ids
        extras["token_types"] = enc.token_type_ids.astype(np.int8)
    if encoding in ("separate", "both"):
        extras["query_tokens"] = tokenizer.encode(queries).input_ids
        extras["item_tokens"] = tokenizer.encode(items).input_ids
    return dataclasses.replace(dataset, extras=extras)


def list_token_lengths(dataset: RankingDataset) -> np.ndarray:
    """`[num_lists]` the longest token sequence of each list (0 without token extras): the
    key by which training batches are bucketed."""
    keys = [k for k in ("tokens", "item_tokens") if k in dataset.extras]
    if not keys or dataset.num_items == 0:
        return np.zeros(dataset.num_lists, np.int64)
    per_item = np.max([(dataset.extras[k] != 0).sum(axis=1) for k in keys], axis=0)
    starts = dataset.list_offsets[:-1]
    longest = np.maximum.reduceat(per_item, np.minimum(starts, dataset.num_items - 1))
    return np.where(dataset.list_sizes > 0, longest, 0)


def bucket_width(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple` (at least `multiple`)."""
    return max(multiple, -(-length // multiple) * multiple)


def trim_token_axes(batch: Mapping[str, np.ndarray], multiple: int = 16) -> dict[str, np.ndarray]:
    """Cuts the last axis of each token array to the batch's longest sequence, rounded up
    to `multiple`: `[..., T]` -> `[..., T']`. Other arrays are returned unchanged."""
    out = dict(batch)
    for key in ("tokens", "query_tokens", "item_tokens"):
        if key not in batch:
            continue
        ids = batch[key]
        used = np.flatnonzero((ids != 0).reshape(-1, ids.shape[-1]).any(axis=0))
        width = min(ids.shape[-1], bucket_width(int(used[-1]) + 1 if used.size else 1, multiple))
        out[key] = ids[..., :width]
        if key == "tokens" and "token_types" in batch:
            out["token_types"] = batch["token_types"][..., :width]
    return out


def padding_stats(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Fraction of real tokens among the positions a model computes on, per token key."""
    return {
        key: float((batch[key] != 0).mean())
        for key in ("tokens", "query_tokens", "item_tokens")
        if key in batch
    }
