"""Reads, splits, tokenizes and transforms the data a ranking run trains and evaluates on.

`load(config.data)` returns train/valid/test `RankingDataset`s with feature transforms
fitted on the training split only. In a multi-process job each process loads only its
shards of the queries (`load(..., shards=...)`), and the transform is fitted on all shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from rankjax.data import sources, tokens
from rankjax.data.dataset import RankingDataset, concat, describe
from rankjax.data.splits import SPLITS
from rankjax.data.tokenizer import cached_tokenizer, checkpoint_folder
from rankjax.data.transforms import FeatureTransform, Gather, fit_transform, local_only


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


# pad_multiple: token axes of a batch are cut to its longest sequence rounded up to this;
# pack_length: a cross-encoder's pairs are packed into rows of this many tokens
# (`data.packing`; 0: padded lists).
TEXT_KEYS = {"checkpoint", "item_columns", "max_length", "encoding", "pad_multiple", "pack_length"}


def tokenized(dataset: RankingDataset, text_cfg: Mapping[str, Any]) -> RankingDataset:
    """Adds token arrays (`tokens.add_tokens`) with the tokenizer of `text_cfg.checkpoint`."""
    unknown = sorted(set(text_cfg) - TEXT_KEYS)
    if unknown:
        raise ValueError(f"unknown config key data.text.{unknown[0]}; valid: {sorted(TEXT_KEYS)}")
    folder = checkpoint_folder(text_cfg.get("checkpoint"))
    tokenizer = cached_tokenizer(folder, int(text_cfg.get("max_length", 0)) or None)
    return tokens.add_tokens(
        dataset,
        tokenizer,
        tuple(text_cfg["item_columns"]),
        text_cfg.get("encoding", "pairs"),
    )


def same_tokens(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two `data.text` sections tokenize alike: the same tokenizer file (by
    content, wherever each checkpoint lies), padding id and `max_length`."""

    def identity(text_cfg: Mapping[str, Any]) -> tuple:
        folder = checkpoint_folder(text_cfg.get("checkpoint"))
        tokenizer = cached_tokenizer(folder, int(text_cfg.get("max_length", 0)) or None)
        with open(tokenizer.path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return digest, tokenizer.pad_id, tokenizer.max_length

    return identity(a) == identity(b)


def load(
    cfg: Mapping[str, Any],
    *,
    shards: Sequence[int] = (0,),
    num_shards: int = 1,
    gather: Gather | None = None,
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
    raws = [sources.read_splits(cfg, (i, num_shards)) for i in shards]
    if cfg.get("text"):
        raws = [{k: tokenized(d, cfg["text"]) for k, d in r.items()} for r in raws]
    local = {name: concat([r[name] for r in raws]) for name in SPLITS}
    if cfg["source"] == "libsvm" and num_shards > 1:
        sources.check_files_sorted(cfg, local, gather or local_only)
    counts = (gather or local_only)(
        np.array([local[name].num_lists for name in SPLITS], np.int64)
    ).sum(axis=0)
    for name, count in zip(SPLITS, counts, strict=True):
        if count == 0:
            raise ValueError(f"data: the {name} split of {local['train'].source} has no lists")
    transform = fit_transform(
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
            describe(d),
            f"; {n_missing} missing feature values imputed" if n_missing else "",
        )
        out[name] = concat(train_shards) if name == "train" else transformed(d)
    return Splits(**out, transform=transform, train_shards=train_shards)
