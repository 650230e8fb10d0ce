"""Feature transforms fitted on the training split: imputation, log1p, rank-Gauss, z-score.

Fitted once on training items (across processes through `gather`), saved with the run as
`feature_transform.json` and applied unchanged to every split and at serving time.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable, Mapping, Sequence

import numpy as np


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
