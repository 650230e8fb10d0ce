"""CTR-style evaluation of a pointwise ranker (`evals` type `ctr`): AUC,
impression-weighted GAUC and log-loss.

A recommender log holds positives only; the impressions are built the usual way for
offline CTR evaluation: each held-out interaction (label 1) is shown beside
`negatives_per_positive` items the user never interacted with (label 0), drawn uniformly
with a fixed seed. On those impressions:

* `auc`: the probability that a random positive impression scores above a random negative
  one, over all users together (`metrics.auc`, ties count one half: the Mann–Whitney
  statistic);
* `gauc`: each user's AUC weighted by the user's number of impressions (Zhou et al., 2018,
  the Deep Interest Network paper), over users with both labels; it measures the
  within-user ordering a ranker is used for, which global AUC mixes with between-user
  calibration;
* `logloss`: the mean binary cross-entropy of `sigmoid(score)` — meaningful for a model
  trained pointwise (BCE); a softmax-trained model's logits are not probabilities.

Options of an `evals` entry: `negatives_per_positive`, `seed` (of the draw, default 0),
`users_per_chunk`; it runs on `splits=("test",)` unless told otherwise.
"""

from __future__ import annotations

import numpy as np

from rankjax import metrics
from rankjax.evaluators import retrieval
from rankjax.types import ScoreFn


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


class CtrEvaluator:
    """`metrics.ctr_metrics` of a scorer on impressions (`impressions(...)`: column 0 the
    positive, label 1; the others label 0).

    Args:
      users: `[n]`.
      items: `[n, 1 + k]`.
      users_per_chunk: rows scored per call.
    """

    metrics = ("auc", "gauc", "logloss")

    def __init__(self, users: np.ndarray, items: np.ndarray, users_per_chunk: int = 512):
        self.users, self.items = np.asarray(users), np.asarray(items)
        self.users_per_chunk = users_per_chunk

    def run(self, score_fn: ScoreFn) -> dict[str, float]:
        """`{"auc", "gauc", "logloss", "impressions", "gauc_users"}` of
        `score_fn({"users": [n], "items": [n, 1 + k]}) -> [n, 1 + k]`."""
        users, items, chunk = self.users, self.items, self.users_per_chunk
        scores = [
            np.asarray(score_fn({"users": users[s : s + chunk], "items": items[s : s + chunk]}))
            for s in range(0, len(users), chunk)
        ]
        got = np.concatenate(scores) if scores else np.zeros(items.shape)
        labels = np.zeros(items.shape)
        labels[:, 0] = 1
        groups = np.broadcast_to(users[:, None], items.shape)
        return metrics.ctr_metrics(got, labels, groups)
