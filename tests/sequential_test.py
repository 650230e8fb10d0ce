"""SASRec-style sequential recommender: causality, padding, served tables, and training
through the trainer's retrieval task under both evaluation protocols."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from benchmarks import retrieval_topk
from rankjax import checkpoint, trainer
from rankjax.compression import embeddings
from rankjax.evaluators import retrieval
from rankjax.models import sequential
from rankjax.tasks import sequential as tasks_sequential


def _model(**kw):
    return sequential.SASRec(num_items=20, max_len=6, dim=8, num_heads=2, dropout=0.0, **kw)


def _init(m):
    return m.init(jax.random.PRNGKey(0), jnp.ones((1, m.max_len), jnp.int32))["params"]


def test_a_position_never_sees_later_items():
    m = _model()
    params = _init(m)
    a = jnp.array([[0, 3, 5, 7, 9, 11]])
    b = jnp.array([[0, 3, 5, 2, 4, 6]])  # same up to position 2, different after
    ha, hb = (m.apply({"params": params}, s) for s in (a, b))
    np.testing.assert_allclose(ha[:, :3], hb[:, :3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(ha[:, 3:], hb[:, 3:])


def test_left_padding_does_not_change_the_user_vector():
    m = _model()
    params = _init(m)
    long = m.apply({"params": params}, jnp.array([[0, 0, 0, 4, 8, 15]]), method="users")
    short = m.apply({"params": params}, jnp.array([[0, 4, 8, 15]]), method="users")
    np.testing.assert_allclose(long, short, rtol=1e-5, atol=1e-6)
    unpadded = m.apply({"params": params}, jnp.array([[4, 8, 15]]), method="users")
    np.testing.assert_allclose(long, unpadded, rtol=1e-5, atol=1e-6)


def test_served_int8_tables_score_like_the_float_model():
    m = _model()
    params = _init(m)
    served = embeddings.quantize_tree(jax.device_get(params), 8)
    history = jnp.array([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    ids = jnp.arange(20)

    def scores(model, p):
        u = model.apply({"params": p}, history, method="users")
        return u @ model.apply({"params": p}, ids, method="items").T

    want = scores(m, params)
    got = scores(_model(embedding_bits=8), served)
    assert served["item_embedding"]["values"].dtype == np.int8
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_sampled_ranking_ranks_each_positive_against_its_negatives():
    # User 0 scores items by id, user 1 by minus id.
    table = jnp.array([np.arange(6.0), -np.arange(6.0)])
    evaluator = retrieval.SampledRanking(
        users=np.array([0, 1]),
        positives=np.array([4, 4]),
        negatives=np.array([[0, 5, 1], [0, 5, 1]]),
        metrics=("hit@1", "ndcg@2", "mrr@3"),
        users_per_chunk=1,
    )
    seen = []

    def score(batch):  # the candidates' scores, as a model's item scorer gives them
        seen.append(batch["items"].shape)
        return jnp.take_along_axis(table[jnp.asarray(batch["users"])], batch["items"], axis=1)

    got = evaluator.run(score)
    assert seen == [(1, 4), (1, 4)]  # one user a call, the positive and its 3 negatives
    # User 0: item 5 beats 4 -> rank 2. User 1: 0 and 1 beat 4 -> rank 3.
    assert got["hit@1"] == 0.0
    assert got["ndcg@2"] == pytest.approx((1 / np.log2(3) + 0) / 2)
    assert got["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_right_aligned_histories_keep_the_newest_items():
    got = tasks_sequential.right_aligned([np.array([3, 1, 4, 1, 5]), np.array([], int)], 3)
    np.testing.assert_array_equal(got, [[5, 2, 6], [0, 0, 0]])


def _cyclic_log(path, num_users=120, num_items=30, length=8):
    """Every user walks the catalog in steps of one: the next item is always id + 1."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(num_users):
        start = rng.integers(num_items)
        lines += [f"u{u} i{(start + t) % num_items}" for t in range(length)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "loss, protocol, towers",
    [("softmax", "sampled", ""), ("bce", "full", "int8"), ("softmax", "full", "fp8")],
)
def test_sasrec_learns_a_deterministic_next_item(tmp_path, loss, protocol, towers):
    c = load_config(
        "beauty_sequential",
        f"runlocal,loss={loss},protocol={protocol},towers={towers},embedding_bits=8",
    )
    c.data.file = _cyclic_log(tmp_path / "log.txt")
    c.data.max_users = 0
    c.model.update(dim=16, max_len=6)
    if protocol == "sampled":
        c.evals.retrieval.num_negatives = 10
    c.optim.update(learning_rate=1e-2, warmup_steps=10)
    c.train = dict(num_steps=150, batch_size=32, log_every=50, eval_every=150)
    c.ckpt.every = 150
    results = trainer.train_and_evaluate(c, str(tmp_path / "run"))
    assert results["protocol"] == protocol
    assert set(results["test"]) == set(c.evals.retrieval.metrics)
    # The next item is fully determined by the last one; popularity knows nothing.
    assert results["test"]["mrr@10"] >= 0.85, results["test"]
    assert results["baselines"]["popularity"]["test"]["mrr@10"] <= 0.5
    # The model served with int8 tables (and int8 transformer weights) ranks as well.
    assert results["test_served"]["mrr@10"] >= 0.85, results["test_served"]
    assert results["bytes"]["serving_bytes"] < results["bytes"]["float_bytes"]
    if towers:
        served = checkpoint.load_tree(str(tmp_path / "run" / "served"))
        for layer in ("query", "key", "value", "attention_output", "ffn_hidden", "ffn_output"):
            frozen = served["aqt"]["block_0"][layer]["quant_dot_general"]
            if towers == "fp8":  # e4m3 weights, every scale fixed at conversion
                assert frozen["kernel"].dtype == jnp.float8_e4m3fn, layer
                assert frozen["input_scale"].shape == (), layer
            else:
                assert frozen["qrhs"]["value"].dtype == np.int8, layer
        # The top-K benchmark serves the run as it was evaluated, with its bytes.
        score, label, size, metrics, _ = retrieval_topk.served_scorer(str(tmp_path / "run"))
        assert size == results["bytes"]["serving_bytes"] and metrics == results["test_served"]
        assert label.endswith("int8 tables") and score({"users": np.arange(3)}).shape[0] == 3


def test_sharded_tables_train_like_one_device(tmp_path):
    """8 CPU devices, 4 along `model`: the item and position tables split by rows."""
    results = []
    for mesh in (dict(num_devices=1, model=1), dict(num_devices=8, model=4)):
        c = load_config("beauty_sequential", "runlocal,loss=sampled_softmax")
        c.data.file = _cyclic_log(tmp_path / "log.txt")
        c.data.max_users = 0
        c.model.dropout = 0.0  # dropout masks depend on the layout's random bits
        c.evals.retrieval.num_negatives = 10
        c.model.update(dim=16, max_len=6)
        c.loss.num_negatives = 8
        c.train = dict(num_steps=100, batch_size=64, log_every=100, eval_every=100)
        c.ckpt.every = 100
        c.optim.update(learning_rate=1e-2, warmup_steps=10)
        c.mesh = mesh
        results.append(trainer.train_and_evaluate(c, str(tmp_path / str(len(results)))))
    one, many = results
    assert many["sharded"] == [
        "item_embedding/embedding",
        "position_embedding/embedding",
    ]
    # The sampled softmax learns the pattern, on one device and on eight alike.
    assert one["test"]["hit@1"] >= 0.9, one["test"]
    for k, v in one["test"].items():
        assert many["test"][k] == pytest.approx(v, abs=1e-3), k


def test_sequential_config_errors_name_the_key(tmp_path):
    c = load_config("beauty_sequential", "runlocal")
    c.data.split = "random"
    with pytest.raises(ValueError, match="leave_one_out"):
        trainer.train_and_evaluate(c, str(tmp_path))
    c = load_config("beauty_sequential", "runlocal")
    c.model.temperature = 0.1
    with pytest.raises(ValueError, match="model.temperature is not one of sasrec's"):
        trainer.train_and_evaluate(c, str(tmp_path))
    c = load_config("beauty_sequential", "runlocal")
    c.loss.name = "in_batch_softmax"
    with pytest.raises(ValueError, match="valid for model sasrec"):
        trainer.train_and_evaluate(c, str(tmp_path))
    c = load_config("beauty_sequential", "runlocal")
    c.evals.retrieval.type = "sampeld_ranking"
    with pytest.raises(ValueError, match=r"evals.retrieval.type='sampeld_ranking'; valid"):
        trainer.train_and_evaluate(c, str(tmp_path))
    c = load_config("beauty_sequential", "runlocal,protocol=full")
    c.evals.retrieval.num_negatives = 10  # a sampled-ranking option
    with pytest.raises(ValueError, match="unknown config key evals.retrieval.num_negatives"):
        trainer.train_and_evaluate(c, str(tmp_path))
