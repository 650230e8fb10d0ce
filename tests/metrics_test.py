"""Metrics against hand-computed values and against trec_eval (pytrec_eval)."""

import math

import numpy as np
import pytest

from rankjax import metrics, sharding
from rankjax.data.dataset import from_groups
from rankjax.evaluators import ranking

LOG2_3 = math.log2(3)


def ev(scores, labels, where=None, **kw):
    where = None if where is None else np.asarray(where, bool)
    return metrics.evaluate(np.asarray(scores, float), np.asarray(labels, float), where=where, **kw)


def test_mrr_hand_computed():
    assert ev([[3, 2, 1]], [[0, 1, 0]], metrics=("mrr",))["mrr"] == pytest.approx(0.5)


def test_ndcg_at_2_hand_computed():
    # Ranking by score: item1 (label 0), item2 (label 1), item0 (label 2).
    dcg = 0 / 1 + (2**1 - 1) / LOG2_3
    idcg = (2**2 - 1) / 1 + (2**1 - 1) / LOG2_3
    out = ev([[1, 3, 2]], [[2, 0, 1]], metrics=("ndcg@2", "dcg@2"))
    assert out["ndcg@2"] == pytest.approx(dcg / idcg, rel=1e-6)
    assert out["dcg@2"] == pytest.approx(dcg, rel=1e-6)


def test_linear_gain():
    dcg = 0 + 1 / LOG2_3
    idcg = 2 + 1 / LOG2_3
    out = ev([[1, 3, 2]], [[2, 0, 1]], metrics=("ndcg@2",), gain="linear")
    assert out["ndcg@2"] == pytest.approx(dcg / idcg, rel=1e-6)


def test_map_recall_precision_hand_computed():
    # Ranked labels: 1, 0, 1, 0, 1 (three relevant).
    scores, labels = [[5, 4, 3, 2, 1]], [[1, 0, 1, 0, 1]]
    out = ev(scores, labels, metrics=("map", "recall@2", "precision@2", "precision@4"))
    assert out["map"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 3)
    assert out["recall@2"] == pytest.approx(1 / 3)
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["precision@4"] == pytest.approx(2 / 4)


def test_precision_divides_by_retrieved_items_on_short_lists():
    out = ev([[2, 1, 0]], [[1, 0, 0]], where=[[1, 1, 0]], metrics=("precision@5",))
    assert out["precision@5"] == pytest.approx(1 / 2)


def test_rmse_over_items_not_lists():
    # List 1 has one item with error 2; list 2 has three items with error 0.
    out = ev(
        [[2.0, 0, 0], [1, 1, 1]],
        [[0.0, 0, 0], [1, 1, 1]],
        where=[[1, 0, 0], [1, 1, 1]],
        metrics=("rmse",),
    )
    assert out["rmse"] == pytest.approx(math.sqrt(4 / 4))


def test_pairwise_accuracy_counts_ties_as_half():
    assert ev([[1, 2, 3]], [[2, 1, 0]], metrics=("pairwise_accuracy",))[
        "pairwise_accuracy"
    ] == pytest.approx(0.0)
    assert ev([[3, 3, 1]], [[2, 1, 0]], metrics=("pairwise_accuracy",))[
        "pairwise_accuracy"
    ] == pytest.approx(2.5 / 3)


def test_pairwise_accuracy_skips_lists_without_label_differences():
    out = ev([[1, 2], [2, 1]], [[1, 1], [1, 0]], metrics=("pairwise_accuracy",))
    assert out["pairwise_accuracy"] == pytest.approx(1.0)


@pytest.mark.parametrize("convention, expected", [("zero", 0.25), ("one", 0.75), ("skip", 0.5)])
def test_no_relevant_conventions(convention, expected):
    # List 0: the relevant item is ranked second (MRR 0.5); list 1 has no relevant item.
    out = ev([[2, 1], [2, 1]], [[0, 1], [0, 0]], metrics=("mrr",), no_relevant=convention)
    assert out["mrr"] == pytest.approx(expected)


def test_no_relevant_does_not_touch_dcg_and_precision():
    for convention in metrics.NO_RELEVANT:
        out = ev(
            [[2, 1], [2, 1]],
            [[1, 0], [0, 0]],
            metrics=("dcg@2", "precision@1"),
            no_relevant=convention,
        )
        assert out["dcg@2"] == pytest.approx(0.5)
        assert out["precision@1"] == pytest.approx(0.5)


def test_padding_items_are_ignored_even_with_high_scores():
    base = ev([[1, 2, 3]], [[1, 0, 2]], metrics=("ndcg@10", "mrr", "map"))
    padded = ev(
        [[1, 2, 3, 100, 100]],
        [[1, 0, 2, 3, 3]],
        where=[[1, 1, 1, 0, 0]],
        metrics=("ndcg@10", "mrr", "map"),
    )
    assert padded == pytest.approx(base)


def test_all_padding_lists_are_not_counted():
    out = ev([[1, 2], [5, 6]], [[0, 1], [1, 1]], where=[[1, 1], [0, 0]], metrics=("mrr", "ndcg@10"))
    assert out == pytest.approx({"mrr": 1.0, "ndcg@10": 1.0})


def test_ties_keep_list_order():
    assert ev([[1, 1]], [[0, 1]], metrics=("mrr",))["mrr"] == pytest.approx(0.5)
    assert ev([[1, 1]], [[1, 0]], metrics=("mrr",))["mrr"] == pytest.approx(1.0)


def test_accumulation_across_batches_is_exact_not_mean_of_means():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 6))
    labels = rng.integers(0, 3, size=(7, 6)).astype(float)
    names = ("ndcg@5", "mrr", "rmse", "pairwise_accuracy")
    full = metrics.evaluate(scores, labels, metrics=names)
    acc = metrics.MetricAccumulator()
    batch_means = []
    for part in (slice(0, 2), slice(2, 7)):
        acc.update(metrics.batch_sums(scores[part], labels[part], metrics=names))
        batch_means.append(metrics.evaluate(scores[part], labels[part], metrics=names)["ndcg@5"])
    assert acc.result() == pytest.approx(full, rel=1e-5)
    # The naive mean of batch means differs here, so the test can tell the two apart.
    assert abs(np.mean(batch_means) - full["ndcg@5"]) > 1e-3


def test_nan_scores_raise():
    with pytest.raises(ValueError, match="finite"):
        ev([[1, float("nan")]], [[0, 1]])


def test_nan_scores_on_padding_are_allowed():
    assert ev([[1, float("nan")]], [[1, 0]], where=[[1, 0]], metrics=("mrr",))["mrr"] == 1.0


@pytest.mark.parametrize("name", ["ndcg@0", "rmse@5", "foo", "ndcg@x"])
def test_bad_metric_names_list_valid_ones(name):
    with pytest.raises(ValueError, match="ndcg"):
        metrics.parse_metric(name)


def test_bad_convention_raises():
    with pytest.raises(ValueError, match="no_relevant"):
        ev([[1]], [[1]], no_relevant="ignore")


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        metrics.evaluate(np.zeros((2, 3)), np.zeros((2, 4)))


def _trec(scores, labels, measures):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrel, run = {}, {}
    for q in range(scores.shape[0]):
        qrel[f"q{q}"] = {f"d{i}": int(labels[q, i]) for i in range(scores.shape[1])}
        run[f"q{q}"] = {f"d{i}": float(scores[q, i]) for i in range(scores.shape[1])}
    per_query = pytrec_eval.RelevanceEvaluator(qrel, set(measures)).evaluate(run)
    return {m: np.mean([v[m] for v in per_query.values()]) for m in measures}


def test_agrees_with_trec_eval():
    rng = np.random.default_rng(1)
    n, size = 50, 20
    labels = rng.integers(0, 4, size=(n, size)).astype(float)
    labels[:, 0] = np.maximum(labels[:, 0], 1)  # trec_eval drops queries with no relevant doc
    scores = rng.permutation(n * size).reshape(n, size).astype(float)  # no ties
    ours = metrics.evaluate(
        scores,
        labels,
        metrics=(
            "ndcg@5",
            "ndcg@10",
            "ndcg",
            "mrr",
            "map",
            "recall@5",
            "recall@10",
            "precision@5",
            "precision@10",
        ),
        gain="linear",
    )
    trec = _trec(
        scores,
        labels,
        [
            "ndcg_cut_5",
            "ndcg_cut_10",
            "ndcg",
            "recip_rank",
            "map",
            "recall_5",
            "recall_10",
            "P_5",
            "P_10",
        ],
    )
    pairs = {
        "ndcg@5": "ndcg_cut_5",
        "ndcg@10": "ndcg_cut_10",
        "ndcg": "ndcg",
        "mrr": "recip_rank",
        "map": "map",
        "recall@5": "recall_5",
        "recall@10": "recall_10",
        "precision@5": "P_5",
        "precision@10": "P_10",
    }
    for ours_name, trec_name in pairs.items():
        assert ours[ours_name] == pytest.approx(trec[trec_name], rel=1e-5), ours_name


def test_min_list_size_leaves_short_lists_out_of_ranking_metrics_only():
    scores = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    labels = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    where = np.array([[True, True, True], [True, True, False]])
    got = metrics.evaluate(
        scores, labels, where=where, metrics=("mrr", "rmse", "pairwise_accuracy"), min_list_size=3
    )
    assert got["mrr"] == pytest.approx(0.5)  # only the first list (3 items) counts
    # RMSE over all 5 valid items; pairwise accuracy over both lists (1/2 and 0/1 pairs).
    err = np.array([2.0, 0.0, 0.0, 0.0, 2.0])
    assert got["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert got["pairwise_accuracy"] == pytest.approx((0.5 + 0.0) / 2)


def test_calibrated_rmse_fits_a_linear_map_on_one_split_and_clips():
    labels = np.array([0.0, 1.0, 2.0, 1.0, 0.5, 2.0], np.float32)
    d = from_groups(np.zeros((6, 1), np.float32), labels, [3, 3])
    ev = ranking.RankingEvaluator(d, mesh=sharding.make_mesh(1), batch_size=2, metrics=("rmse",))
    # Scores 10x - 3 of the labels: the fitted map recovers them exactly.
    score = lambda b: 10 * b["labels"] - 3  # noqa: E731
    a, b = ev.linear_fit(score)
    assert (a, b) == (pytest.approx(0.1), pytest.approx(0.3))
    assert ranking.calibrated_rmse(score, ev, ev, (0.0, 2.0)) == pytest.approx(0.0, abs=1e-5)
    # Constant scores fall back to the mean label; clipping to a narrower range shows.
    const = ranking.constant_scores(7.0)
    assert ev.linear_fit(const) == (0.0, pytest.approx(labels.mean()))
    clipped = ranking.calibrated_rmse(score, ev, ev, (0.0, 1.0))
    assert clipped == pytest.approx(np.sqrt(((labels - labels.clip(0, 1)) ** 2).mean()), rel=1e-5)


def test_top_k_names_need_a_cutoff_and_auc_takes_none():
    assert metrics.parse_metric("hit@10", metrics.TOP_K_NAMES) == ("hit", 10)
    assert metrics.parse_metric("auc", metrics.TOP_K_NAMES) == ("auc", None)
    for bad in ("ndcg", "auc@5", "map@10", "hit@0"):
        with pytest.raises(ValueError, match=f"unknown metric '{bad}'.*hit, precision"):
            metrics.parse_metric(bad, metrics.TOP_K_NAMES)
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        metrics.parse_metric("auc")  # not a list metric
    assert metrics.parse_metric("hit@10") == ("hit", 10)  # lists have hit@k too


def test_top_k_metric_by_hand():
    # User 0: relevant items at ranks 2 and 4 of 3 relevant; user 1: no hit in the top 3.
    hits = np.array([[0, 1, 0, 1], [0, 0, 0, 1]], bool)
    relevant = np.array([3, 1])
    got = {k: metrics.top_k_metric(k, hits, relevant, 3) for k in metrics.TOP_K_NAMES if k != "auc"}
    np.testing.assert_allclose(got["recall"], [1 / 3, 0])
    np.testing.assert_allclose(got["precision"], [1 / 3, 0])
    np.testing.assert_allclose(got["hit"], [1, 0])
    np.testing.assert_allclose(got["mrr"], [1 / 2, 0])
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    np.testing.assert_allclose(got["ndcg"], [(1 / np.log2(3)) / ideal, 0])


@pytest.mark.parametrize("ties, tie_value", [("half", 0.5), ("against", 0.0)])
def test_auc_tie_rules_match_pairwise_counting(ties, tie_value):
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.integers(0, 4, 25).astype(float)  # many ties
        labels = rng.integers(0, 2, 25)
        if labels.all() or not labels.any():
            continue
        pos, neg = scores[labels > 0], scores[labels == 0]
        pairs = [1.0 if p > n else tie_value if p == n else 0.0 for p in pos for n in neg]
        assert metrics.auc(scores, labels, ties) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="ties='mid'"):
        metrics.auc([1.0, 0.0], [1, 0], "mid")
