"""Recall-then-rank cascade: candidates, final order and metrics on hand-made scorers, and
loading finished retrieval runs to cascade them."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import cascade, trainer
from rankjax.evaluators import retrieval
from rankjax.tasks import retrieval as tasks_retrieval
from rankjax.tasks.recommender import score_fn

# 2 users, 6 items. Stage 1 prefers low ids; stage 2 prefers high ids.
STAGE1 = jnp.array([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])


stage1 = score_fn(lambda users: STAGE1[users])
stage2 = score_fn(
    lambda users: jnp.broadcast_to(jnp.arange(6.0), (len(users), 6)),
    lambda users, items: items.astype(jnp.float32),
)


def test_candidates_skip_seen_items_and_keep_the_best_k():
    seen = np.array([[True, False, False, False, False, False], [False] * 6])
    scores, items = cascade.candidates(stage1, np.array([0, 1]), seen, 3)
    np.testing.assert_array_equal(items, [[1, 2, 3], [0, 1, 2]])
    np.testing.assert_array_equal(scores, [[5, 4, 3], [6, 5, 4]])


def test_cascade_reorders_stage1_candidates_by_stage2():
    # User 0 saw item 0; held out: user 0 item 3, user 1 item 5.
    r = cascade.evaluate(
        stage1,
        stage2,
        k=3,
        train=(np.array([0]), np.array([0])),
        held_out=(np.array([0, 1]), np.array([3, 5])),
        num_items=6,
        metrics=("hit@1", "recall@3"),
        users_per_chunk=1,
    )
    # Stage 1 candidates: user 0 {1, 2, 3}, user 1 {0, 1, 2}: item 5 is never recalled.
    assert r["stage1"]["recall@3"] == pytest.approx(0.5)
    # Stage 2 puts item 3 first for user 0; user 1's item 5 stays below every candidate.
    assert r["final"]["hit@1"] == pytest.approx(0.5)
    # Re-ordering keeps the candidate set: the same recall at K.
    assert r["final"]["recall@3"] == r["stage1"]["recall@3"]
    # Stage 2 over the whole catalog: user 0 gets items 5 and 4 above item 3.
    assert r["stage2_alone"]["hit@1"] == pytest.approx(0.5)
    assert set(r["ms_per_user"]) == {"stage1", "stage2"}
    assert all(v > 0 for v in r["ms_per_user"].values())
    with pytest.raises(ValueError, match="cutoff 5 exceeds"):
        cascade.evaluate(
            stage1,
            stage2,
            k=3,
            train=(np.array([0]), np.array([0])),
            held_out=(np.array([0]), np.array([3])),
            num_items=6,
            metrics=("ndcg@5",),
        )
    with pytest.raises(ValueError, match="k=7"):
        cascade.evaluate(
            stage1,
            stage2,
            k=7,
            train=(np.array([0]), np.array([0])),
            held_out=(np.array([0]), np.array([3])),
            num_items=6,
            metrics=("hit@1",),
        )


def test_fuse_blends_standardised_scores():
    first, second = jnp.array([[3.0, 2.0, 1.0]]), jnp.array([[10.0, 40.0, 70.0]])
    np.testing.assert_array_equal(cascade.fuse(first, second, 1.0), second)
    # Standardised, both rows are (+-1.2247, 0): weight 0 keeps stage 1's order.
    z = np.sqrt(1.5)
    np.testing.assert_allclose(cascade.fuse(first, second, 0.0), [[z, 0, -z]], rtol=1e-5)
    np.testing.assert_allclose(cascade.fuse(first, second, 0.5), [[0, 0, 0]], atol=1e-5)
    np.testing.assert_allclose(cascade.fuse(first, second, 0.25), [[z / 2, 0, -z / 2]], rtol=1e-4)
    # A candidate stage 1 could not fill (-inf: fewer unseen items than K) stays last and
    # does not spoil the others' statistics.
    got = cascade.fuse(jnp.array([[3.0, 1.0, -jnp.inf]]), jnp.array([[1.0, 3.0, 0.0]]), 0.5)
    assert np.isfinite(got[0, :2]).all() and got[0, 2] == -np.inf


def test_choose_weight_picks_the_stage_that_ranks_the_held_out_item_first():
    common = dict(
        k=3,
        train=(np.array([0]), np.array([0])),
        num_items=6,
        grid=(0.0, 0.3, 1.0),
        metric="ndcg@3",
    )
    # Item 1 is stage 1's favourite candidate for user 0, item 3 stage 2's.
    best, scores = cascade.choose_weight(stage1, stage2, held_out=([0], [1]), **common)
    # Weights 0 and 0.3 both put item 1 first; ties go to the larger weight.
    assert best == 0.3 and scores[0.0] == pytest.approx(1.0) and scores[1.0] < 1.0
    best, scores = cascade.choose_weight(stage1, stage2, held_out=([0], [3]), **common)
    assert best == 1.0 and scores[1.0] == pytest.approx(1.0)
    r = cascade.evaluate(
        stage1,
        stage2,
        held_out=(np.array([0]), np.array([1])),
        metrics=("hit@1",),
        stage2_weight=0.0,
        **{k: v for k, v in common.items() if k not in ("grid", "metric")},
    )
    assert r["final"]["hit@1"] == 1.0 and r["stage2_weight"] == 0.0


def test_finished_runs_load_and_cascade(shared_data, tmp_path):
    runs = {}
    retriever = str(tmp_path / "ml100k_two_tower")
    # The ranker takes hard negatives from the retriever's top items.
    for name, arg in (("ml100k_two_tower", ""), ("ml100k_dcn", f",retriever={retriever},hard=2")):
        c = load_config(name, "runlocal" + arg)
        trainer.train_and_evaluate(c, str(tmp_path / name))
        runs[name] = tasks_retrieval.load(str(tmp_path / name))
    assert runs["ml100k_dcn"].config.loss.hard_negatives == 2
    first, second = runs["ml100k_two_tower"], runs["ml100k_dcn"]
    # A second two-tower run adds hard negatives from ranks 3..10 of the first's items.
    c = load_config("ml100k_two_tower", f"runlocal,retriever={retriever},hard=2,skip=3")
    assert trainer.train_and_evaluate(c, str(tmp_path / "hard"))["step"] == 2
    train, n = first.parts["train"], first.log.num_items
    pool = tasks_retrieval._retrieved(c, train, n)
    everyone = np.arange(first.log.num_users)
    seen = retrieval.user_item_mask(train.users, train.items, everyone, n)
    top = np.asarray(cascade.candidates(first.scorer("valid"), everyone, seen, 10)[1])
    assert pool.shape == (first.log.num_users, 7) and (pool == top[:, 3:]).all()
    assert not np.take_along_axis(seen, np.asarray(pool), 1).any()  # never a training item
    c.loss.retriever_skip = 10
    with pytest.raises(ValueError, match="retriever_skip=10"):
        tasks_retrieval._retrieved(c, train, n)
    users = np.arange(4)
    # The loaded scorer of chosen items agrees with its catalog scores at those items.
    items = jnp.array([[0, 5, 9]] * 4)
    np.testing.assert_allclose(
        second.scorer()({"users": users, "items": items}),
        np.take_along_axis(np.asarray(second.scorer()({"users": users})), np.asarray(items), 1),
        rtol=1e-4,
        atol=1e-5,
    )
    parts = first.parts
    r = cascade.evaluate(
        first.scorer(embedding_bits=8),
        second.scorer(embedding_bits=8),
        k=20,
        train=(parts["train"].users, parts["train"].items),
        held_out=(parts["valid"].users, parts["valid"].items),
        num_items=first.log.num_items,
    )
    assert 0.0 <= r["final"]["ndcg@10"] <= 1.0 and "recall@20" in r["stage1"]
    assert first._model(True, 8) is first._model(True, 8)  # converted once, then reused
    with pytest.raises(FileNotFoundError, match="config.json"):
        tasks_retrieval.load(str(tmp_path / "missing"))
    c = load_config("ml100k_dcn", "runlocal,hard=2")  # no retriever named
    with pytest.raises(ValueError, match="loss.retriever"):
        trainer.train_and_evaluate(c, str(tmp_path / "bad"))
