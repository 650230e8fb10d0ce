"""CTR-style evaluation of a pointwise ranker: AUC, impression-weighted GAUC and log-loss.

A recommender log holds positives only; the impressions are built the usual way for
offline CTR evaluation: each held-out interaction (label 1) is shown beside
`negatives_per_positive` items the user never interacted with (label 0), drawn uniformly
with a fixed seed. On those impressions:

* `auc`: the probability that a random positive impression scores above a random negative
  one, over all users together (ties count one half: the Mann–Whitney statistic with
  mid-ranks);
* `gauc`: each user's AUC weighted by the user's number of impressions (Zhou et al., 2018,
  the Deep Interest Network paper), over users with both labels; it measures the
  within-user ordering a ranker is used for, which global AUC mixes with between-user
  calibration;
* `logloss`: the mean binary cross-entropy of `sigmoid(score)` — meaningful for a model
  trained pointwise (BCE); a softmax-trained model's logits are not probabilities.
"""

from __future__ import annotations

import numpy as np

from rankjax.evaluators import retrieval
from rankjax.types import PairScoreFn


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC of `scores [n]` for binary `labels [n]`; ties count one half.

    Raises:
      ValueError: `labels` lacks positives or negatives (AUC is undefined).
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        raise ValueError(f"AUC needs both labels; got {pos} positives and {neg} negatives")
    return float((_mid_ranks(scores)[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _mid_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` ascending, tied values sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of `sigmoid(logits)` against `labels` (stable form)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """`{"auc", "gauc", "logloss", "impressions", "gauc_users"}` of flat impressions.

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


def impressions(
    users: np.ndarray,
    positives: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    num_items: int,
    negatives_per_positive: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`(users [n], items [n, 1 + k])`: each held-out `(user, positive)` and `k` items the
    user never interacted with (in `seen`), drawn uniformly; column 0 is the positive."""
    negatives = retrieval.sample_negatives(
        users, seen, num_items, negatives_per_positive, seed=seed
    )
    return np.asarray(users), np.concatenate([np.asarray(positives)[:, None], negatives], 1)


def evaluate(
    pair_score_fn: PairScoreFn, users: np.ndarray, items: np.ndarray, users_per_chunk: int = 512
) -> dict[str, float]:
    """`metrics` of a pair scorer on `impressions(...)` (column 0 positive, others 0)."""
    scores = [
        np.asarray(pair_score_fn(users[s : s + users_per_chunk], items[s : s + users_per_chunk]))
        for s in range(0, len(users), users_per_chunk)
    ]
    got = np.concatenate(scores) if scores else np.zeros(items.shape)
    labels = np.zeros(items.shape)
    labels[:, 0] = 1
    return metrics(got, labels, np.broadcast_to(np.asarray(users)[:, None], items.shape))
