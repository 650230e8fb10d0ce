"""Data sources, chosen by `config.data.source`, split and transformed for training.

`load(config.data)` returns train/valid/test `RankingDataset`s with feature transforms fitted
on the training split only. In a multi-process job each process loads only its shards of
the queries (`load(..., shards=...)`), and the transform is fitted on all shards. Sources:

* `synthetic`: the embedded default world (`synthetic.py`), split by query.
* `libsvm`: LibSVM/LETOR files (`libsvm.py`); `valid_file` empty splits validation lists off
  the training file by query. A shard reads only its byte range of each file.
* `judgments`: a query-product judgments CSV (`judgments.py`), split by query.

The synthetic world is generated, and a CSV's queries are not contiguous in the file, so for
those two every process builds or reads the whole table and keeps its shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from rankjax.data import judgments, libsvm, lists, synthetic, tokens
from rankjax.data.lists import FeatureTransform, RankingDataset

SOURCES = ("synthetic", "libsvm", "judgments")
SPLITS = ("train", "valid", "test")


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


@dataclasses.dataclass(frozen=True)
class Splits:
    """Transformed train/valid/test lists and the transform fitted on train.

    With sharded loading, `train`, `valid` and `test` hold this process's shards, joined,
    and `train_shards` the training lists of each of them.
    """

    train: RankingDataset
    valid: RankingDataset
    test: RankingDataset
    transform: FeatureTransform
    train_shards: tuple[RankingDataset, ...] = ()

    def __getitem__(self, name: str) -> RankingDataset:
        return getattr(self, name)


def _split(dataset: RankingDataset, cfg: Mapping[str, Any], seed: int) -> dict[str, RankingDataset]:
    """By query: k-fold (`num_folds`, `fold`, `valid_fraction`) or by `split` fractions."""
    if cfg.get("num_folds"):
        return lists.split_folds(
            dataset,
            int(cfg["num_folds"]),
            int(cfg.get("fold", 0)),
            float(cfg.get("valid_fraction", 0.1)),
            seed,
        )
    if not cfg.get("split"):
        raise ValueError("data needs split=(train, valid, test) fractions or num_folds")
    fr = tuple(cfg["split"])
    if len(fr) != 3:
        raise ValueError(f"data.split must be (train, valid, test) fractions, got {fr}")
    return lists.split_by_query(dataset, dict(zip(SPLITS, fr, strict=True)), seed)


def _offset_labels(dataset: RankingDataset, offset: float) -> RankingDataset:
    return dataset if not offset else dataclasses.replace(dataset, labels=dataset.labels + offset)


def read_splits(
    cfg: Mapping[str, Any], shard: tuple[int, int] = (0, 1)
) -> dict[str, RankingDataset]:
    """The train/valid/test lists of `cfg` (= `config.data`) as read, before transforms.

    Args:
      cfg: the data config.
      shard: `(index, count)`: only the `index`-th of `count` blocks of each split's
        queries (see `lists.shard_block`); `(0, 1)` is everything.
    """
    source = cfg["source"]
    seed = int(cfg.get("split_seed", 0))
    index, count = shard
    if source == "synthetic":
        world = synthetic.make_world(**dict(cfg.get("world", {})))
        parts = _split(world.judgments, cfg, seed)
        return {k: lists.shard(d, index, count) for k, d in parts.items()}
    label_range = tuple(cfg["label_range"]) if cfg.get("label_range") else None
    missing = cfg.get("missing", "reject")
    if source == "libsvm":
        nf = int(cfg.get("num_features", 0)) or None
        if nf is None and count > 1:
            raise ValueError(
                f"data.num_features must be set when the data is read in {count} shards: "
                "each shard would infer its own feature count"
            )
        kw = dict(label_range=label_range, missing=missing, shard=shard)
        train = libsvm.read(cfg["train_file"], num_features=nf, **kw)
        nf = nf or train.num_features
        test = libsvm.read(cfg["test_file"], num_features=nf, **kw)
        if cfg.get("valid_file"):
            valid = libsvm.read(cfg["valid_file"], num_features=nf, **kw)
        else:
            vf = float(cfg.get("valid_fraction", 0.1))
            parts = lists.split_by_query(train, {"train": 1 - vf, "valid": vf}, seed)
            train, valid = parts["train"], parts["valid"]
        return {"train": train, "valid": valid, "test": test}
    if source == "judgments":
        table = judgments.read(
            cfg["file"],
            query_column=cfg["query_column"],
            label_column=cfg["label_column"],
            item_column=cfg.get("item_column") or None,
            feature_columns=tuple(cfg.get("feature_columns", ())),
            text_columns=tuple(cfg.get("text_columns", ())),
            encoding=cfg.get("encoding", "utf-8"),
            label_range=label_range,
            missing=missing,
        )
        if cfg.get("max_queries"):  # a small slice for quick runs (`:runlocal`)
            table = table.select(np.arange(min(int(cfg["max_queries"]), table.num_lists)))
        parts = _split(_offset_labels(table, float(cfg.get("label_offset", 0.0))), cfg, seed)
        return {k: lists.shard(d, index, count) for k, d in parts.items()}
    raise ValueError(f"data.source={source!r}; valid: {list(SOURCES)}")


def _query_hashes(query_ids: np.ndarray) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(str(q).encode(), digest_size=8).digest(), "little") >> 1
            for q in query_ids
        ],
        np.int64,
    )


def _check_files_sorted(
    cfg: Mapping[str, Any], local: dict[str, RankingDataset], gather: lists.Gather
) -> None:
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
            raise libsvm.FormatError(
                f"{path}: lines of qid {named[0] if len(named) else '(held by another process)'}"
                f" are not contiguous ({len(repeated)} such qids); sort the file by qid"
            )


# pad_multiple: token axes of a batch are cut to its longest sequence rounded up to this.
TEXT_KEYS = {"checkpoint", "item_columns", "max_length", "encoding", "pad_multiple"}


def tokenized(dataset: RankingDataset, text_cfg: Mapping[str, Any]) -> RankingDataset:
    """Adds token arrays (`tokens.add_tokens`) with the tokenizer of `text_cfg.checkpoint`."""
    from rankjax import text  # needs the optional tokenizers package: rankjax[text]

    unknown = sorted(set(text_cfg) - TEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown config key data.text.{unknown[0]}; valid: {sorted(TEXT_KEYS)}")
    folder = text_cfg.get("checkpoint") or text.default_checkpoint()
    tokenizer = text.cached_tokenizer(folder, int(text_cfg.get("max_length", 0)) or None)
    return tokens.add_tokens(
        dataset,
        tokenizer,
        tuple(text_cfg["item_columns"]),
        text_cfg.get("encoding", "pairs"),
    )


def load(
    cfg: Mapping[str, Any],
    *,
    shards: Sequence[int] = (0,),
    num_shards: int = 1,
    gather: lists.Gather | None = None,
) -> Splits:
    """Reads, splits and transforms the data named by `cfg` (= `config.data`).

    Missing feature values (`cfg.missing="impute"`) are filled with the training mean and
    flagged by indicator features; every split is described in the log, including its
    single-item lists and lists without a relevant item.

    Args:
      cfg: the data config.
      shards: the shards of the queries to load here (all of them by default).
      num_shards: how many shards the queries are cut into across all processes.
      gather: stacks a host array from every process (`distributed.allgather`); needed
        when other processes hold the other shards, so that the transform is fitted on
        every shard's training items and empty splits are caught everywhere at once.
    """
    raws = [read_splits(cfg, (i, num_shards)) for i in shards]
    if cfg.get("text"):
        raws = [{k: tokenized(d, cfg["text"]) for k, d in r.items()} for r in raws]
    local = {name: lists.concat([r[name] for r in raws]) for name in SPLITS}
    if cfg["source"] == "libsvm" and num_shards > 1:
        _check_files_sorted(cfg, local, gather or lists.local_only)
    counts = (gather or lists.local_only)(
        np.array([local[name].num_lists for name in SPLITS], np.int64)
    ).sum(axis=0)
    for name, count in zip(SPLITS, counts, strict=True):
        if count == 0:
            raise ValueError(f"data: the {name} split of {local['train'].source} has no lists")
    transform = lists.fit_transform(
        local["train"].features,
        tuple(cfg.get("transforms", ())),
        impute=cfg.get("missing", "reject") == "impute",
        gather=gather,
    )

    def transformed(d: RankingDataset) -> RankingDataset:
        return d.with_features(transform(d.features), transform.feature_names(d.feature_names))

    # Each shard's training lists are transformed once; `train` is their concatenation.
    train_shards = tuple(transformed(r["train"]) for r in raws)
    out = {}
    for name, d in local.items():
        n_missing = int(np.isnan(d.features).sum())
        logging.info(
            "data %s (%s%s): %s%s",
            name,
            d.source,
            f", shards {list(shards)} of {num_shards}" if num_shards > 1 else "",
            lists.describe(d),
            f"; {n_missing} missing feature values imputed" if n_missing else "",
        )
        out[name] = lists.concat(train_shards) if name == "train" else transformed(d)
    return Splits(**out, transform=transform, train_shards=train_shards)
