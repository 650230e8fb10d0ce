"""The synthetic world: deterministic, realistic enough that ranking must be learned."""

import numpy as np
import pytest

from rankjax import metrics
from rankjax.data import synthetic
from rankjax.data.batches import max_list_size, pad_lists
from rankjax.data.dataset import RankingDataset

SMALL = dict(num_queries=400, num_products=800, num_users=30, events_per_user=10)


@pytest.fixture(scope="module")
def world():
    return synthetic.make_world(**SMALL)


def _ndcg10(world, scores):
    d = world.judgments
    b = pad_lists(
        RankingDataset(
            d.features, d.labels, d.list_offsets, d.query_ids, d.feature_names, {"s": scores}
        ),
        max_list_size(d),
    )
    return metrics.evaluate(b["s"], b["labels"], where=b["where"], metrics=("ndcg@10",))["ndcg@10"]


def test_same_seed_same_world_other_seed_other_world(world):
    again = synthetic.make_world(**SMALL)
    np.testing.assert_array_equal(world.judgments.features, again.judgments.features)
    np.testing.assert_array_equal(world.judgments.labels, again.judgments.labels)
    assert list(world.titles) == list(again.titles)
    other = synthetic.make_world(seed=1, **SMALL)
    assert not np.array_equal(world.judgments.labels[:50], other.judgments.labels[:50])


def test_shapes_and_ranges(world):
    d = world.judgments
    assert d.num_lists == 400
    assert d.num_features == len(synthetic.FEATURE_NAMES)
    assert set(np.unique(d.labels)) == {0.0, 1.0, 2.0, 3.0}
    cfg = world.config
    assert d.list_sizes.min() >= cfg.min_list_size and d.list_sizes.max() <= cfg.max_list_size
    assert np.all(np.isfinite(d.features))
    assert world.products["title_tokens"].max() < len(world.vocab)


def test_labels_follow_the_latent_match_class(world):
    d = world.judgments
    means = [d.labels[d.extras["match_class"] == c].mean() for c in range(4)]
    assert means == sorted(means) and means[3] - means[0] > 2.0


def test_expected_label_matches_monte_carlo():
    rng = np.random.default_rng(0)
    grade = np.array([-0.3, 0.4, 1.2, 2.6, 3.4])
    draws = np.clip(np.round(grade + rng.normal(0, 0.45, size=(200_000, 5))), 0, 3).mean(0)
    np.testing.assert_allclose(synthetic.expected_label(grade, 0.45), draws, atol=5e-3)


def test_oracle_beats_random_and_no_single_feature_comes_close(world):
    d = world.judgments
    oracle = _ndcg10(world, d.extras["oracle"])
    rand = _ndcg10(world, np.random.default_rng(0).random(d.num_items).astype(np.float32))
    best_feature = max(
        max(_ndcg10(world, d.features[:, j]), _ndcg10(world, -d.features[:, j]))
        for j in range(d.num_features)
    )
    assert oracle > 0.9 and rand < 0.6
    # A ranker has to combine features to come within 90% of the oracle.
    assert best_feature < 0.85 * oracle


def test_titles_name_the_products_brand(world):
    brands = world.products["brand"]
    for i in range(20):
        title_tokens = set(world.products["title_tokens"][i]) - {0}
        assert any(world.vocab[t] == world.titles[i].split()[0] for t in title_tokens)
        assert brands[i] >= 0


def test_interactions_are_time_ordered_per_user(world):
    inter = world.interactions
    assert len(inter["user"]) == 30 * 10
    for u in range(30):
        t = inter["timestamp"][inter["user"] == u]
        assert np.all(np.diff(t) > 0)
    assert inter["item"].max() < world.config.num_products


def test_bad_world_config_raises():
    with pytest.raises(ValueError, match="num_categories"):
        synthetic.make_world(num_categories=3)
