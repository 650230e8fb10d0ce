"""Ranking metrics with exact aggregation over lists and batches.

Per-list values come from rax (list axis last, `where` masks padding); this module adds what
an evaluation needs on top of them:

* **names** such as `"ndcg@10"`, `"mrr"`, `"recall@20"`, `"rmse"`, parsed for every
  evaluator by `parse_metric` (`LIST_NAMES`, `TOP_K_NAMES`);
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

Lists may be ragged (`evaluate([[3.0, 1.0], [0.5]], [[1, 0], [1]])`); `per_query=True`
also returns each list's values, which `paired_test` compares between two rankers (paired
t-test or bootstrap, `rankjax.significance`); `write_trec_run` and `write_trec_qrels` write
the rankings for trec_eval and friends (`rankjax.trec`).

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

# Re-exported: the metrics API in one place.
from rankjax import trec
from rankjax.significance import paired_test as paired_test
from rankjax.trec import write_qrels as write_trec_qrels  # noqa: F401
from rankjax.trec import write_run as write_trec_run  # noqa: F401

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
METRICS = tuple(_RAX_METRICS) + ("hit", "rmse", "pairwise_accuracy")
NO_RELEVANT = ("zero", "one", "skip")
GAINS = {"exp2": lambda label: jnp.power(2.0, label) - 1.0, "linear": lambda label: label}
DEFAULT_METRICS = ("ndcg@5", "ndcg@10", "mrr", "map")

# Metric names of each family: kind -> its cutoff `@k` is "optional", "required" or "none".
# Ranking lists (graded labels, rax):
LIST_NAMES = {
    **dict.fromkeys(_RAX_METRICS, "optional"),
    "hit": "optional",
    "rmse": "none",
    "pairwise_accuracy": "none",
}
# Recommendation: each user's held-out items ranked among the catalog or sampled negatives
# (binary relevance, `top_k_metric`), and the per-user AUC:
TOP_K_NAMES = {
    **dict.fromkeys(("recall", "ndcg", "mrr", "hit", "precision"), "required"),
    "auc": "none",
}
# Ranking one held-out item against sampled negatives (one relevant item per row):
SAMPLED_NAMES = {k: TOP_K_NAMES[k] for k in ("hit", "ndcg", "mrr")}

_NAME = re.compile(r"^([a-z_]+)(?:@(\d+))?$")


def _valid_names(names: Mapping[str, str]) -> str:
    rules = {"optional": "optionally @k", "required": "with @k", "none": "without a cutoff"}
    groups = {}
    for kind, rule in names.items():
        groups.setdefault(rule, []).append(kind)
    return "; ".join(f"{', '.join(kinds)} ({rules[rule]})" for rule, kinds in groups.items())


def parse_metric(name: str, names: Mapping[str, str] = LIST_NAMES) -> tuple[str, int | None]:
    """Splits `"ndcg@10"` into `("ndcg", 10)` (`"mrr"` into `("mrr", None)`).

    Args:
      name: a metric name.
      names: the family's names and cutoff rules (`LIST_NAMES`, `TOP_K_NAMES`).

    Raises:
      ValueError: an unknown kind, a missing or unwanted cutoff, or k < 1; the message lists
        the valid names.
    """
    m = _NAME.match(name.strip().lower())
    kind, k = (m.group(1), m.group(2)) if m else (None, None)
    rule = names.get(kind)
    if (
        rule is None
        or (rule == "none" and k is not None)
        or (rule == "required" and k is None)
        or (k is not None and int(k) < 1)
    ):
        raise ValueError(f"unknown metric {name!r}; valid: {_valid_names(names)}, k >= 1")
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


def per_list(
    scores: Array,
    labels: Array,
    *,
    where: Array | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    no_relevant: str = "zero",
    gain: str = "exp2",
    min_list_size: int = 1,
) -> dict[str, tuple[Array, Array]]:
    """Every metric's value per list, and whether the list counts (jittable).

    Args: as `batch_sums`.

    Returns:
      `{name: (values [...], counted [...] bool)}` over the lists (the leading axes). RMSE's
      value is the list's sum of squared errors and its count the list's valid items.
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
            out[name] = (jnp.sum(err**2, axis=-1), jnp.sum(where, axis=-1))
            continue
        if kind == "pairwise_accuracy":
            correct, pairs = _pairwise_accuracy(scores, labels, where)
            out[name] = (correct / jnp.maximum(pairs, 1.0), list_valid & (pairs > 0))
            continue
        if kind == "hit":  # a relevant item among the first k
            found = rax.precision_metric(scores, labels, where=where, topn=k, reduce_fn=None)
            values, needs_relevant = (found > 0).astype(jnp.float32), True
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
        out[name] = (values, counted)
    return out


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
    lists = per_list(
        scores,
        labels,
        where=where,
        metrics=metrics,
        no_relevant=no_relevant,
        gain=gain,
        min_list_size=min_list_size,
    )
    out = {}
    for name, (values, counted) in lists.items():
        if parse_metric(name)[0] == "rmse":  # over items: counted holds each list's items
            out[name] = (jnp.sum(values), jnp.sum(counted).astype(jnp.float32))
        else:
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
def _jit_per_list(scores, labels, where, metrics, no_relevant, gain, min_list_size):
    return per_list(
        scores,
        labels,
        where=where,
        metrics=metrics,
        no_relevant=no_relevant,
        gain=gain,
        min_list_size=min_list_size,
    )


def pad_lists(
    scores: Sequence[Sequence[float]], labels: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged lists (one 1-D sequence per query) padded into `[num_lists, longest]` arrays.

    Returns:
      `(scores, labels, where)`; `where` is False on padding.

    Raises:
      ValueError: a list whose scores and labels differ in length (named by its index).
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score lists but {len(labels)} label lists")
    longest = max((len(v) for v in scores), default=0)
    out = np.zeros((3, len(scores), max(longest, 1)), np.float32)
    for i, (s, y) in enumerate(zip(scores, labels, strict=True)):
        if len(s) != len(y):
            raise ValueError(f"list {i}: {len(s)} scores but {len(y)} labels")
        out[0, i, : len(s)], out[1, i, : len(s)], out[2, i, : len(s)] = s, y, 1
    return out[0], out[1], out[2].astype(bool)


def evaluate(
    scores,
    labels,
    *,
    where=None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    no_relevant: str = "zero",
    gain: str = "exp2",
    min_list_size: int = 1,
    per_query: bool = False,
) -> dict[str, float] | tuple[dict[str, float], dict[str, np.ndarray]]:
    """Ranking metrics averaged over lists.

    Args:
      scores: `[num_lists, list_size]` (or `[..., list_size]`) predicted scores, or ragged
        lists: a sequence of 1-D score lists of any lengths; must be finite on valid items.
      labels: the same shape (or the same ragged lengths), graded relevance (relevant
        means >= 1).
      where: same shape, bool, False on padding; None means every item is valid (ragged
        lists need none).
      metrics: names such as `"ndcg@10"`, `"dcg@5"`, `"mrr"`, `"map"`, `"recall@20"`,
        `"precision@5"`, `"hit@10"`, `"rmse"`, `"pairwise_accuracy"`.
      no_relevant: `"zero"`, `"one"` or `"skip"`: how lists without a relevant item count
        for NDCG, MRR, MAP, recall and hit.
      gain: `"exp2"` (`2^label - 1`) or `"linear"` (`label`) for (N)DCG.
      min_list_size: ranking metrics count only lists of at least this many valid items.
      per_query: also return each list's values.

    Returns:
      `{name: value}` as Python floats; with `per_query`, also `{name: [num_lists]}` float64
      per-list values (RMSE: the list's own RMSE), NaN where a list does not count (all
      padding, skipped, too short) — the input of `significance.paired_test`.
    """
    if trec.is_ragged(scores) or trec.is_ragged(labels):
        if where is not None:
            raise ValueError("ragged lists take no `where`: each list's length is its items")
        scores, labels, where = pad_lists(scores, labels)
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
    lists = _jit_per_list(scores, labels, where, tuple(metrics), no_relevant, gain, min_list_size)
    acc = MetricAccumulator()
    values = {}
    for name, (v, counted) in lists.items():
        v, counted = np.asarray(v, np.float64), np.asarray(counted)
        if parse_metric(name)[0] == "rmse":
            acc.update({name: (v.sum(), counted.sum())})
            v = np.where(counted > 0, np.sqrt(v / np.maximum(counted, 1)), np.nan)
        else:
            acc.update({name: (np.where(counted, v, 0.0).sum(), counted.sum())})
            v = np.where(counted, v, np.nan)
        values[name] = v
    return (acc.result(), values) if per_query else acc.result()


# ----------------------------------------------------------------------------- top-K metrics


def top_k_metric(kind: str, hits: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-user value of a top-K recommendation metric (binary relevance).

    Args:
      kind: "recall", "precision", "hit", "mrr" or "ndcg" (`TOP_K_NAMES`).
      hits: `[users, >= k]` bool, True where the item ranked at that position is relevant.
      num_relevant: `[users]` relevant items of each user (>= 1).
      k: the cutoff.

    Returns:
      `[users]`: recall = hits / relevant; precision = hits / k; hit = any hit; mrr = 1 /
      rank of the first hit (0 if none); ndcg = DCG / the DCG of min(relevant, k) hits, with
      discount `1 / log2(rank + 1)`.
    """
    h = hits[:, :k]
    if kind == "recall":
        return h.sum(1) / num_relevant
    if kind == "precision":
        return h.sum(1) / k
    if kind == "hit":
        return h.any(1).astype(float)
    if kind == "mrr":
        return 1.0 / np.where(h.any(1), h.argmax(1) + 1, np.inf)
    if kind == "ndcg":
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = np.cumsum(discounts)[np.minimum(num_relevant, k) - 1]
        return (h * discounts).sum(1) / ideal
    raise ValueError(f"top_k_metric kind={kind!r}; valid: {list(TOP_K_NAMES)[:-1]}")


# ----------------------------------------------------------------------------- AUC, log-loss

AUC_TIES = ("half", "against")


def auc(scores: np.ndarray, labels: np.ndarray, ties: str = "half") -> float:
    """The share of (positive, negative) pairs in which the positive scores higher.

    Args:
      scores: `[n]`.
      labels: `[n]`, positive where > 0.
      ties: a tied pair counts 1/2 (`"half"`: the Mann–Whitney statistic, CTR AUC) or 0
        (`"against"`: a held-out item tied with a negative is not ranked above it, as the
        recommendation metrics count ties).

    Raises:
      ValueError: `labels` lacks positives or negatives (AUC is undefined), or `ties` is
        unknown.
    """
    if ties not in AUC_TIES:
        raise ValueError(f"auc ties={ties!r}; valid: {list(AUC_TIES)}")
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
    pos, neg = scores[labels], np.sort(scores[~labels])
    if not len(pos) or not len(neg):
        raise ValueError(
            f"AUC needs both labels; got {len(pos)} positives and {len(neg)} negatives"
        )
    wins = np.searchsorted(neg, pos, side="left").astype(np.float64)  # negatives strictly below
    if ties == "half":
        wins = (wins + np.searchsorted(neg, pos, side="right")) / 2
    return float(wins.sum() / (len(pos) * len(neg)))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of `sigmoid(logits)` against `labels` (stable form)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def ctr_metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """`{"auc", "gauc", "logloss", "impressions", "gauc_users"}` of flat impressions.

    `auc` over all impressions (ties 1/2); `gauc` each group's (user's) AUC weighted by its
    impressions, over groups with both labels (Zhou et al., 2018); `logloss` of
    `sigmoid(score)`.

    Args:
      scores: `[n]` logits.
      labels: `[n]` 1 (clicked/interacted) or 0.
      groups: `[n]` the user of each impression.
    """
    scores, labels, groups = (np.asarray(a).reshape(-1) for a in (scores, labels, groups))
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    weighted, weight, users = 0.0, 0, 0
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[start:end]
        y = labels[rows] > 0
        if y.all() or not y.any():
            continue  # AUC undefined for this user
        weighted += auc(scores[rows], y) * len(rows)
        weight += len(rows)
        users += 1
    return {
        "auc": auc(scores, labels),
        "gauc": weighted / weight if weight else float("nan"),
        "logloss": logloss(scores, labels),
        "impressions": int(len(scores)),
        "gauc_users": users,
    }
