"""Embedding tables split by rows over a `model` mesh axis, and the hashing trick."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import sharding, trainer
from rankjax.models import layers, two_tower


def test_padded_table_keeps_the_unpadded_rows_and_lookups():
    ids = jnp.array([0, 6, 3])
    plain, padded = layers.Embed(7, 4), layers.Embed(7, 4, row_multiple=4)
    p = plain.init(jax.random.PRNGKey(0), ids)["params"]["embedding"]
    q = padded.init(jax.random.PRNGKey(0), ids)["params"]["embedding"]
    assert p.shape == (7, 4) and q.shape == (8, 4)
    np.testing.assert_array_equal(q[:7], p)
    np.testing.assert_array_equal(q[7:], 0.0)
    np.testing.assert_array_equal(
        padded.apply({"params": {"embedding": q}}, ids),
        plain.apply({"params": {"embedding": p}}, ids),
    )


def test_hashed_ids_fall_in_range_and_spread():
    ids = jnp.arange(100_000)
    h = np.asarray(two_tower.hash_ids(ids, 1000))
    assert h.min() >= 0 and h.max() < 1000
    np.testing.assert_array_equal(h, np.asarray(two_tower.hash_ids(ids, 1000)))
    counts = np.bincount(h, minlength=1000)
    assert counts.min() > 50 and counts.max() < 150  # ~100 each, no hot bucket


def test_hashed_tower_has_a_smaller_table():
    tower = two_tower.Tower(num_ids=10_000, vocab_sizes={}, dim=8, hash_buckets=64)
    params = tower.init(jax.random.PRNGKey(0), jnp.arange(5), {})["params"]
    assert params["id_embedding"]["embedding"].shape == (64, 8)


def test_make_mesh_checks_the_model_axis():
    mesh = sharding.make_mesh(8, model=4)
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    with pytest.raises(ValueError, match="mesh.model=3"):
        sharding.make_mesh(8, model=3)


def _config(batch_size=64, **mesh):
    c = load_config("ml100k_two_tower", "runlocal,steps=6")
    world = dict(num_users=200, num_products=300, num_queries=100)
    c.data = dict(source="synthetic", split="random", world=world)
    c.train.update(batch_size=batch_size, eval_every=6)
    # Large steps from the first one: the metrics depend on every update being right.
    c.optim.update(learning_rate=0.05, warmup_steps=0)
    c.mesh = mesh
    return c


def _run(tmp_path, name, **mesh):
    return trainer.train_and_evaluate(_config(**mesh), str(tmp_path / name))


def test_tables_sharded_over_the_model_axis_train_like_one_device(tmp_path):
    one = _run(tmp_path, "one", num_devices=1, model=1)
    # 8 CPU devices: batch over 2 along `data`, every table's rows over 4 along `model`.
    many = _run(tmp_path, "many", num_devices=8, model=4)
    assert many["mesh"] == {"data": 2, "model": 4} and one["sharded"] == []
    assert "item_tower/id_embedding/embedding" in many["sharded"]
    assert "user_tower/id_embedding/embedding" in many["sharded"]
    for split in ("valid", "test"):
        for k, v in one[split].items():
            assert many[split][k] == pytest.approx(v, abs=1e-4), (split, k)

    with pytest.raises(ValueError, match="data axis"):
        c = _config(batch_size=63, num_devices=8, model=4)
        trainer.train_and_evaluate(c, str(tmp_path / "bad"))
