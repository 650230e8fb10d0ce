"""Ranking metrics with exact aggregation over lists and batches.

Per-list values come from rax (list axis last, `where` masks padding); this module adds what
an evaluation needs on top of them:

* **names** such as `"ndcg@10"`, `"mrr"`, `"recall@20"`, `"rmse"` (see `METRICS`);
* **lists without a relevant item** (label >= 1), where NDCG, MRR, MAP and recall are
  undefined, follow one documented convention, `no_relevant`:
  `"zero"` counts them as 0 (TF-Ranking's and rax's behaviour), `"one"` counts them as 1
  (trec_eval-style NDCG of an empty ideal ranking), `"skip"` leaves them out of the mean;
  DCG and precision are defined there (0) and always counted;
* **lists with no valid item** (all padding) are never counted;
* **exact aggregation**: every metric is kept as a sum and a count over lists (RMSE over
  items), so a mean over many batches equals the mean over all lists; never a mean of
  batch means.

Conventions: gain `2^label - 1` (`gain="exp2"`, or `"linear"`: `label`), discount
`1 / log2(rank + 1)`, relevant means label >= 1, precision@k divides by the number of items
retrieved (`min(k, list size)`), and tied scores keep their order in the list (stable sort):
shuffle items within lists if their order carries information. Within-query pairwise
accuracy counts, over pairs with different labels, the fraction ordered correctly (a score
tie counts 1/2); lists without such a pair are left out.

Example:

>>> import numpy as np
>>> evaluate(np.array([[3.0, 2.0, 1.0]]), np.array([[0.0, 1.0, 0.0]]), metrics=("mrr",))
{'mrr': 0.5}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import rax

Array = jax.Array

# Name -> (rax metric, is undefined without relevant items).
_RAX_METRICS: dict[str, tuple[Callable, bool]] = {
    "ndcg": (rax.ndcg_metric, True),
    "dcg": (rax.dcg_metric, False),
    "mrr": (rax.mrr_metric, True),
    "map": (rax.ap_metric, True),
    "recall": (rax.recall_metric, True),
    "precision": (rax.precision_metric, False),
}
METRICS = tuple(_RAX_METRICS) + ("rmse", "pairwise_accuracy")
NO_RELEVANT = ("zero", "one", "skip")
GAINS = {"exp2": lambda label: jnp.power(2.0, label) - 1.0, "linear": lambda label: label}
DEFAULT_METRICS = ("ndcg@5", "ndcg@10", "mrr", "map")

_NAME = re.compile(r"^([a-z_]+)(?:@(\d+))?$")


def parse_metric(name: str) -> tuple[str, int | None]:
    """Splits `"ndcg@10"` into `("ndcg", 10)`; raises with the valid names if unknown."""
    m = _NAME.match(name.strip().lower())
    kind, k = (m.group(1), m.group(2)) if m else (None, None)
    if (
        kind not in METRICS
        or k is not None
        and (kind in ("rmse", "pairwise_accuracy") or int(k) < 1)
    ):
        raise ValueError(
            f"unknown metric {name!r}; valid: {', '.join(METRICS)}, the ranking ones "
            "optionally with a cutoff @k, k >= 1 (e.g. 'ndcg@10')"
        )
    return kind, None if k is None else int(k)


def _check_conventions(no_relevant: str, gain: str) -> None:
    if no_relevant not in NO_RELEVANT:
        raise ValueError(f"no_relevant={no_relevant!r}; valid: {NO_RELEVANT}")
    if gain not in GAINS:
        raise ValueError(f"gain={gain!r}; valid: {tuple(GAINS)}")


def _pairwise_accuracy(scores: Array, labels: Array, where: Array) -> tuple[Array, Array]:
    """Per list: (correctly ordered pairs, pairs with different labels)."""
    valid = where[..., :, None] & where[..., None, :]
    higher = (labels[..., :, None] > labels[..., None, :]) & valid
    s_diff = scores[..., :, None] - scores[..., None, :]
    correct = jnp.where(s_diff > 0, 1.0, jnp.where(s_diff == 0, 0.5, 0.0))
    return jnp.sum(correct * higher, axis=(-2, -1)), jnp.sum(higher, axis=(-2, -1))


def batch_sums(
    scores: Array,
    labels: Array,
    *,
    where: Array | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    no_relevant: str = "zero",
    gain: str = "exp2",
    min_list_size: int = 1,
) -> dict[str, tuple[Array, Array]]:
    """Sums and counts of every metric over the lists of one batch (jittable).

    Args:
      scores: `[..., list_size]` predicted scores.
      labels: `[..., list_size]` graded relevance.
      where: `[..., list_size]` bool, False on padding; None means all valid.
      metrics: metric names, e.g. `("ndcg@10", "mrr")`.
      no_relevant: convention for lists without a relevant item (module docstring).
      gain: `"exp2"` or `"linear"` gain for (N)DCG.
      min_list_size: the ranking metrics (all but RMSE and pairwise accuracy) count only
        lists with at least this many valid items.

    Returns:
      `{name: (sum, count)}`, each a scalar; the metric is `sum / count` (RMSE: the square
      root of it), and sums and counts add up exactly across batches.
    """
    _check_conventions(no_relevant, gain)
    scores = jnp.asarray(scores, jnp.float32)
    labels = jnp.asarray(labels, jnp.float32)
    where = jnp.ones(scores.shape, bool) if where is None else jnp.asarray(where, bool)
    list_valid = jnp.any(where, axis=-1)
    has_relevant = jnp.any(where & (labels >= 1), axis=-1)
    out = {}
    for name in metrics:
        kind, k = parse_metric(name)
        if kind == "rmse":
            err = jnp.where(where, scores - labels, 0.0)
            out[name] = (jnp.sum(err**2), jnp.sum(where).astype(jnp.float32))
            continue
        if kind == "pairwise_accuracy":
            correct, pairs = _pairwise_accuracy(scores, labels, where)
            counted = list_valid & (pairs > 0)
            values = correct / jnp.maximum(pairs, 1.0)
        else:
            fn, needs_relevant = _RAX_METRICS[kind]
            kwargs = {"gain_fn": GAINS[gain]} if kind in ("ndcg", "dcg") else {}
            values = fn(scores, labels, where=where, topn=k, reduce_fn=None, **kwargs)
            counted = list_valid & (jnp.sum(where, axis=-1) >= min_list_size)
            if needs_relevant:
                if no_relevant == "one":
                    values = jnp.where(has_relevant, values, 1.0)
                elif no_relevant == "skip":
                    counted = counted & has_relevant
                else:
                    values = jnp.where(has_relevant, values, 0.0)
        out[name] = (
            jnp.sum(jnp.where(counted, values, 0.0)),
            jnp.sum(counted).astype(jnp.float32),
        )
    return out


class MetricAccumulator:
    """Adds `batch_sums` results in float64 and turns them into metric values."""

    def __init__(self):
        self._sums: dict[str, list[float]] = {}

    def update(self, sums: Mapping[str, tuple]) -> None:
        for name, (s, c) in sums.items():
            acc = self._sums.setdefault(name, [0.0, 0.0])
            acc[0] += float(s)
            acc[1] += float(c)

    def counts(self) -> dict[str, int]:
        """How many lists (items, for RMSE) each metric was averaged over."""
        return {name: int(c) for name, (_, c) in self._sums.items()}

    def result(self) -> dict[str, float]:
        """`{name: value}`; NaN for a metric that counted nothing (e.g. every list skipped)."""
        out = {}
        for name, (s, c) in self._sums.items():
            value = s / c if c > 0 else float("nan")
            out[name] = float(np.sqrt(value)) if parse_metric(name)[0] == "rmse" else float(value)
        return out


@functools.partial(jax.jit, static_argnames=("metrics", "no_relevant", "gain", "min_list_size"))
def _jit_batch_sums(scores, labels, where, metrics, no_relevant, gain, min_list_size):
    return batch_sums(
        scores,
        labels,
        where=where,
        metrics=metrics,
        no_relevant=no_relevant,
        gain=gain,
        min_list_size=min_list_size,
    )


def evaluate(
    scores,
    labels,
    *,
    where=None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    no_relevant: str = "zero",
    gain: str = "exp2",
    min_list_size: int = 1,
) -> dict[str, float]:
    """Ranking metrics averaged over lists.

    Args:
      scores: `[num_lists, list_size]` (or `[..., list_size]`) predicted scores; must be
        finite on valid items.
      labels: same shape, graded relevance (relevant means >= 1).
      where: same shape, bool, False on padding; None means every item is valid.
      metrics: names such as `"ndcg@10"`, `"dcg@5"`, `"mrr"`, `"map"`, `"recall@20"`,
        `"precision@5"`, `"rmse"`, `"pairwise_accuracy"`.
      no_relevant: `"zero"`, `"one"` or `"skip"`: how lists without a relevant item count
        for NDCG, MRR, MAP and recall.
      gain: `"exp2"` (`2^label - 1`) or `"linear"` (`label`) for (N)DCG.
      min_list_size: ranking metrics count only lists of at least this many valid items.

    Returns:
      `{name: value}` as Python floats.
    """
    scores = np.asarray(scores, np.float32)
    labels = np.asarray(labels, np.float32)
    where = np.ones(scores.shape, bool) if where is None else np.asarray(where, bool)
    if not (scores.shape == labels.shape == where.shape):
        raise ValueError(
            f"scores {scores.shape}, labels {labels.shape} and where {where.shape} must have "
            "the same shape [num_lists, list_size]"
        )
    bad = where & ~np.isfinite(scores)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"scores must be finite on valid items; scores{list(i)} = {scores[i]}")
    acc = MetricAccumulator()
    acc.update(
        _jit_batch_sums(scores, labels, where, tuple(metrics), no_relevant, gain, min_list_size)
    )
    return acc.result()
