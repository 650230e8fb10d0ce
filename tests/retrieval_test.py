"""Full-ranking and sampled-negative recommendation metrics against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.evaluators import retrieval

# 2 users, 6 items. User 0: trained on item 0, held out items 2 and 5. User 1: held out 4.
TRAIN = (np.array([0, 1]), np.array([0, 1]))
HELD = (np.array([0, 0, 1]), np.array([2, 5, 4]))
SCORES = jnp.array(
    [
        [9.0, 1.0, 5.0, 7.0, 0.0, 3.0],  # item 0 excluded -> order 3, 2, 5, 1, 4
        [0.0, 9.0, 1.0, 2.0, 3.0, 4.0],  # item 1 excluded -> order 5, 4, 3, 2, 0
    ]
)


def full_ranking(score_fn, **kwargs):
    """`FullRanking(**kwargs).run` of a `users -> scores` function."""
    return retrieval.FullRanking(**kwargs).run(lambda batch: score_fn(batch["users"]))


def full(metrics):
    return full_ranking(
        lambda users: SCORES[users], seen=TRAIN, held_out=HELD, num_items=6, metrics=metrics
    )


def test_full_ranking_matches_hand_values():
    got = full(("recall@2", "recall@3", "ndcg@3", "mrr@3", "hit@1", "precision@2"))
    # User 0 top 3: [3, 2, 5] -> hits at ranks 2, 3; user 1 top 3: [5, 4, 3] -> hit at rank 2.
    d = 1 / np.log2(np.arange(2, 5))
    ndcg0 = (d[1] + d[2]) / (d[0] + d[1])
    ndcg1 = d[1] / d[0]
    assert got["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert got["recall@3"] == pytest.approx((2 / 2 + 1) / 2)
    assert got["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert got["hit@1"] == 0.0
    assert got["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_user_auc_matches_hand_values_and_brute_force():
    # One user, 5 items: item 0 seen, item 2 held out; negatives 1, 3, 4.
    table = jnp.array([[9.0, 1.0, 3.0, 3.0, 0.0]])
    got = full_ranking(
        lambda users: table[jnp.asarray(users)],
        seen=(np.array([0]), np.array([0])),
        held_out=(np.array([0]), np.array([2])),
        num_items=5,
        metrics=("auc",),
    )
    assert got["auc"] == pytest.approx(2 / 3)  # beats items 1 and 4; the tie with 3 counts against
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(4, 30)).astype(np.float32)  # many ties
    held = (np.repeat(np.arange(4), 3), rng.integers(0, 30, size=12))
    seen = (np.repeat(np.arange(4), 2), rng.integers(0, 30, size=8))
    got = full_ranking(
        lambda users: jnp.asarray(scores)[jnp.asarray(users)],
        seen=seen,
        held_out=held,
        num_items=30,
        metrics=("auc",),
    )
    want = []
    for u in range(4):
        before = set(seen[1][seen[0] == u])
        pos = set(held[1][held[0] == u]) - before  # repeats of seen items do not count
        neg = set(range(30)) - pos - before
        pairs = [(p, n) for p in pos for n in neg]
        want.append(np.mean([scores[u, p] > scores[u, n] for p, n in pairs]))
    assert got["auc"] == pytest.approx(np.mean(want))


def test_training_items_are_excluded_and_held_out_repeats_of_them_do_not_count():
    # Without exclusion user 0's top 1 would be the trained item 0.
    got = full_ranking(
        lambda users: SCORES[users],
        seen=(np.array([0]), np.array([3])),  # exclude item 3 for user 0 only
        held_out=HELD,
        num_items=6,
        metrics=("hit@1",),
    )
    assert got["hit@1"] == 0.0  # user 0's best remaining is item 0 (not held out)
    # User 0 trained on item 2 and holds it out again: not rankable, not relevant; item 5
    # stays (user 0's order without 0 and 2: 3, 5, ...). User 1 repeats item 1 only: skipped.
    got = full_ranking(
        lambda users: SCORES[users],
        seen=(np.array([0, 0, 1]), np.array([0, 2, 1])),
        held_out=(np.array([0, 0, 1]), np.array([2, 5, 1])),
        num_items=6,
        metrics=("hit@1", "mrr@2", "recall@2"),
    )
    assert got == pytest.approx({"hit@1": 0.0, "mrr@2": 0.5, "recall@2": 1.0})


def test_full_ranking_rejects_bad_names_and_cutoffs():
    with pytest.raises(ValueError, match="unknown metric 'auc@5'"):
        full(("auc@5",))
    with pytest.raises(ValueError, match="exceeds the catalog"):
        full(("recall@7",))


def test_sampled_ranking_counts_ties_against_the_positive():
    pos = np.array([5.0, 5.0, 1.0])
    neg = np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 0.0], [2.0, 3.0, 4.0]])
    got = retrieval.sampled_ranking(pos, neg, ("hit@1", "hit@3", "ndcg@3", "mrr@3"))
    # Ranks: 1, 3 (one higher, one tie), 4.
    assert got["hit@1"] == pytest.approx(1 / 3)
    assert got["hit@3"] == pytest.approx(2 / 3)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert got["mrr@3"] == pytest.approx((1 + 1 / 3) / 3)
    # A constant scorer ranks last, never first.
    const = retrieval.sampled_ranking(np.zeros(4), np.zeros((4, 100)), ("hit@10",))
    assert const["hit@10"] == 0.0


def test_negatives_are_unseen_distinct_and_follow_popularity():
    seen = (np.array([0, 0, 1]), np.array([0, 1, 2]))
    neg = retrieval.sample_negatives(np.array([0, 1]), seen, 50, 20, seed=1)
    assert neg.shape == (2, 20)
    assert not set(neg[0]) & {0, 1} and 2 not in neg[1]
    assert all(len(set(r)) == 20 for r in neg)
    popularity = np.zeros(50)
    popularity[10:30] = 1.0  # only items 10..29 can be drawn
    pop = retrieval.sample_negatives(np.array([0]), seen, 50, 20, popularity=popularity)
    assert sorted(pop[0]) == list(range(10, 30))
    with pytest.raises(ValueError, match="unseen items"):
        retrieval.sample_negatives(np.array([0]), seen, 10, 9)
