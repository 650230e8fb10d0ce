"""Ranking lists: the in-memory dataset, padding to `[batch, list_size]`, splits and batches.

Every reader returns a `RankingDataset`: items stored flat (`[num_items, ...]`) with list
boundaries in `list_offsets`, so lists of any length cost no padding until a batch is made.
Batches are dicts of NumPy arrays with the list axis last but one:

  features [batch, list_size, num_features] float32
  labels   [batch, list_size] float32
  where    [batch, list_size] bool   (False on padding)

plus any per-item extras (e.g. `oracle`) padded the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import statistics
from collections.abc import Callable, Mapping, Sequence

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


# ----------------------------------------------------------------------------- splits


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


# ----------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class FeatureTransform:
    """Per-feature transforms fitted on the training split only, applied in this order.

    Attributes:
      fill: `[num_features]` value that replaces NaN (a missing value), or None when
        missing values were rejected at reading time.
      indicators: columns that had missing values in training; a 0/1 "was missing" feature
        is appended for each, so a model can tell an imputed value from a real one.
      log1p: apply `sign(x) * log1p(|x|)` (tames heavy-tailed counts and prices).
      quantiles: `[num_knots, num_features_out]` training quantiles at the probabilities
        `QUANTILE_PROBS`, or None. Each feature is mapped through its empirical CDF to a
        standard-normal score (the "rank-Gauss" transform): any monotone skew, heavy tail or
        spike of zeros becomes a bounded, roughly normal input; tied values get the mean
        score of their tie.
      mean: `[num_features_out]` subtracted after log1p, or None.
      std: `[num_features_out]` divided by after centring, or None.
    """

    fill: np.ndarray | None = None
    indicators: tuple[int, ...] = ()
    log1p: bool = False
    quantiles: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Maps `[n, num_features]` to `[n, num_features + len(indicators)]`."""
        x = np.asarray(features, np.float32)
        if self.fill is not None:
            nan = np.isnan(x)
            flags = nan[:, list(self.indicators)].astype(np.float32)
            x = np.concatenate([np.where(nan, self.fill, x), flags], axis=1)
        elif np.isnan(x).any():
            raise ValueError("features contain missing values (NaN) but imputation is off")
        if self.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        if self.quantiles is not None:
            x = gauss_rank(x, self.quantiles)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.astype(np.float32)

    def feature_names(self, names: Sequence[str]) -> tuple[str, ...]:
        return tuple(names) + tuple(f"{names[i]}_missing" for i in self.indicators)

    def to_json(self) -> dict:
        def lst(v):
            return None if v is None else np.asarray(v).tolist()

        return {
            "fill": lst(self.fill),
            "indicators": list(self.indicators),
            "log1p": self.log1p,
            "quantiles": lst(self.quantiles),
            "mean": lst(self.mean),
            "std": lst(self.std),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> FeatureTransform:
        def arr(v):
            return None if v is None else np.asarray(v, np.float32)

        return cls(
            fill=arr(d.get("fill")),
            indicators=tuple(d.get("indicators", ())),
            log1p=bool(d["log1p"]),
            quantiles=arr(d.get("quantiles")),
            mean=arr(d["mean"]),
            std=arr(d["std"]),
        )


VALID_TRANSFORMS = ("log1p", "quantile", "standardize")
# Knots of the quantile transform: 0.5% steps, plus 0.1% / 99.9% tails (normal scores +-3.09)
# beyond which values are clamped, so a value outside the training range maps to a finite
# score. 201 knots keep feature_transform.json small for wide feature sets.
QUANTILE_PROBS = np.concatenate([[0.001], np.linspace(0.005, 0.995, 199), [0.999]])
# Quantiles are fitted on at most this many training items (evenly spaced), as sklearn's
# QuantileTransformer subsamples: the knots move by far less than their 0.5% spacing.
QUANTILE_FIT_ITEMS = 1 << 16


@functools.cache
def ppf_table() -> tuple[np.ndarray, np.ndarray]:
    """The standard-normal inverse CDF tabulated on a fine grid over the knots' range."""
    probs = np.linspace(QUANTILE_PROBS[0], QUANTILE_PROBS[-1], 9_981)
    inv_cdf = statistics.NormalDist().inv_cdf
    return probs, np.array([inv_cdf(float(p)) for p in probs])


def gauss_rank(x: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Maps `[n, f]` values to normal scores through per-feature quantiles `[k, f]`.

    Each value's probability is interpolated between the knots `QUANTILE_PROBS`, then
    mapped to its normal score. Where several knots are equal (a value filling a range of
    quantiles, like the zeros of a sparse feature) interpolating from the left and from the
    right and averaging gives that value the middle of its range (its mid-rank).
    """
    probs, scores = ppf_table()
    out = np.empty(x.shape, np.float64)
    for j in range(x.shape[1]):
        q = quantiles[:, j].astype(np.float64)
        up = np.interp(x[:, j], q, QUANTILE_PROBS)
        down = -np.interp(-x[:, j], -q[::-1], -QUANTILE_PROBS[::-1])
        out[:, j] = np.interp(0.5 * (up + down), probs, scores)
    return out


Gather = Callable[[np.ndarray], np.ndarray]


def local_only(x: np.ndarray) -> np.ndarray:
    """The `gather` of a single process: `x` stacked alone, `[1, *x.shape]`."""
    return np.asarray(x)[None]


def fit_transform(
    train_features: np.ndarray,
    names: Sequence[str],
    *,
    impute: bool = False,
    gather: Gather | None = None,
) -> FeatureTransform:
    """Fits transforms on training items.

    Args:
      train_features: `[num_items, num_features]`, NaN where a value is missing.
      names: a subset of `VALID_TRANSFORMS`, applied in the order of that tuple.
      impute: replace missing values by the training mean of their feature and append
        missing-indicator features for the features that had any.
      gather: when the training items are spread over processes, stacks an array from every
        process (`[num_processes, ...]`, see `distributed.allgather`): statistics are then
        fitted on all processes' items and every process gets the same transform.
    """
    unknown = [n for n in names if n not in VALID_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown feature transform(s) {unknown}; valid: {list(VALID_TRANSFORMS)}")
    if "quantile" in names and "standardize" in names[: names.index("quantile")]:
        raise ValueError("feature transform 'quantile' must come before 'standardize'")
    gather = gather or local_only

    def total(x):
        return gather(np.asarray(x, np.float64)).sum(axis=0)

    num_items = total([len(train_features)])[0]
    t = FeatureTransform(log1p="log1p" in names)
    if impute:
        nan = np.isnan(train_features)
        counts = total((~nan).sum(axis=0))
        sums = total(np.where(nan, 0.0, train_features).sum(axis=0, dtype=np.float64))
        fill = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
        flagged = np.flatnonzero(total(nan.any(axis=0)) > 0)
        t = dataclasses.replace(t, fill=fill, indicators=tuple(int(i) for i in flagged))
    if "quantile" in names:
        sample = _quantile_sample(t(train_features), num_items, gather)
        t = dataclasses.replace(
            t, quantiles=np.quantile(sample, QUANTILE_PROBS, axis=0).astype(np.float32)
        )
    if "standardize" in names:
        x = t(train_features).astype(np.float64)
        mean = total(x.sum(axis=0)) / num_items
        std = np.sqrt(total(((x - mean) ** 2).sum(axis=0)) / num_items)
        # Constant features would divide by zero; leave them centred at 0 instead.
        std = np.where(std > 1e-12, std, 1.0)
        t = dataclasses.replace(t, mean=mean.astype(np.float32), std=std.astype(np.float32))
    return t


def _quantile_sample(x: np.ndarray, num_items: float, gather: Gather) -> np.ndarray:
    """At most `QUANTILE_FIT_ITEMS` evenly spaced items, drawn from every process in
    proportion to its items (all of them when there are fewer)."""
    take = len(x)
    if num_items > QUANTILE_FIT_ITEMS:
        take = min(len(x), -(-QUANTILE_FIT_ITEMS * len(x) // int(num_items)))
    mine = x[np.linspace(0, len(x) - 1, take).astype(np.int64)] if take else x[:0]
    counts = gather(np.array([take], np.int64))[:, 0]
    padded = np.zeros((int(counts.max()), x.shape[1]), x.dtype)
    padded[:take] = mine
    return np.concatenate([rows[:k] for rows, k in zip(gather(padded), counts, strict=True)])


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
        "eval.no_relevant)"
    )


# ----------------------------------------------------------------------------- padding


def pad_lists(
    dataset: RankingDataset,
    list_size: int,
    *,
    item_keys: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pads (or truncates) every list of `dataset` to `list_size` items.

    Args:
      dataset: the lists.
      list_size: items per padded list.
      item_keys: `[num_items]` random numbers; if given, items are ordered by them within
        each list, so lists longer than `list_size` keep a uniformly random subset
        (training). If None, items keep their order and longer lists keep their first
        `list_size` items (for evaluation use a `list_size` of at least the longest list,
        see `max_list_size`).

    Returns:
      A batch dict: `features [n, list_size, F]`, `labels [n, list_size]`,
      `where [n, list_size]` and each numeric extra `[n, list_size, ...]`; padding is zero.
    """
    n = dataset.num_lists
    sizes = dataset.list_sizes
    if item_keys is None:
        order = np.arange(dataset.num_items)
    else:
        # Sort items by (list, random key): a random permutation within every list.
        order = np.lexsort((item_keys, dataset.item_list_index()))
    pos = np.arange(list_size)
    where = pos[None, :] < np.minimum(sizes, list_size)[:, None]
    flat = dataset.list_offsets[:-1, None] + pos[None, :]
    index = order[np.where(where, flat, 0)] if dataset.num_items else np.zeros_like(flat)

    def take(a: np.ndarray) -> np.ndarray:
        if a.shape[0] == 0:
            return np.zeros((n, list_size) + a.shape[1:], a.dtype)
        out = a[index]
        mask = where.reshape(where.shape + (1,) * (a.ndim - 1))
        return np.where(mask, out, np.zeros((), a.dtype))

    batch = {"features": take(dataset.features), "labels": take(dataset.labels), "where": where}
    for key, value in dataset.extras.items():
        if value.dtype.kind in "biuf":
            batch[key] = take(value)
    return batch


def max_list_size(*datasets: RankingDataset, multiple: int = 8) -> int:
    """The longest list over `datasets`, rounded up to `multiple` (fewer recompilations)."""
    longest = max((int(d.list_sizes.max()) for d in datasets if d.num_lists), default=1)
    return int(-(-longest // multiple) * multiple)


def pad_batch_count(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Appends empty lists (`where` all False) so the leading axis is `batch_size`."""
    n = batch["where"].shape[0]
    if n > batch_size:
        raise ValueError(f"batch has {n} lists, more than batch_size={batch_size}")
    return {
        k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
    }


# ----------------------------------------------------------------------------- batches


class TrainBatches:
    """Deterministic, resumable training batches: batch `step` is a pure function of
    `(seed, stream, step)`, so a resumed run sees exactly the data an uninterrupted run sees.

    Each epoch visits every list once in a fresh random order; the last partial batch of an
    epoch is dropped. Items are shuffled within lists and long lists are subsampled.

    Args:
      dataset: the training lists.
      batch_size: lists per batch.
      list_size: items per padded list.
      seed: the training seed.
      stream: tells apart the batch streams of data shards (None: the only stream).
      lengths: `[num_lists]` a length per list (e.g. its longest token sequence); with
        `bucket_batches > 1`, each run of that many batches of the epoch's random order is
        re-sorted by it before being cut into batches (whose order is then shuffled), so a
        batch holds lists of similar length and pads less.
      bucket_batches: batches per sorted run (0 or 1: no bucketing).
    """

    def __init__(
        self,
        dataset: RankingDataset,
        batch_size: int,
        list_size: int,
        seed: int,
        stream: int | None = None,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 0,
    ):
        if dataset.num_lists == 0:
            raise ValueError(f"{dataset.source}: the training split has no lists")
        if dataset.num_lists < batch_size:
            raise ValueError(
                f"{dataset.source}: training split has {dataset.num_lists} lists, fewer than "
                f"{batch_size} per batch; lower train.batch_size"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.list_size = list_size
        self.key = [seed] if stream is None else [seed, 1 << 20, stream]
        self.steps_per_epoch = dataset.num_lists // batch_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and self.lengths.shape != (dataset.num_lists,):
            raise ValueError(
                f"lengths has shape {self.lengths.shape}, expected ({dataset.num_lists},)"
            )
        self.bucket_batches = bucket_batches
        self._epoch = -1
        self._perm = np.zeros([0], np.int64)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([*self.key, epoch])
        perm = rng.permutation(self.dataset.num_lists)
        if self.lengths is None or self.bucket_batches <= 1:
            return perm
        run = self.bucket_batches * self.batch_size
        batches = []
        for start in range(0, len(perm), run):
            chunk = perm[start : start + run]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        # Full batches in a random order; a short leftover batch goes last and is dropped.
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) < self.batch_size]
        order = rng.permutation(len(full))
        return np.concatenate([full[i] for i in order] + rest)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """Returns the batch for global training step `step`."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = self._epoch_order(epoch)
        lists = self._perm[index * self.batch_size : (index + 1) * self.batch_size]
        sizes = self.dataset.list_sizes[lists]
        keys = np.random.default_rng([*self.key, epoch, index, 1]).random(int(sizes.sum()))
        return pad_lists(self.dataset.select(lists), self.list_size, item_keys=keys)


class ShardedTrainBatches:
    """This process's rows of each global training batch when the data is sharded.

    The global batch holds `batch_size / num_shards` lists from every data shard, drawn by
    that shard's own `TrainBatches` stream; a process builds the rows of the shards it
    read, in shard order. The global batch is therefore the same whichever processes hold
    the shards: one process reading all shards builds exactly what N processes build
    together.

    Args:
      shards: the training lists of this process's shards.
      shard_ids: their indices among all `num_shards` shards.
      num_shards: shards in all processes.
      batch_size: lists per global batch (a multiple of `num_shards`).
      list_size: items per padded list.
      seed: the training seed.
      lengths: per shard, `[num_lists]` lengths for bucketing (see `TrainBatches`).
      bucket_batches: batches per length-sorted run (0: no bucketing).
    """

    def __init__(
        self,
        shards: Sequence[RankingDataset],
        shard_ids: Sequence[int],
        num_shards: int,
        batch_size: int,
        list_size: int,
        seed: int,
        lengths: Sequence[np.ndarray] | None = None,
        bucket_batches: int = 0,
    ):
        if batch_size % num_shards:
            raise ValueError(
                f"train.batch_size={batch_size} must be a multiple of the {num_shards} data "
                "shards (data.shards, by default one per process)"
            )
        self.streams = [
            TrainBatches(
                d,
                batch_size // num_shards,
                list_size,
                seed,
                None if num_shards == 1 else i,
                lengths=None if lengths is None else lengths[k],
                bucket_batches=bucket_batches,
            )
            for k, (d, i) in enumerate(zip(shards, shard_ids, strict=True))
        ]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        parts = [stream(step) for stream in self.streams]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_batches(dataset: RankingDataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Pads every list of `dataset` into full batches for evaluation, never truncating.

    Lists are grouped by length (shortest first) and each batch is padded to its longest
    list rounded up to a power of two (at least 8): long-tailed list lengths (MSLR's reach
    1,251) cost neither a full-length pad for every list nor a compilation per length.
    Aggregated metrics do not depend on the order of lists.

    Args:
      dataset: the lists to evaluate (this process's, when the data is sharded).
      batch_size: lists per batch; the last batch is filled with empty lists, which every
        metric ignores.
    """
    order = np.argsort(dataset.list_sizes, kind="stable")
    batches = []
    for start in range(0, dataset.num_lists, batch_size):
        chunk = order[start : start + batch_size]
        longest = int(dataset.list_sizes[chunk].max(initial=1))
        list_size = max(8, 1 << (longest - 1).bit_length())
        batch = pad_lists(dataset.select(chunk), list_size)
        batches.append(pad_batch_count(batch, batch_size))
    return batches


def pad_list_axis(batch: dict[str, np.ndarray], list_size: int) -> dict[str, np.ndarray]:
    """Pads the list axis (axis 1) of a padded batch to `list_size` items."""
    out = {}
    for k, v in batch.items():
        pad = [(0, 0), (0, list_size - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
        out[k] = np.pad(v, pad)
    return out
