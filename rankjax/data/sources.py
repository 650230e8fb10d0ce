"""Where data comes from: one registry of sources, chosen by `config.data.source`.

A source reads either ranking lists (`read_splits`: train/valid/test `RankingDataset`s, as
read, before transforms) or one user-item interaction log (`read_log`: `Interactions`, split
later by the task's protocol). The synthetic shop gives both.

List sources:

* `synthetic`: the embedded default world (`synthetic.py`), split by query.
* `libsvm`: LibSVM/LETOR files (`libsvm.py`); `valid_file` empty splits validation lists off
  the training file by query. A shard reads only its byte range of each file.
* `judgments`: a query-product judgments CSV (`judgments.py`), split by query.

Log sources: `synthetic` (the world's event log), `user_item` (one `user item` pair per
line, or one user's `user item item ...` history per line, in time order: `data.layout`),
`atomic` (RecBole atomic files, with `.item`/`.user` side features).

The synthetic world is generated, and a CSV's queries are not contiguous in the file, so for
those two every process builds or reads the whole table and keeps its shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from rankjax.data import interactions, judgments, libsvm, splits, synthetic
from rankjax.data.dataset import RankingDataset, shard
from rankjax.data.textio import FormatError
from rankjax.data.transforms import Gather

Lists = dict[str, RankingDataset]


def shared_dir() -> str:
    """The folder of shared datasets: `$RANKJAX_SHARED`, else `../shared` beside the checkout."""
    env = os.environ.get("RANKJAX_SHARED")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (
        os.path.join(os.getcwd(), "..", "shared"),
        os.path.join(here, *[".."] * 3, "shared"),
    ):
        if os.path.isdir(candidate):
            return os.path.normpath(candidate)
    return os.path.normpath(os.path.join(os.getcwd(), "..", "shared"))


def _synthetic_lists(cfg: Mapping[str, Any], part: tuple[int, int]) -> Lists:
    world = synthetic.make_world(**dict(cfg.get("world", {})))
    parts = splits.split(world.judgments, cfg, int(cfg.get("split_seed", 0)))
    return {k: shard(d, *part) for k, d in parts.items()}


# Graded relevance is never negative: NDCG's gain 2^label - 1 would turn a negative label
# into a negative gain and NDCG below 0. Data with other targets sets data.label_range.
DEFAULT_LABEL_RANGE = (0.0, float("inf"))


def _label_range(cfg: Mapping[str, Any]) -> tuple[float, float]:
    return tuple(cfg["label_range"]) if cfg.get("label_range") else DEFAULT_LABEL_RANGE


def _libsvm_lists(cfg: Mapping[str, Any], part: tuple[int, int]) -> Lists:
    nf = int(cfg.get("num_features", 0)) or None
    if nf is None and part[1] > 1:
        raise ValueError(
            f"data.num_features must be set when the data is read in {part[1]} shards: "
            "each shard would infer its own feature count"
        )
    kw = dict(label_range=_label_range(cfg), missing=cfg.get("missing", "reject"), shard=part)
    train = libsvm.read(cfg["train_file"], num_features=nf, **kw)
    nf = nf or train.num_features
    test = libsvm.read(cfg["test_file"], num_features=nf, **kw)
    if cfg.get("valid_file"):
        valid = libsvm.read(cfg["valid_file"], num_features=nf, **kw)
    else:
        vf = float(cfg.get("valid_fraction", 0.1))
        parts = splits.split_by_query(
            train, {"train": 1 - vf, "valid": vf}, int(cfg.get("split_seed", 0))
        )
        train, valid = parts["train"], parts["valid"]
    return {"train": train, "valid": valid, "test": test}


def _judgments_lists(cfg: Mapping[str, Any], part: tuple[int, int]) -> Lists:
    table = judgments.read(
        cfg["file"],
        query_column=cfg["query_column"],
        label_column=cfg["label_column"],
        item_column=cfg.get("item_column") or None,
        feature_columns=tuple(cfg.get("feature_columns", ())),
        text_columns=tuple(cfg.get("text_columns", ())),
        encoding=cfg.get("encoding", "utf-8"),
        label_range=_label_range(cfg),
        missing=cfg.get("missing", "reject"),
    )
    if cfg.get("max_queries"):  # a small slice for quick runs (`:runlocal`)
        table = table.select(np.arange(min(int(cfg["max_queries"]), table.num_lists)))
    offset = float(cfg.get("label_offset", 0.0))
    if offset:
        table = dataclasses.replace(table, labels=table.labels + offset)
    parts = splits.split(table, cfg, int(cfg.get("split_seed", 0)))
    return {k: shard(d, *part) for k, d in parts.items()}


def _synthetic_log(cfg: Mapping[str, Any]) -> interactions.Interactions:
    return interactions.from_synthetic(synthetic.make_world(**dict(cfg.get("world", {}))))


def _user_item_log(cfg: Mapping[str, Any]) -> interactions.Interactions:
    return interactions.read_user_item(cfg["file"], cfg.get("layout", "auto"))


def _atomic_log(cfg: Mapping[str, Any]) -> interactions.Interactions:
    return interactions.read_atomic(
        cfg["inter_file"], cfg.get("item_file") or None, cfg.get("user_file") or None
    )


class Source(NamedTuple):
    """How one `data.source` reads: ranking lists, an interaction log, or both."""

    lists: Callable[[Mapping[str, Any], tuple[int, int]], Lists] | None = None
    log: Callable[[Mapping[str, Any]], interactions.Interactions] | None = None


SOURCES: dict[str, Source] = {
    "synthetic": Source(lists=_synthetic_lists, log=_synthetic_log),
    "libsvm": Source(lists=_libsvm_lists),
    "judgments": Source(lists=_judgments_lists),
    "user_item": Source(log=_user_item_log),
    "atomic": Source(log=_atomic_log),
}
LIST_SOURCES = tuple(k for k, s in SOURCES.items() if s.lists)
LOG_SOURCES = tuple(k for k, s in SOURCES.items() if s.log)


def read_splits(cfg: Mapping[str, Any], part: tuple[int, int] = (0, 1)) -> Lists:
    """The train/valid/test lists of `cfg` (= `config.data`) as read, before transforms.

    Args:
      cfg: the data config.
      part: `(index, count)`: only the `index`-th of `count` blocks of each split's
        queries (see `dataset.shard_block`); `(0, 1)` is everything.
    """
    source = SOURCES.get(cfg["source"])
    if source is None or source.lists is None:
        raise ValueError(
            f"data.source={cfg['source']!r} gives no ranking lists; valid: {list(LIST_SOURCES)}"
        )
    return source.lists(cfg, part)


def read_log(cfg: Mapping[str, Any]) -> interactions.Interactions:
    """The interaction log of `cfg` (= `config.data`), its first `max_users` users when set."""
    source = SOURCES.get(cfg["source"])
    if source is None or source.log is None:
        raise ValueError(
            f"data.source={cfg['source']!r} gives no interaction log; valid: {list(LOG_SOURCES)}"
        )
    return interactions.first_users(source.log(cfg), int(cfg.get("max_users", 0)))


def _query_hashes(query_ids: np.ndarray) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(str(q).encode(), digest_size=8).digest(), "little") >> 1
            for q in query_ids
        ],
        np.int64,
    )


def check_files_sorted(cfg: Mapping[str, Any], local: Lists, gather: Gather) -> None:
    """Raises if a `qid` of a sharded LibSVM file appears in more than one shard: the file
    is not sorted by qid (a shard's reader only sees its own part of the file)."""
    files = {cfg["test_file"]: [local["test"]]}
    if cfg.get("valid_file"):
        files[cfg["valid_file"]] = [local["valid"]]
        files[cfg["train_file"]] = [local["train"]]
    else:
        files[cfg["train_file"]] = [local["train"], local["valid"]]
    for path, parts in files.items():
        ids = np.concatenate([d.query_ids for d in parts])
        mine = _query_hashes(ids)
        counts = gather(np.array([len(mine)], np.int64))[:, 0]
        padded = np.zeros(int(counts.max()), np.int64)
        padded[: len(mine)] = mine
        every = np.concatenate([h[:k] for h, k in zip(gather(padded), counts, strict=True)])
        values, times = np.unique(every, return_counts=True)
        repeated = values[times > 1]
        if len(repeated):
            named = ids[np.isin(mine, repeated)]
            raise FormatError(
                f"{path}: lines of qid {named[0] if len(named) else '(held by another process)'}"
                f" are not contiguous ({len(repeated)} such qids); sort the file by qid"
            )
