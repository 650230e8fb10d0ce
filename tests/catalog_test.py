"""Unlabelled catalog lists for distillation: TF-IDF nearest products, the query's own left
out, the lists and their `labelled` extra."""

import numpy as np
import pytest

from rankjax import baselines
from rankjax.data import catalog
from rankjax.data.dataset import from_groups

TITLES = [
    "cordless drill 18v",  # query "drill": its own products
    "hammer drill",
    "drill bit set",  # query "paint roller"
    "paint roller cover",
    "roller tray",
    "wood screws",
    "drill press",
]


def _dataset():
    # 3 queries: "drill" owns items 0-1, "paint roller" items 2-3, "screws" items 4-6.
    n = len(TITLES)
    return from_groups(
        np.zeros((n, 0)),
        np.array([2.0, 1.0, 0.0, 2.0, 0.0, 2.0, 0.0]),
        [2, 2, 3],
        query_ids=np.array(["drill", "paint roller", "screws"], dtype=object),
        extras={
            "text:product_title": np.array(TITLES, dtype=object),
            "item_id": np.arange(n) + 100,
            "tokens": np.ones((n, 4), np.int32),
        },
        source="hd.csv",
    )


def _brute_force(queries, products, own, k, vectorizer):
    """Each (query, product) cosine on its own: no matrix product, no chunks."""
    out = []
    for q, mine in zip(queries, own, strict=True):
        sims = baselines.tfidf_scores(vectorizer, [q] * len(products), products).astype(float)
        sims[mine] = -np.inf
        out.append(np.argsort(-sims, kind="stable")[:k])
    return np.array(out)


def test_nearest_products_match_pairwise_cosines_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    words = ["drill", "bit", "paint", "roller", "screw", "wood", "tray", "saw", "blade"]
    products = [" ".join(rng.choice(words, 3)) + f" {i}" for i in range(40)]
    queries = [" ".join(rng.choice(words, 2)) for _ in range(11)]
    own = [rng.choice(40, 3, replace=False) for _ in queries]
    vectorizer = baselines.TfidfVectorizer.fit([*queries, *products])
    monkeypatch.setattr(catalog, "_CHUNK", 4)  # 11 queries: blocks of 4, 4, 3
    got = catalog.nearest_products(queries, products, own, 5, vectorizer)
    np.testing.assert_array_equal(got, _brute_force(queries, products, own, 5, vectorizer))
    assert not any(set(g) & set(o) for g, o in zip(got, own, strict=True))


@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_top_k_is_the_head_of_a_stable_descending_sort(k):
    # Scores from 4 values: most rows tie across the k-th place; -inf marks own products.
    rng = np.random.default_rng(k)
    scores = rng.choice([-np.inf, 0.0, 0.5, 1.0], size=(50, 12), p=[0.2, 0.5, 0.2, 0.1])
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(catalog.top_k(scores, k), want)


def test_catalog_lists_follow_the_training_lists_unlabelled():
    d = _dataset()
    out = catalog.with_catalog_lists(d, 2, ("product_title",))
    assert out.num_lists == 6 and list(out.list_sizes) == [2, 2, 3, 2, 2, 2]
    assert list(out.query_ids) == ["drill", "paint roller", "screws"] * 2
    np.testing.assert_array_equal(out.labels[:7], d.labels)
    np.testing.assert_array_equal(out.labels[7:], 0.0)
    np.testing.assert_array_equal(out.extras[catalog.LABELLED], [1.0] * 7 + [0.0] * 6)
    titles = out.extras["text:product_title"]
    drill = list(titles[7:9])
    # "drill" gets the other drill products, never its own two.
    assert set(drill) == {"drill bit set", "drill press"}
    assert not {"cordless drill 18v", "hammer drill"} & set(drill)
    assert "paint roller cover" not in titles[9:11]
    # Every copied extra stays aligned with its title; tokens are left to the tokenizer.
    np.testing.assert_array_equal(out.extras["item_id"] - 100, [TITLES.index(t) for t in titles])
    assert "tokens" not in out.extras


def test_too_many_catalog_pairs_name_the_limit_and_the_data():
    with pytest.raises(ValueError, match=r"between 1 and 4 .*hd.csv"):
        catalog.with_catalog_lists(_dataset(), 5, ("product_title",))


def test_the_ranking_task_names_what_catalog_pairs_need():
    from rankjax.tasks import ranking

    with pytest.raises(ValueError, match="needs a text ranker"):
        ranking._with_catalog_lists((), 4, {}, 16)
    with pytest.raises(ValueError, match="catalog_pairs=20 is longer than data.list_size=16"):
        ranking._with_catalog_lists((), 20, {"item_columns": ["product_title"]}, 16)
