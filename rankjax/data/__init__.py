"""Data sources, chosen by `config.data.source`, split and transformed for training.

`load(config.data)` returns train/valid/test `RankingDataset`s with feature transforms fitted
on the training split only. Sources:

* `synthetic`: the embedded default world (`synthetic.py`), split by query.
* `libsvm`: LibSVM/LETOR files (`libsvm.py`); `valid_file` empty splits validation lists off
  the training file by query.
* `judgments`: a query-product judgments CSV (`judgments.py`), split by query.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from rankjax.data import judgments, libsvm, lists, synthetic
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
    """Transformed train/valid/test lists and the transform fitted on train."""

    train: RankingDataset
    valid: RankingDataset
    test: RankingDataset
    transform: FeatureTransform

    def __getitem__(self, name: str) -> RankingDataset:
        return getattr(self, name)


def _fractions(cfg: Mapping[str, Any]) -> dict[str, float]:
    fr = tuple(cfg["split"])
    if len(fr) != 3:
        raise ValueError(f"data.split must be (train, valid, test) fractions, got {fr}")
    return dict(zip(SPLITS, fr, strict=True))


def read_splits(cfg: Mapping[str, Any]) -> dict[str, RankingDataset]:
    """The train/valid/test lists of `cfg` (= `config.data`) as read, before transforms."""
    source = cfg["source"]
    seed = int(cfg.get("split_seed", 0))
    if source == "synthetic":
        world = synthetic.make_world(**dict(cfg.get("world", {})))
        return lists.split_by_query(world.judgments, _fractions(cfg), seed)
    label_range = tuple(cfg["label_range"]) if cfg.get("label_range") else None
    missing = cfg.get("missing", "reject")
    if source == "libsvm":
        nf = int(cfg.get("num_features", 0)) or None
        kw = dict(label_range=label_range, missing=missing)
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
        return lists.split_by_query(table, _fractions(cfg), seed)
    raise ValueError(f"data.source={source!r}; valid: {list(SOURCES)}")


def load(cfg: Mapping[str, Any]) -> Splits:
    """Reads, splits and transforms the data named by `cfg` (= `config.data`).

    Missing feature values (`cfg.missing="impute"`) are filled with the training mean and
    flagged by indicator features; every split is described in the log, including its
    single-item lists and lists without a relevant item.
    """
    raw = read_splits(cfg)
    for name in SPLITS:
        if raw[name].num_lists == 0:
            raise ValueError(f"data: the {name} split of {raw['train'].source} has no lists")
    transform = lists.fit_transform(
        raw["train"].features,
        tuple(cfg.get("transforms", ())),
        impute=cfg.get("missing", "reject") == "impute",
    )
    out = {}
    for name, d in raw.items():
        n_missing = int(np.isnan(d.features).sum())
        logging.info(
            "data %s (%s): %s%s",
            name,
            d.source,
            lists.describe(d),
            f"; {n_missing} missing feature values imputed" if n_missing else "",
        )
        out[name] = d.with_features(transform(d.features), transform.feature_names(d.feature_names))
    return Splits(**out, transform=transform)
