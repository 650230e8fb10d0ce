"""Losses by name: each is rax's, with the documented options."""

import jax.numpy as jnp
import numpy as np
import pytest
import rax

from rankjax import losses

SCORES = jnp.array([[0.5, 2.0, -1.0, 0.3], [1.0, 0.0, 0.2, 3.0]])
LABELS = jnp.array([[1.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0]])
WHERE = jnp.array([[True, True, True, False], [True, True, True, True]])


@pytest.mark.parametrize(
    "name, reference",
    [
        ("softmax", rax.softmax_loss),
        ("pairwise_logistic", rax.pairwise_logistic_loss),
        ("pairwise_hinge", rax.pairwise_hinge_loss),
        ("listmle", rax.listmle_loss),
        ("mse", rax.pointwise_mse_loss),
    ],
)
def test_named_losses_are_rax_losses(name, reference):
    got = losses.get(name)(SCORES, LABELS, where=WHERE)
    np.testing.assert_allclose(got, reference(SCORES, LABELS, where=WHERE), rtol=1e-6)


def test_lambdaweight_is_passed_to_pairwise_loss():
    got = losses.get("pairwise_logistic", lambdaweight="dcg")(SCORES, LABELS, where=WHERE)
    want = rax.pairwise_logistic_loss(
        SCORES, LABELS, where=WHERE, lambdaweight_fn=rax.dcg_lambdaweight
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.isclose(got, losses.get("pairwise_logistic")(SCORES, LABELS, where=WHERE))


def test_sigmoid_loss_scales_labels_to_unit_interval():
    got = losses.get("sigmoid", max_label=3.0)(SCORES, LABELS, where=WHERE)
    want = rax.pointwise_sigmoid_loss(SCORES, LABELS / 3.0, where=WHERE)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_approx_ndcg_approaches_minus_ndcg_at_low_temperature():
    scores = jnp.array([[3.0, 1.0, 2.0, 0.0]])
    labels = jnp.array([[1.0, 3.0, 0.0, 2.0]])
    ndcg = rax.ndcg_metric(scores, labels)
    got = losses.get("approx_ndcg", temperature=1e-3)(scores, labels)
    np.testing.assert_allclose(got, -ndcg, rtol=1e-4)
    smooth = losses.get("approx_ndcg", temperature=1.0)(scores, labels)
    assert not np.isclose(smooth, -ndcg, rtol=1e-3)


def test_approx_ndcg_has_useful_gradients():
    import jax

    g = jax.grad(lambda s: losses.approx_ndcg_loss(s, LABELS, where=WHERE))(SCORES)
    assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0
    assert g[0, 3] == 0  # padding gets no gradient


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "hinge"}, "valid"),
        ({"name": "softmax", "lambdaweight": "dcg"}, "pairwise"),
        ({"name": "pairwise_logistic", "lambdaweight": "ndcg"}, "lambdaweight"),
        ({"name": "sigmoid", "max_label": 0.0}, "max_label"),
    ],
)
def test_bad_loss_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.get(**kwargs)


def test_in_batch_softmax_matches_hand_value_with_log_q_and_accidental_hits():
    logits = jnp.array([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.5, 0.0, 1.0]])
    items = jnp.array([7, 8, 7])  # rows 0 and 2 share item 7: an accidental hit each
    log_q = jnp.log(jnp.array([0.5, 0.25, 0.5]))
    got = losses.in_batch_softmax_loss(logits, items, log_q)
    z = np.array(logits) - np.log([0.5, 0.25, 0.5])[None, :]
    row0 = -(z[0, 0] - np.log(np.exp(z[0, 0]) + np.exp(z[0, 1])))  # column 2 removed
    row1 = -(z[1, 1] - np.log(np.exp(z[1]).sum()))
    row2 = -(z[2, 2] - np.log(np.exp(z[2, 1]) + np.exp(z[2, 2])))  # column 0 removed
    assert float(got) == pytest.approx((row0 + row1 + row2) / 3, rel=1e-5)
    plain = losses.in_batch_softmax_loss(logits, jnp.array([1, 2, 3]))
    want = -np.mean(np.diag(np.array(logits)) - np.log(np.exp(np.array(logits)).sum(1)))
    assert float(plain) == pytest.approx(want, rel=1e-5)


def test_in_batch_softmax_adds_each_rows_hard_negatives_with_their_own_log_q():
    logits = jnp.array([[2.0, 0.0], [1.0, 3.0]])
    items = jnp.array([4, 5])
    log_q = jnp.log(jnp.array([0.5, 0.25]))
    hard_ids = jnp.array([[6, 4], [9, 1]])  # row 0's second hard negative is its positive
    hard = jnp.array([[1.5, 9.0], [2.5, -1.0]])
    got = losses.in_batch_softmax_loss(logits, items, log_q, hard, hard_ids, np.log(0.25))
    z = np.array(logits) - np.log([0.5, 0.25])[None, :]
    h = lambda x: np.exp(x - np.log(0.25))  # noqa: E731  (hard negatives' own correction)
    row0 = -(z[0, 0] - np.log(np.exp(z[0]).sum() + h(1.5)))
    row1 = -(z[1, 1] - np.log(np.exp(z[1]).sum() + h(2.5) + h(-1.0)))
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-5)
