"""The metrics API a researcher calls: ragged lists, per-query values, hit@k, TREC files
read back by an independent implementation (pytrec_eval), and paired significance tests
against hand formulas and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from rankjax import metrics, significance, trec


def test_ragged_lists_equal_their_padded_form():
    scores = [[3.0, 1.0, 2.0], [0.5], [1.0, 2.0]]
    labels = [[0, 1, 2], [1], [0, 0]]
    ragged = metrics.evaluate(scores, labels, metrics=("ndcg@2", "mrr", "rmse"))
    padded = metrics.evaluate(
        np.array([[3.0, 1.0, 2.0], [0.5, 9.0, 9.0], [1.0, 2.0, 9.0]]),
        np.array([[0, 1, 2], [1, 5, 5], [0, 0, 5]], float),
        where=np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], bool),
        metrics=("ndcg@2", "mrr", "rmse"),
    )
    assert ragged == pytest.approx(padded)
    # By hand: list 0 ranks labels (0, 2, 1): MRR 1/2; list 1: 1; list 2 has no relevant: 0.
    assert ragged["mrr"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # RMSE over the 6 items, not a mean of lists.
    errors = np.array([3, 0, 0, -0.5, 1, 2], float)
    assert ragged["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))


def test_ragged_errors_name_the_list():
    with pytest.raises(ValueError, match="list 1: 2 scores but 1 labels"):
        metrics.evaluate([[1.0], [1.0, 2.0]], [[1], [0]])
    with pytest.raises(ValueError, match="take no `where`"):
        metrics.evaluate([[1.0]], [[1]], where=[[True]])


def test_per_query_values_and_their_mean():
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], float)
    where = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 0]], bool)
    means, per = metrics.evaluate(
        scores, labels, where=where, metrics=("mrr", "hit@1", "hit@3"), no_relevant="skip",
        per_query=True,
    )  # fmt: skip
    np.testing.assert_allclose(per["mrr"], [1.0, 1 / 3, np.nan, np.nan])  # skipped, padding
    np.testing.assert_allclose(per["hit@1"], [1.0, 0.0, np.nan, np.nan])
    np.testing.assert_allclose(per["hit@3"], [1.0, 1.0, np.nan, np.nan])
    for name, values in per.items():  # the mean is the mean of the counted lists
        assert means[name] == pytest.approx(np.nanmean(values))


def test_hit_is_recall_for_one_relevant_item_and_needs_a_relevant_item():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 12))
    labels = np.zeros((40, 12))
    labels[np.arange(40), rng.integers(0, 12, 40)] = 1  # one relevant item per list
    ours = metrics.evaluate(scores, labels, metrics=("hit@5", "recall@5"))
    assert ours["hit@5"] == pytest.approx(ours["recall@5"])
    no_rel = metrics.evaluate([[1.0, 2.0]], [[0, 0]], metrics=("hit@1",), no_relevant="one")
    assert no_rel["hit@1"] == 1.0


def test_trec_files_read_back_by_pytrec_eval_give_the_same_per_query_values(tmp_path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 15, size=30)
    scores = [rng.permutation(n).astype(float) + rng.random() for n in lengths]  # no ties
    labels = [rng.integers(0, 4, size=n) for n in lengths]
    for y in labels:
        y[0] = max(y[0], 1)  # trec_eval drops queries without a relevant document
    qids = [f"query-{i}" for i in range(len(lengths))]
    docs = [[f"P{i}_{j}" for j in range(n)] for i, n in enumerate(lengths)]
    trec.write_run(str(tmp_path / "run"), scores, query_ids=qids, doc_ids=docs, run_name="mine")
    trec.write_qrels(str(tmp_path / "qrels"), labels, query_ids=qids, doc_ids=docs)
    with open(tmp_path / "run") as f:
        run = pytrec_eval.parse_run(f)
    with open(tmp_path / "qrels") as f:
        qrel = pytrec_eval.parse_qrel(f)
    theirs = pytrec_eval.RelevanceEvaluator(qrel, {"ndcg_cut_5", "recip_rank"}).evaluate(run)
    _, ours = metrics.evaluate(
        scores, labels, metrics=("ndcg@5", "mrr"), gain="linear", per_query=True
    )
    for i, q in enumerate(qids):
        assert ours["ndcg@5"][i] == pytest.approx(theirs[q]["ndcg_cut_5"], rel=1e-6), q
        assert ours["mrr"][i] == pytest.approx(theirs[q]["recip_rank"], rel=1e-6), q
    first = (tmp_path / "run").read_text().splitlines()[0].split()
    assert first[:2] == ["query-0", "Q0"] and first[3] == "1" and first[5] == "mine"


def test_trec_writers_check_their_input(tmp_path):
    path = str(tmp_path / "x")
    with pytest.raises(ValueError, match="list 0 \\(q0\\): 1 doc ids for 2 items"):
        trec.write_run(path, [[1.0, 2.0]], doc_ids=[["a"]])
    with pytest.raises(ValueError, match="whole-number labels"):
        trec.write_qrels(path, [[0.5]])
    with pytest.raises(ValueError, match="without spaces"):
        trec.write_run(path, [[1.0]], query_ids=["a b"])
    # Padding is left out of a padded batch's files.
    trec.write_qrels(path, np.array([[2, 1]]), where=np.array([[True, False]]))
    assert (tmp_path / "x").read_text() == "q0 0 d0 2\n"


def test_paired_t_test_matches_the_formula_and_scipy():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    b = a + 0.05 + 0.1 * rng.normal(size=60)
    out = significance.paired_test(a, b, method="t")
    d = b - a
    t = d.mean() / (d.std(ddof=1) / math.sqrt(60))
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-9)
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 59), rel=1e-9)
    assert out["ci_low"] < d.mean() < out["ci_high"] and out["n"] == 60


def test_paired_bootstrap_agrees_with_the_t_test_on_normal_differences():
    rng = np.random.default_rng(1)
    a = rng.random(200)
    b = a + 0.02 + 0.1 * rng.normal(size=200)
    boot = significance.paired_test(a, b, method="bootstrap", n_resamples=20_000, seed=3)
    t = significance.paired_test(a, b, method="t")
    assert boot["p_value"] == pytest.approx(t["p_value"], abs=0.02)
    assert boot["ci_low"] == pytest.approx(t["ci_low"], abs=0.003)
    assert boot == significance.paired_test(a, b, method="bootstrap", n_resamples=20_000, seed=3)
    same = significance.paired_test(a, a, method="bootstrap", n_resamples=999)
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0


def test_paired_test_drops_uncounted_queries_and_checks_input():
    a = np.array([0.1, np.nan, 0.3, 0.4])
    b = np.array([0.2, 0.5, np.nan, 0.6])
    out = metrics.paired_test(a, b)  # queries 1 and 2 are left out of both
    assert out["n"] == 2 and out["mean_diff"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="same queries"):
        significance.paired_test(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="method='z'"):
        significance.paired_test(np.ones(3), np.ones(3), method="z")
