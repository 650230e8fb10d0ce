"""Ranking distillation losses (hand-computed), the objective, and student initialisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.compression import distillation

WHERE = jnp.array([[True, True, True], [True, True, False]])


def test_listwise_kl_is_zero_for_equal_lists_and_matches_hand_value():
    s = jnp.array([[1.0, 2.0, 3.0], [0.0, 1.0, 9.0]])
    assert distillation.listwise_kl_loss(s, s, where=WHERE) == pytest.approx(0.0, abs=1e-6)
    t = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    p = np.full(3, 1 / 3)
    q = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
    kl1 = float((p * np.log(p / q)).sum())
    p2, q2 = np.array([0.5, 0.5]), np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    kl2 = float((p2 * np.log(p2 / q2)).sum())  # padding (score 9, 5) is ignored
    got = distillation.listwise_kl_loss(s, t, where=WHERE)
    assert got == pytest.approx((kl1 + kl2) / 2, rel=1e-5)


def test_margin_mse_ignores_a_shift_and_counts_ordered_pairs():
    t = jnp.array([[0.0, 1.0, 3.0], [0.0, 2.0, 0.0]])
    assert distillation.margin_mse_loss(t + 5.0, t, where=WHERE) == pytest.approx(0.0)
    s = jnp.zeros((2, 3))
    # List 1: margins 1, 3, 2 (each twice, both orders) over 6 pairs; list 2: margin 2.
    want = ((1 + 9 + 4) * 2 / 6 + (4 * 2) / 2) / 2
    assert distillation.margin_mse_loss(s, t, where=WHERE) == pytest.approx(want)


def test_score_mse_is_a_mean_of_list_means():
    s = jnp.array([[1.0, 1.0, 1.0], [2.0, 0.0, 7.0]])
    t = jnp.zeros((2, 3))
    assert distillation.score_mse_loss(s, t, where=WHERE) == pytest.approx((1.0 + 2.0) / 2)


def test_objective_adds_weighted_distillation_to_the_label_loss():
    d = distillation.from_config({"teacher": "/t", "loss": "mse", "weight": 0.5})
    batch = {"labels": jnp.ones((2, 3)), "teacher": jnp.zeros((2, 3)), "where": WHERE}
    label_loss = lambda s, y, where: jnp.float32(2.0)  # noqa: E731
    assert d.objective(label_loss)(jnp.ones((2, 3)), batch) == pytest.approx(2.0 + 0.5 * 1.0)


def test_bad_distill_config_names_the_key():
    with pytest.raises(ValueError, match="distill.loss"):
        distillation.from_config({"teacher": "/t", "loss": "kl"})
    with pytest.raises(ValueError, match="distill.tempreature"):
        distillation.from_config({"teacher": "/t", "tempreature": 2.0})
    with pytest.raises(ValueError, match="teacher"):
        distillation.from_config({"teacher": ""})


def test_init_from_teacher_maps_chosen_layers_and_skips_mismatches():
    teacher = {
        "encoder": {f"layer_{i}": {"w": np.full((2, 2), float(i))} for i in range(6)},
        "score": {"kernel": np.ones((2, 1))},
        "other": {"kernel": np.ones((3, 1))},
    }
    student = {
        "encoder": {f"layer_{j}": {"w": jnp.zeros((2, 2))} for j in range(3)},
        "score": {"kernel": jnp.zeros((2, 1))},
        "other": {"kernel": jnp.zeros((4, 1))},  # shape differs: kept as initialised
    }
    params, copied = distillation.init_from_teacher(student, teacher, (0, 2, 5))
    assert [float(params["encoder"][f"layer_{j}"]["w"][0, 0]) for j in range(3)] == [0, 2, 5]
    assert float(params["score"]["kernel"][0, 0]) == 1.0
    assert float(params["other"]["kernel"][0, 0]) == 0.0
    assert sorted(copied) == sorted(
        ["encoder/layer_0/w", "encoder/layer_1/w", "encoder/layer_2/w", "score/kernel"]
    )


def test_pca_projection_keeps_the_directions_of_largest_variance():
    rng = np.random.default_rng(0)
    # Rows vary mostly along two known orthogonal directions of a 6-wide space.
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    coords = rng.normal(size=(500, 6)) * np.array([10.0, 5.0, 0.1, 0.1, 0.1, 0.1])
    table = coords @ basis.T + 3.0
    p = distillation.pca_projection(table, 2)
    assert p.shape == (6, 2)
    np.testing.assert_allclose(p.T @ p, np.eye(2), atol=1e-5)
    # The projection spans the two dominant directions.
    np.testing.assert_allclose(np.abs(basis[:, :2].T @ p), np.eye(2), atol=0.02)
    with pytest.raises(ValueError, match="width 7"):
        distillation.pca_projection(table, 7)


def test_init_from_teacher_projects_embeddings_of_a_narrower_student():
    rng = np.random.default_rng(1)
    words = rng.normal(size=(50, 8)).astype(np.float32)
    positions = rng.normal(size=(10, 8)).astype(np.float32)
    teacher = {
        "embeddings": {
            "word_embeddings": {"embedding": words},
            "position_embeddings": {"embedding": positions},
        },
        "layer_0": {"w": np.ones((8, 8))},
    }
    student = {
        "embeddings": {
            "word_embeddings": {"embedding": jnp.zeros((50, 3))},
            "position_embeddings": {"embedding": jnp.zeros((10, 3))},
        },
        "layer_0": {"w": jnp.zeros((3, 3))},
    }
    plain, copied = distillation.init_from_teacher(student, teacher, ())
    assert copied == [] and float(jnp.abs(plain["layer_0"]["w"]).sum()) == 0.0
    params, copied = distillation.init_from_teacher(student, teacher, (), embeddings="pca")
    p = distillation.pca_projection(words, 3)
    emb = params["embeddings"]
    np.testing.assert_allclose(emb["word_embeddings"]["embedding"], words @ p, rtol=1e-5)
    np.testing.assert_allclose(emb["position_embeddings"]["embedding"], positions @ p, rtol=1e-5)
    assert float(jnp.abs(params["layer_0"]["w"]).sum()) == 0.0  # not an embedding: fresh
    assert len(copied) == 2
    with pytest.raises(ValueError, match="init_from_teacher"):
        distillation.from_config({"teacher": "/t", "init_embeddings": "pca"})
    with pytest.raises(ValueError, match="init_embeddings='svd'"):
        distillation.from_config(
            {"teacher": "/t", "init_embeddings": "svd", "init_from_teacher": True}
        )


def test_score_items_returns_scores_in_item_order():
    from rankjax.data.dataset import from_groups

    d = from_groups(np.arange(7, dtype=np.float32)[:, None], np.zeros(7), [3, 1, 2, 1])
    got = distillation.score_items(
        lambda b: b["features"][..., 0] * 10, d, batch_size=3, list_size=4
    )
    np.testing.assert_allclose(got, np.arange(7) * 10.0)
    with pytest.raises(ValueError, match="longest list"):
        distillation.score_items(lambda b: b["labels"], d, batch_size=3, list_size=2)


@pytest.mark.parametrize("name", ["mse", "softmax"])
def test_unlabelled_lists_leave_the_label_loss_alone_and_feed_the_teacher_term(name):
    from rankjax import losses

    label_loss = losses.get(name=name)
    scores = jnp.array([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]])
    labels = jnp.array([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    teacher = jnp.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    where = jnp.ones((2, 3), bool)
    labelled = jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # list 2: catalog pairs
    d = distillation.from_config({"teacher": "/t", "loss": "mse", "weight": 0.5})
    batch = {"labels": labels, "teacher": teacher, "where": where, "labelled": labelled}
    got = d.objective(label_loss)(scores, batch)
    # The label loss of list 1 alone (list 2 is not counted, not even as an empty list),
    # the teacher's term over both lists: mean of list means of squared differences.
    alone = label_loss(scores[:1], labels[:1], where=where[:1])
    kd = np.mean([np.mean((scores[i] - teacher[i]) ** 2) for i in range(2)])
    assert float(got) == pytest.approx(float(alone) + 0.5 * kd, rel=1e-5)
    with pytest.raises(ValueError, match="catalog_pairs=-1"):
        distillation.from_config({"teacher": "/t", "catalog_pairs": -1})
