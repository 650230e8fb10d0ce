"""Deterministic splits by query: fractions, k folds; stable across processes and reruns."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from rankjax.data.dataset import RankingDataset


def query_hash_fraction(query_ids: np.ndarray, seed: int) -> np.ndarray:
    """Maps each query id to a stable pseudo-random number in [0, 1).

    Stable across processes and Python versions (unlike `hash`), so every host of a
    multi-process job and every rerun puts a query in the same split.
    """
    out = np.empty(len(query_ids), np.float64)
    for i, qid in enumerate(query_ids):
        digest = hashlib.blake2b(f"{seed}:{qid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def split_by_query(
    dataset: RankingDataset, fractions: Mapping[str, float], seed: int
) -> dict[str, RankingDataset]:
    """Splits lists into named parts by query, deterministically.

    Args:
      dataset: the lists to split.
      fractions: e.g. `{"train": 0.8, "valid": 0.1, "test": 0.1}`; must sum to 1.
      seed: changes the assignment; the same seed always gives the same split.

    Returns:
      One dataset per name. All lists of one query id go to the same part.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    u = query_hash_fraction(dataset.query_ids, seed)
    bounds = np.cumsum(list(fractions.values()))
    bounds[-1] = 1.0 + 1e-12
    part = np.searchsorted(bounds, u, side="right")
    return {name: dataset.select(np.flatnonzero(part == i)) for i, name in enumerate(fractions)}


def split_folds(
    dataset: RankingDataset, num_folds: int, fold: int, valid_fraction: float, seed: int
) -> dict[str, RankingDataset]:
    """Query-grouped k-fold split: fold `fold` is the test split.

    Each query goes to one of `num_folds` folds by a stable hash of `(seed, query id)`; of
    the other folds' queries, `valid_fraction` (by a second hash) are held out for
    validation (model selection, calibration) and the rest train. Rotating `fold` over
    `0..num_folds-1` with one seed tests every query exactly once.

    Returns:
      `{"train", "valid", "test"}` datasets.
    """
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(
            f"data.num_folds={num_folds}, data.fold={fold}: need num_folds >= 2 and "
            f"0 <= fold < num_folds"
        )
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"data.valid_fraction={valid_fraction} must be in [0, 1)")
    u = query_hash_fraction(dataset.query_ids, seed)
    v = query_hash_fraction(dataset.query_ids, seed + 7919)  # independent of the fold hash
    test = np.floor(u * num_folds).astype(np.int64) == fold
    valid = ~test & (v < valid_fraction)
    return {
        "train": dataset.select(np.flatnonzero(~test & ~valid)),
        "valid": dataset.select(np.flatnonzero(valid)),
        "test": dataset.select(np.flatnonzero(test)),
    }


SPLITS = ("train", "valid", "test")


def split(dataset: RankingDataset, cfg: Mapping[str, Any], seed: int) -> dict[str, RankingDataset]:
    """Splits by query as `cfg` (= `config.data`) says: k folds (`num_folds`, `fold`,
    `valid_fraction`) or `split=(train, valid, test)` fractions."""
    if cfg.get("num_folds"):
        return split_folds(
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
    return split_by_query(dataset, dict(zip(SPLITS, fr, strict=True)), seed)
