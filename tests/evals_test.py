"""The `evals` config section: its checks, its result keys, and several evaluations of one
run."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config

from rankjax import trainer
from rankjax.evaluators import CtrEvaluator, FullRanking, SampledRanking, section
from rankjax.tasks.recommender import score_fn

RETRIEVAL = ("full_ranking", "sampled_ranking", "ctr")


def _config(**evals):
    return ml_collections.ConfigDict({"evals": evals})


def test_every_entry_is_checked_by_its_type():
    ok = _config(
        main=dict(type="full_ranking", metrics=("ndcg@10",)),
        ctr=dict(type="ctr", negatives_per_positive=5),
    )
    section.validate(ok, RETRIEVAL, "retrieval")
    cases = [
        (dict(main=dict(type="listwise", metrics=())), r"evals.main.type='listwise'; valid"),
        (dict(main=dict(metrics=("ndcg@10",))), r"evals.main must be a dict with a `type`"),
        (
            dict(main=dict(type="full_ranking", metrics=("ndcg@10",), gain="exp2")),
            r"unknown config key evals.main.gain; valid: \['metrics', 'splits', 'type', "
            r"'users_per_chunk'\]",
        ),
        (dict(main=dict(type="ctr")), r"evals.main is missing \['negatives_per_positive'\]"),
        (dict(main=dict(type="full_ranking", metrics=("ndcg",))), "unknown metric 'ndcg'"),
        (dict(main=dict(type="sampled_ranking", metrics=("recall@10",))), "'recall@10'"),
        (
            dict(main=dict(type="sampled_ranking", metrics=("hit@1",), negatives="random")),
            r"evals.main.negatives='random'",
        ),
        (
            dict(main=dict(type="full_ranking", metrics=("hit@1",), splits=("train",))),
            r"evals.main.splits=\('train',\)",
        ),
        (
            dict(
                a=dict(type="full_ranking", metrics=("hit@1",)),
                b=dict(type="full_ranking", metrics=("hit@5",)),
            ),
            r"exactly one evals entry must run on 'valid'.*\['a', 'b'\] do",
        ),
        (dict(a=dict(type="ctr", negatives_per_positive=3)), r"'valid'.*none do"),
    ]
    for evals, message in cases:
        with pytest.raises(ValueError, match=message):
            section.validate(_config(**evals), RETRIEVAL, "retrieval")
    with pytest.raises(ValueError, match="config is missing the evals section"):
        section.validate(ml_collections.ConfigDict(), RETRIEVAL, "retrieval")
    with pytest.raises(ValueError, match="`eval` is the old form of the `evals` section"):
        section.validate(ml_collections.ConfigDict({"eval": {}}), RETRIEVAL, "retrieval")
    # Types a task does not accept are named with the ones it does.
    with pytest.raises(ValueError, match=r"valid for task=ranking: \['ranking'\]"):
        section.validate(_config(main=ok.evals.main), ("ranking",), "ranking")


def test_the_entry_on_valid_reports_as_the_split_and_others_by_name():
    evals = _config(
        main=dict(type="full_ranking", metrics=("ndcg@10",)),
        ctr=dict(type="ctr", negatives_per_positive=5),
    ).evals
    assert section.selecting(evals) == "main"
    assert section.splits_of(evals.ctr) == ("test",)  # the type's default
    keys = [section.result_key(evals, n, "test", s) for n in ("main", "ctr") for s in (0, 1)]
    assert keys == ["test", "test_served", "test_ctr", "test_served_ctr"]
    assert section.result_key(evals, "main", "valid") == "valid"


def test_report_columns_follow_report_then_metrics_and_add_calibrated_rmse():
    entry = dict(type="ranking", metrics=("ndcg@5", "mrr", "rmse"), report=("ndcg@5", "rmse"))
    assert section.report_columns(entry) == ("ndcg@5", "rmse")
    assert section.report_columns({**entry, "calibrate_rmse": (0.0, 2.0)}) == (
        "ndcg@5",
        "rmse",
        "rmse_calibrated",
    )
    del entry["report"]
    assert section.report_columns(entry) == ("ndcg@5", "mrr", "rmse")
    # The Home Depot teacher's table (and its seed table) show the calibrated RMSE.
    hd = load_config("homedepot_cross_encoder", "runlocal").evals.ranking
    assert section.report_columns(hd)[-1] == "rmse_calibrated"


def test_every_recommendation_evaluator_takes_the_one_scorer_signature():
    # User 0 scores items by id, user 1 by minus id; 6 items.
    table = jnp.array([np.arange(6.0), -np.arange(6.0)])
    calls = []

    def catalog(users):
        calls.append("catalog")
        return table[users]

    def pairs(users, items):
        calls.append("pairs")
        return jnp.take_along_axis(table[users], items, axis=1)

    score = score_fn(catalog, pairs)
    users, held = np.array([0, 1]), np.array([5, 0])
    full = FullRanking(
        seen=(users[:0], users[:0]),
        held_out=(users, held),
        num_items=6,
        metrics=("hit@1",),
    )
    assert full.run(score) == {"hit@1": 1.0} and calls == ["catalog"]
    sampled = SampledRanking(
        users=users, positives=held, negatives=np.array([[1, 2], [1, 2]]), metrics=("hit@1",)
    )
    assert sampled.run(score) == {"hit@1": 1.0} and calls[-1] == "pairs"
    ctr = CtrEvaluator(users, np.array([[5, 1, 2], [0, 1, 2]]))
    got = ctr.run(score)
    assert calls[-1] == "pairs" and set(ctr.metrics) <= set(got)
    # Each user orders their items right (GAUC 1); across users, user 1's positive (0)
    # scores below user 0's negatives (1, 2): 6 of 8 pairs.
    assert got["gauc"] == pytest.approx(1.0) and got["auc"] == pytest.approx(6 / 8)
    # Without a pair scorer, chosen items are read from the catalog's scores.
    assert sampled.run(score_fn(catalog)) == {"hit@1": 1.0} and calls[-1] == "catalog"


def test_a_second_ranking_evaluation_reports_beside_the_first(tmp_path):
    c = load_config("synthetic_listwise", "runlocal")
    main = c.evals.ranking
    # The same evaluation on test only, and one with linear gains.
    c.evals.again = dict(main.to_dict(), splits=("test",))
    c.evals.linear = dict(main.to_dict(), splits=("test",), gain="linear", report=("ndcg@5",))
    results = trainer.train_and_evaluate(c, str(tmp_path))
    assert results["test_again"] == results["test"]
    assert set(results["test_linear"]) == set(main.metrics)
    assert results["test_linear"]["ndcg@5"] != results["test"]["ndcg@5"]  # graded labels
    assert "valid_again" not in results
    for name in ("random", "oracle"):
        got = results["baselines"][name]
        assert set(got) == {"test", "test_again", "test_linear"}
        assert got["test_again"] == got["test"]
