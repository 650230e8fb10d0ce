"""Two-tower model: towers over ids and side features, and the retrieval config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import checkpoint, models, trainer
from rankjax.models import two_tower
from rankjax.tasks import retrieval as tasks_retrieval


def model(**kw):
    return two_tower.Model(
        num_users=5,
        num_items=7,
        user_vocab_sizes={"job": 3},
        item_vocab_sizes={"genres": 4},
        dim=8,
        **kw,
    )


def features(n):
    return {"job": jnp.arange(n) % 3}, {
        "genres": jnp.array([[1, 2, 0], [3, 0, 0], [0, 0, 0]])[:n],
        "year": jnp.linspace(0, 1, n),
    }


def test_towers_score_every_user_against_every_item():
    m = model(temperature=0.25)
    users, items = jnp.array([0, 4, 2]), jnp.array([6, 1, 0])
    uf, itf = features(3)
    params = m.init(jax.random.PRNGKey(0), users, uf, items, itf)["params"]
    assert set(params["item_tower"]) >= {"id_embedding", "genres_embedding", "floats", "output"}
    scores = m.apply({"params": params}, users, uf, items, itf)
    assert scores.shape == (3, 3)
    u = m.apply({"params": params}, users, uf, method="users")
    v = m.apply({"params": params}, items, itf, method="items")
    # Normalised towers: scores are cosines / temperature.
    np.testing.assert_allclose(np.linalg.norm(u, axis=1) ** 2, 1 / 0.25, rtol=1e-5)
    np.testing.assert_allclose(scores, u @ v.T, rtol=1e-5)
    assert np.abs(scores).max() <= 1 / 0.25 + 1e-4


def test_unknown_genre_tokens_do_not_move_the_mean():
    m = model()
    items = jnp.array([1, 1])
    _, itf = features(2)
    itf = {"genres": jnp.array([[3, 0, 0], [3, 0, 0]]), "year": jnp.zeros(2)}
    params = m.init(jax.random.PRNGKey(1), items, {"job": items}, items, itf)["params"]
    padded = {"genres": jnp.array([[3, 0, 0], [0, 3, 0]]), "year": jnp.zeros(2)}
    a = m.apply({"params": params}, items, itf, method="items")
    b = m.apply({"params": params}, items, padded, method="items")
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_retrieval_config_errors_name_the_key(tmp_path):
    c = load_config("ml100k_two_tower", "runlocal")
    c.model.tempreature = 0.1
    with pytest.raises(ValueError, match="model.tempreature"):
        trainer.train_and_evaluate(c, str(tmp_path / "w"))
    c = load_config("ml100k_two_tower", "runlocal")
    c.data.split = "temporal"
    with pytest.raises(ValueError, match="data.split='temporal'"):
        trainer.train_and_evaluate(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_served_int8_tables_score_like_the_float_towers(shared_data, tmp_path):
    c = load_config("ml100k_two_tower", "runlocal,embedding_bits=8,steps=20")
    results = trainer.train_and_evaluate(c, str(tmp_path))
    served, float_ = results["test_served"], results["test"]
    assert served["ndcg@10"] == pytest.approx(float_["ndcg@10"], abs=0.02)
    # Tables are nearly all of the bytes: int8 rows + one scale per row ~ a quarter.
    assert results["bytes"]["serving_bytes"] < 0.4 * results["bytes"]["float_bytes"]


def test_int8_towers_are_served_as_integers(shared_data, tmp_path):
    c = load_config("ml100k_two_tower", "runlocal,features,towers=int8,steps=6")
    c.model.hidden = (16,)
    results = trainer.train_and_evaluate(c, str(tmp_path))
    served = checkpoint.load_tree(str(tmp_path / "served"))
    for tower in ("user_tower", "item_tower"):
        for layer in ("hidden_0", "output"):
            frozen = served["aqt"][tower][layer]["quant_dot_general"]["qrhs"]
            assert frozen["value"].dtype == np.int8, (tower, layer)
            assert "kernel" not in served["params"][tower][layer]  # no float copy kept
    # The served integer towers compute what quantization-aware training did.
    run = tasks_retrieval.load(str(tmp_path))
    users = np.arange(50)
    batch = {"users": users}
    trained, as_served = run.scorer("test")(batch), run.scorer("test", serve=True)(batch)
    np.testing.assert_allclose(as_served, trained, atol=0.05 * float(np.abs(trained).max()))
    assert results["test_served"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=0.02)


def test_tower_quantization_config_errors(tmp_path):
    c = load_config("ml100k_two_tower", "runlocal")
    c.quant = {"mode": "qat"}
    with pytest.raises(ValueError, match="quant.mode is set but quant.enabled"):
        trainer.train_and_evaluate(c, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="towers='int9'"):
        load_config("ml100k_two_tower", "towers=int9")


def test_item_tower_reads_titles_through_minilm(shared_data, tmp_path):
    from rankjax.models import bert

    # Frozen: each title's sentence embedding is a float feature of the item tower.
    c = load_config("ml100k_two_tower", "runlocal,text=frozen")
    _, _, task = tasks_retrieval._setup(c)
    params = task.init(jax.random.PRNGKey(0))
    assert "floats" in params["item_tower"] and "text_encoder" not in params["item_tower"]
    assert task.loaded is None
    # Fine-tuned: the item tower holds MiniLM's first layer, loaded from the checkpoint.
    c = load_config("ml100k_two_tower", "runlocal,text=finetune")
    _, _, task = tasks_retrieval._setup(c)
    loaded = models.overlay(jax.device_get(task.init(jax.random.PRNGKey(0))), task.loaded)
    want = bert.pretrained_encoder("", 1)
    got = loaded["item_tower"]["text_encoder"]
    assert set(got) == set(want) == {"layer_0", *(k for k in want if not k.startswith("layer"))}
    np.testing.assert_array_equal(
        got["layer_0"]["attention"]["query"]["kernel"],
        want["layer_0"]["attention"]["query"]["kernel"],
    )
    results = trainer.train_and_evaluate(c, str(tmp_path))
    assert results["step"] == 2 and results["bytes"]["float_bytes"] > 4 * 30522 * 384
    c.model.text_mode = "tuned"
    with pytest.raises(ValueError, match="text_mode='tuned'"):
        tasks_retrieval._setup(c)
