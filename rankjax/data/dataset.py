"""The in-memory ranking dataset: items stored flat, list boundaries in offsets.

Every reader returns a `RankingDataset`: items stored flat (`[num_items, ...]`) with list
boundaries in `list_offsets`, so lists of any length cost no padding until a batch is made
(`batches.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RankingDataset:
    """Lists of items with features and graded labels, stored flat.

    Attributes:
      features: `[num_items, num_features]` float32.
      labels: `[num_items]` float32 graded relevance.
      list_offsets: `[num_lists + 1]` int64; list `i` holds items
        `list_offsets[i]:list_offsets[i + 1]`.
      query_ids: `[num_lists]` identifiers of the lists (str or int).
      feature_names: one name per feature column.
      extras: per-item arrays `[num_items, ...]` carried along (e.g. `oracle`, `item_id`).
      source: where the data came from, used in error messages.
    """

    features: np.ndarray
    labels: np.ndarray
    list_offsets: np.ndarray
    query_ids: np.ndarray
    feature_names: tuple[str, ...]
    extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self):
        n = self.labels.shape[0]
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(
                f"{self.source}: features must be [num_items={n}, num_features], "
                f"got shape {self.features.shape}"
            )
        if self.list_offsets[0] != 0 or self.list_offsets[-1] != n:
            raise ValueError(
                f"{self.source}: list_offsets must run from 0 to num_items={n}, "
                f"got {self.list_offsets[0]}..{self.list_offsets[-1]}"
            )
        if np.any(np.diff(self.list_offsets) < 0):
            raise ValueError(f"{self.source}: list_offsets must be non-decreasing")
        if len(self.query_ids) != self.num_lists:
            raise ValueError(
                f"{self.source}: {len(self.query_ids)} query ids for {self.num_lists} lists"
            )
        if len(self.feature_names) != self.num_features:
            raise ValueError(
                f"{self.source}: {len(self.feature_names)} feature names for "
                f"{self.num_features} features"
            )
        for key, value in self.extras.items():
            if value.shape[0] != n:
                raise ValueError(f"{self.source}: extra {key!r} has {value.shape[0]} rows, not {n}")

    @property
    def num_lists(self) -> int:
        return len(self.list_offsets) - 1

    @property
    def num_items(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    @property
    def list_sizes(self) -> np.ndarray:
        """`[num_lists]` number of items in each list."""
        return np.diff(self.list_offsets)

    def item_list_index(self) -> np.ndarray:
        """`[num_items]` the index of the list each item belongs to."""
        return np.repeat(np.arange(self.num_lists), self.list_sizes)

    def select(self, list_indices: np.ndarray) -> RankingDataset:
        """Returns the lists `list_indices` (in that order) as a new dataset."""
        list_indices = np.asarray(list_indices, dtype=np.int64)
        sizes = self.list_sizes[list_indices]
        starts = self.list_offsets[list_indices]
        items = _ranges(starts, sizes)
        return dataclasses.replace(
            self,
            features=self.features[items],
            labels=self.labels[items],
            list_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            query_ids=self.query_ids[list_indices],
            extras={k: v[items] for k, v in self.extras.items()},
        )

    def with_features(
        self, features: np.ndarray, feature_names: Sequence[str] | None = None
    ) -> RankingDataset:
        """Returns a copy with the feature matrix (and, if its width changes, names) replaced."""
        return dataclasses.replace(
            self,
            features=features.astype(np.float32),
            feature_names=tuple(feature_names or self.feature_names),
        )


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(start, start + size)` for each pair, vectorised."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros([0], np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    return np.arange(total, dtype=np.int64) + offsets


def from_groups(
    features: np.ndarray,
    labels: np.ndarray,
    group_sizes: Sequence[int],
    *,
    query_ids: Sequence | None = None,
    feature_names: Sequence[str] | None = None,
    extras: Mapping[str, np.ndarray] | None = None,
    source: str = "<memory>",
) -> RankingDataset:
    """Builds a dataset from flat items and the size of each consecutive group."""
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if query_ids is None:
        query_ids = np.arange(len(sizes))
    if feature_names is None:
        feature_names = tuple(f"f{i}" for i in range(features.shape[1]))
    return RankingDataset(
        features=np.asarray(features, np.float32),
        labels=np.asarray(labels, np.float32),
        list_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        query_ids=np.asarray(query_ids),
        feature_names=tuple(feature_names),
        extras=dict(extras or {}),
        source=source,
    )


def concat(datasets: Sequence[RankingDataset]) -> RankingDataset:
    """The lists of `datasets`, in order, as one dataset (same features and extras)."""
    first = datasets[0]
    if len(datasets) == 1:
        return first
    sizes = np.concatenate([d.list_sizes for d in datasets])
    return dataclasses.replace(
        first,
        features=np.concatenate([d.features for d in datasets]),
        labels=np.concatenate([d.labels for d in datasets]),
        list_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        query_ids=np.concatenate([d.query_ids for d in datasets]),
        extras={k: np.concatenate([d.extras[k] for d in datasets]) for k in first.extras},
    )


def shard_block(list_sizes: np.ndarray, index: int, count: int) -> tuple[int, int]:
    """Lists `[first, last)` of shard `index` of `count`: contiguous, about equal items."""
    starts = np.concatenate([[0], np.cumsum(list_sizes)[:-1]])
    owner = np.minimum(starts * count // max(int(np.sum(list_sizes)), 1), count - 1)
    return int(np.searchsorted(owner, index)), int(np.searchsorted(owner, index + 1))


def shard(dataset: RankingDataset, index: int, count: int) -> RankingDataset:
    """Shard `index` of `count` of the lists (see `shard_block`)."""
    first, last = shard_block(dataset.list_sizes, index, count)
    return dataset.select(np.arange(first, last))


def describe(dataset: RankingDataset) -> str:
    """One line on what a split holds, including the lists that need a policy."""
    sizes = dataset.list_sizes
    relevant = np.zeros(dataset.num_lists)
    np.add.at(relevant, dataset.item_list_index(), dataset.labels >= 1)
    return (
        f"{dataset.num_lists} lists, {dataset.num_items} items (list size "
        f"{sizes.min() if len(sizes) else 0}-{sizes.max(initial=0)}); "
        f"{int((sizes == 1).sum())} single-item lists (no pairs to learn from; kept), "
        f"{int((relevant == 0).sum())} lists without a relevant item (metrics: "
        "the evals entry's no_relevant)"
    )
