"""Head and feed-forward pruning that shrinks: joint masks while training, and a compacted
served model that computes what the masked one does."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_config

from rankjax import models, serving, trainer
from rankjax.compression import compaction, quantization, serve
from rankjax.compression import sparsity as sp

SHAPE = dict(
    pretrained=False, num_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64
)


def _pairs(seed=0, lists=3, size=4, length=12, bi=False):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 500, size=(lists, size, length))
    tokens[..., 9:] = 0  # padding
    if bi:
        return {"query_tokens": tokens[..., :5], "item_tokens": tokens}
    return {"tokens": tokens, "token_types": (np.arange(length) >= 5) * np.ones_like(tokens)}


def _prune(params, encoder, layer, heads=(), units=(), width=8):
    """Zeroes the output rows of `heads` and `units` in one layer (what the masks leave)."""
    p = params[encoder][layer]
    out = np.array(p["attention"]["output"]["kernel"])
    for h in heads:
        out[h * width : (h + 1) * width] = 0
    p["attention"]["output"]["kernel"] = out
    ffn = np.array(p["ffn_output"]["kernel"])
    ffn[list(units)] = 0
    p["ffn_output"]["kernel"] = ffn


def _model_and_params(name="cross_encoder", **extra):
    model = models.get({"name": name, **SHAPE, **extra})
    x = _pairs(bi=name == "bi_encoder")
    where = np.ones(next(iter(x.values())).shape[:2], bool)
    params = model.init(jax.random.PRNGKey(0), x, where)["params"]
    return model, jax.tree_util.tree_map(np.asarray, params)


def _scores(model, params, x):
    where = np.ones(next(iter(x.values())).shape[:2], bool)
    return np.asarray(model.apply({"params": params}, x, where))


def test_compacted_cross_encoder_scores_like_the_masked_one():
    model, params = _model_and_params()
    _prune(params, "encoder", "layer_0", heads=(1, 3), units=range(0, 64, 3))
    _prune(params, "encoder", "layer_1", heads=(0, 1, 2, 3), units=range(64))  # all pruned
    small, compacted = compaction.compact(model, params)
    # Layer 0 keeps 2 heads and 42 units; layer 1 keeps one zero head and one zero unit.
    assert small.layer_sizes == ((2, 42), (1, 1))
    layer0 = compacted["encoder"]["layer_0"]
    assert layer0["attention"]["query"]["kernel"].shape == (32, 16)
    assert layer0["attention"]["output"]["kernel"].shape == (16, 32)
    assert layer0["intermediate"]["kernel"].shape == (32, 42)
    assert layer0["ffn_output"]["kernel"].shape == (42, 32)
    size = lambda t: sum(np.size(v) for v in jax.tree_util.tree_leaves(t))  # noqa: E731
    assert size(compacted) < size(params)
    x = _pairs(seed=1)
    np.testing.assert_allclose(
        _scores(small, compacted, x), _scores(model, params, x), rtol=1e-5, atol=1e-5
    )


def test_a_compacted_mpnet_keeps_each_layers_heads_of_the_relative_bias(tmp_path):
    config = {"model_type": "mpnet", "vocab_size": 600, "pad_token_id": 1}
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 40}))
    model, params = _model_and_params(checkpoint=str(tmp_path))
    bias = np.asarray(params["encoder"]["relative_attention_bias"]["embedding"])
    # Heads must differ for a wrong column to show: a distinct bias per head.
    params["encoder"]["relative_attention_bias"]["embedding"] = bias + np.arange(4) * 0.5
    _prune(params, "encoder", "layer_0", heads=(1, 3))
    _prune(params, "encoder", "layer_1", heads=(0,))
    small, compacted = compaction.compact(model, params)
    assert small.layer_sizes == ((2, 64), (3, 64))
    enc = compacted["encoder"]
    assert "relative_attention_bias" not in enc
    full = params["encoder"]["relative_attention_bias"]["embedding"]
    np.testing.assert_array_equal(enc["relative_attention_bias_0"]["embedding"], full[:, [0, 2]])
    np.testing.assert_array_equal(enc["relative_attention_bias_1"]["embedding"], full[:, 1:])
    x = _pairs(seed=1)
    np.testing.assert_allclose(
        _scores(small, compacted, x), _scores(model, params, x), rtol=1e-5, atol=1e-5
    )


def test_towers_pruned_apart_share_the_larger_size():
    model, params = _model_and_params("bi_encoder", shared=False)
    _prune(params, "query_encoder", "layer_0", heads=(0, 1, 2))
    _prune(params, "item_encoder", "layer_0", heads=(3,), units=range(10))
    small, compacted = compaction.compact(model, params)
    assert small.layer_sizes == ((3, 64), (4, 64))
    x = _pairs(seed=2, bi=True)
    np.testing.assert_allclose(
        _scores(small, compacted, x), _scores(model, params, x), rtol=1e-5, atol=1e-5
    )


def test_models_without_bert_layers_are_refused():
    with pytest.raises(ValueError, match="has no BERT layers to compact"):
        compaction.compact(models.get({"name": "mlp", "hidden_sizes": (8,)}), {})


def test_a_listwise_ranker_with_pruned_heads_is_served_with_its_masks():
    from rankjax.models import listwise

    model = listwise.tiny(num_heads=4)
    sample = (jnp.ones((1, 3, 5)), jnp.ones((1, 3), bool))
    params = model.init(jax.random.PRNGKey(0), *sample)["params"]
    s = sp.Sparsifier(pattern="heads:4", target=0.5, schedule="oneshot", start_step=1)
    served = serve.convert(lambda phase: model, params, sample, sparsifier=s)
    assert serve.LAYER_SIZES not in served
    same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, served["params"], params)
    assert all(jax.tree_util.tree_leaves(same))


def test_unit_patterns_mask_every_matrix_of_a_unit_together():
    assert sp.parse_pattern("heads:4+ffn") == sp.Units(4, True)
    assert sp.parse_pattern("ffn") == sp.Units(0, True)
    with pytest.raises(ValueError, match="'heads:H\\+ffn'"):
        sp.parse_pattern("heads:0+ffn")
    _, params = _model_and_params()
    s = sp.Sparsifier(pattern="heads:4+ffn", target=0.5, schedule="oneshot", start_step=1)
    tx = s.wrap_optax(optax.sgd(0.1))
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)
    masks = state.masks["encoder"]["layer_0"]
    width = 8
    out_rows = np.asarray(masks["attention"]["output"]["kernel"])[:, 0]
    heads = out_rows.reshape(4, width)[:, 0]
    assert heads.sum() == 2  # half the heads
    for name in ("query", "key", "value"):  # the same heads' columns
        cols = np.asarray(masks["attention"][name]["kernel"])[0]
        np.testing.assert_array_equal(cols.reshape(4, width)[:, 0], heads)
    units = np.asarray(masks["ffn_output"]["kernel"])[:, 0]
    assert units.sum() == 32
    np.testing.assert_array_equal(np.asarray(masks["intermediate"]["kernel"])[0], units)
    # Embeddings, norms and the scoring layer stay dense.
    assert np.ndim(state.masks["score"]["kernel"]) == 0


@pytest.mark.parametrize("quant", [False, True])
def test_a_pruned_text_ranker_is_served_compacted(tmp_path, quant):
    c = load_config("homedepot_cross_encoder", "runlocal")
    c.sparsity = sp.config_section(
        "heads:2+ffn", target=0.5, schedule="oneshot", start_step=1, exclude="score"
    )
    if quant:
        c.quant = quantization.config_section(weight_bits=8, activation_bits=8, exclude="score")
    results = trainer.train_and_evaluate(c, str(tmp_path))
    served = serve.load(str(tmp_path))
    np.testing.assert_array_equal(served[serve.LAYER_SIZES], [[1, 32], [1, 32]])
    with open(os.path.join(tmp_path, "compression.json")) as f:
        report = json.load(f)
    # Half the heads and units gone: the projections and feed-forward shrink by half.
    assert report["served_flops_per_item"] < 0.6 * report["dense_flops_per_item"]
    assert results["bytes"]["serving_bytes"] < results["bytes"]["float_bytes"]
    got, want = results["test_served"], results["test"]
    if quant:
        assert (
            served["aqt"]["encoder"]["layer_0"]["intermediate"]["quant_dot_general"]["qrhs"][
                "value"
            ].shape[-1]
            == 32
        )
        assert got["ndcg@5"] == pytest.approx(want["ndcg@5"], abs=0.05)
    else:  # the same function, smaller
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-4), k
    ranker = serving.load(str(tmp_path), "served")
    assert ranker.model.layer_sizes == ((1, 32), (1, 32))
    # On the device once, not copied from the host on every call.
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(ranker.variables))
    texts = ["cordless drill", "garden hose 50 ft"]
    best = serving.load(str(tmp_path), "best").score_texts("drill", texts)
    tolerance = 0.1 if quant else 1e-4
    np.testing.assert_allclose(ranker.score_texts("drill", texts), best, atol=tolerance)
