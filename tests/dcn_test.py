"""DCN-v2 feature-crossing ranker: cross-layer arithmetic, inputs, and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import trainer
from rankjax.models import dcn


def test_cross_layer_computes_x0_times_wx_plus_b_plus_x():
    rng = np.random.default_rng(0)
    x0, x = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    w, b = rng.normal(size=(4, 4)), rng.normal(size=4)
    layer = dcn.CrossLayer()
    got = layer.apply({"params": {"full": {"kernel": w, "bias": b}}}, x0, x)
    np.testing.assert_allclose(got, x0 * (x @ w + b) + x, rtol=1e-5)
    # Low rank: x0 * (U (V x) + b) + x.
    v, u = rng.normal(size=(4, 2)), rng.normal(size=(2, 4))
    params = {"down": {"kernel": v}, "up": {"kernel": u, "bias": b}}
    got = dcn.CrossLayer(low_rank=2).apply({"params": params}, x0, x)
    np.testing.assert_allclose(got, x0 * (x @ v @ u + b) + x, rtol=1e-5)


def _features(n=5):
    return {
        "user_id": jnp.arange(n) % 3,
        "item_genres": jnp.array([[1, 2, 0], [3, 0, 0], [0, 0, 0], [2, 2, 0], [1, 0, 0]])[:n],
        "price": jnp.linspace(0, 1, n),
    }


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
def test_dcn_gives_one_logit_per_row(structure):
    m = dcn.DCN({"user_id": 3, "item_genres": 4}, embed_dim=4, deep=(8,), structure=structure)
    params = m.init(jax.random.PRNGKey(0), _features())["params"]
    # x0 = two 4-wide embeddings + one float: 9 wide; cross layers keep that width.
    assert params["cross_0"]["full"]["kernel"].shape == (9, 9)
    logits = m.apply({"params": params}, _features())
    assert logits.shape == (5,) and np.isfinite(logits).all()


def test_dcn_input_errors_name_the_problem():
    m = dcn.DCN({"user_id": 3, "item_genres": 4}, embed_dim=4)
    with pytest.raises(ValueError, match="item_genres"):
        m.init(jax.random.PRNGKey(0), {"user_id": jnp.arange(2), "price": jnp.ones(2)})
    with pytest.raises(ValueError, match="structure='tower'"):
        dcn.DCN({"user_id": 3}, structure="tower").init(
            jax.random.PRNGKey(0), {"user_id": jnp.arange(2)}
        )


def test_pointwise_dcn_trains_and_serves_int8_layers_and_tables(shared_data, tmp_path):
    c = load_config("ml100k_dcn", "runlocal,loss=bce,embedding_bits=8,towers=int8")
    results = trainer.train_and_evaluate(c, str(tmp_path))
    assert results["step"] == 2 and set(results["test_served"]) == set(results["test"])
    assert results["bytes"]["serving_bytes"] < results["bytes"]["float_bytes"]
    # CTR-style figures on 10 negatives per test interaction, for both versions.
    for key in ("test_ctr", "test_served_ctr"):
        got = results[key]
        assert got["impressions"] == 11 * 9596 and 0.0 <= got["gauc"] <= 1.0, key
        assert got["logloss"] > 0
    # Untrained but for 2 steps, the served integer model agrees with the QAT one.
    assert results["test_served_ctr"]["auc"] == pytest.approx(results["test_ctr"]["auc"], abs=0.02)
