"""CTR-style metrics: AUC with ties, impression-weighted GAUC, log-loss, impressions."""

import itertools

import numpy as np
import pytest

from rankjax import metrics
from rankjax.evaluators import ctr


def brute_auc(scores, labels):
    """Every (positive, negative) pair: 1 if ordered right, 1/2 if tied."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairs = list(itertools.product(pos, neg))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def test_auc_by_hand_with_ties():
    # Positives 0.9 and 0.5; negatives 0.5 and 0.1: pairs (0.9>0.5, 0.9>0.1, 0.5=0.5, 0.5>0.1).
    assert metrics.auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert metrics.auc([1.0, 1.0, 1.0], [1, 0, 0]) == pytest.approx(0.5)  # a constant scorer
    with pytest.raises(ValueError, match="both labels"):
        metrics.auc([1.0, 2.0], [1, 1])


def test_auc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 5, n).astype(float)  # many ties
        labels = rng.integers(0, 2, n)
        if labels.all() or not labels.any():
            continue
        assert metrics.auc(scores, labels) == pytest.approx(brute_auc(scores, labels))


def test_gauc_weights_users_by_impressions_and_skips_one_label_users():
    scores = [3, 1, 2, 0, 1, 2, 5, 5]
    labels = [1, 0, 0, 1, 0, 1, 1, 1]
    users = [0, 0, 0, 1, 1, 1, 2, 2]
    # user 0: positive above both negatives -> 1; user 1: 0 below 1, 2 above 1 -> 0.5;
    # user 2 has positives only: left out. Weights 3 and 3.
    m = metrics.ctr_metrics(scores, labels, users)
    assert m["gauc"] == pytest.approx((1.0 * 3 + 0.5 * 3) / 6)
    assert m["gauc_users"] == 2 and m["impressions"] == 8
    assert m["auc"] == pytest.approx(brute_auc(scores, labels))
    # Unequal weights: a 5-impression user counts 5/7.
    m = metrics.ctr_metrics([1, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1, 1])
    assert m["gauc"] == pytest.approx((1.0 * 5 + 0.0 * 2) / 7)


def test_logloss_by_hand_and_stable_for_large_logits():
    assert metrics.logloss([0.0, 0.0], [1, 0]) == pytest.approx(np.log(2))
    p = 1 / (1 + np.exp(-2.0))
    assert metrics.logloss([2.0], [0]) == pytest.approx(-np.log(1 - p))
    assert metrics.logloss([1000.0, -1000.0], [1, 0]) == pytest.approx(0.0)
    assert metrics.logloss([1000.0], [0]) == pytest.approx(1000.0)


def test_impressions_put_the_positive_first_among_unseen_items():
    seen = (np.array([0, 0, 1]), np.array([0, 1, 2]))
    users, items = ctr.impressions(np.array([0, 1]), np.array([1, 2]), seen, 6, 3, seed=1)
    assert items.shape == (2, 4) and list(items[:, 0]) == [1, 2]
    assert not set(items[0, 1:]) & {0, 1} and 2 not in items[1, 1:]
    got = ctr.CtrEvaluator(users, items).run(
        lambda b: np.where(b["items"] == b["items"][:, :1], 1.0, 0.0)
    )
    assert got["auc"] == pytest.approx(1.0) and got["gauc"] == pytest.approx(1.0)
