"""Per-event next-item serving (`rankjax.incremental`): cached keys and values give the
same user vectors and top-K as recomputing the whole history, in float and as served
int8; and the positions that make it possible."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import incremental
from rankjax.compression import quantization
from rankjax.models import sequential

NUM_ITEMS, MAX_LEN = 300, 12


def model_and_params(**kw):
    model = sequential.SASRec(
        num_items=NUM_ITEMS, max_len=MAX_LEN, dim=16, num_layers=2, num_heads=2, **kw
    )
    seqs = jnp.ones((2, MAX_LEN), jnp.int32)
    return model, model.init(jax.random.PRNGKey(0), seqs)


def histories(users=3, length=7, seed=0):
    return np.random.default_rng(seed).integers(0, NUM_ITEMS, size=(users, length))


def full(model, variables, items):
    """User vectors recomputed from each whole history (left-padded window)."""
    seqs = np.zeros((items.shape[0], MAX_LEN), np.int32)
    seqs[:, MAX_LEN - items.shape[1] :] = items + 1
    return np.asarray(model.apply(variables, jnp.asarray(seqs), method="users"))


@pytest.mark.usefixtures("float32_products")
def test_appending_events_matches_recomputing_every_history():
    model, variables = model_and_params(positions="oldest")
    scorer = incremental.IncrementalScorer(model, variables, top_k=5)
    items = histories()
    state = scorer.start(len(items))
    table = np.asarray(model.apply(variables, jnp.arange(NUM_ITEMS), method="items"))
    for t in range(items.shape[1]):
        state, (scores, top), vec = scorer.append_with_vectors(state, items[:, t])
        want = full(model, variables, items[:, : t + 1])
        np.testing.assert_allclose(np.asarray(vec), want, atol=2e-5)
        want_top = np.argsort(-(want @ table.T), axis=1)[:, :5]
        np.testing.assert_array_equal(np.asarray(top), want_top)
        np.testing.assert_allclose(
            np.asarray(scores), np.take_along_axis(want @ table.T, want_top, 1), atol=2e-4
        )


def test_served_int8_model_appends_like_it_recomputes():
    q = quantization.Quantizer(mode="ptq", embedding_bits=8, serving="int8")
    model, variables = model_and_params(positions="oldest")
    converter = model.clone(dot_general_cls=q.dot_general_factory("convert"))
    served = q.convert(converter, variables["params"], (jnp.ones((1, MAX_LEN), jnp.int32),))
    from rankjax.compression import embeddings

    served["params"] = embeddings.quantize_tree(jax.device_get(served["params"]), 8)
    serve_model = model.clone(**q.model_seam("serve"))
    scorer = incremental.IncrementalScorer(serve_model, served, top_k=5)
    items = histories(seed=1)
    state = scorer.start(len(items))
    for t in range(items.shape[1]):
        state, _, vec = scorer.append_with_vectors(state, items[:, t])
    # Activations are quantized per token, so one token at a time rounds as the window.
    want = full(serve_model, served, items)
    np.testing.assert_allclose(np.asarray(vec), want, atol=1e-4)
    assert not np.allclose(want, full(model, variables, items), atol=1e-4)  # int8 differs


def test_oldest_positions_do_not_move_when_an_event_is_added():
    model, variables = model_and_params(positions="oldest")
    items = histories(users=2, length=4)
    shorter = full(model, variables, items[:, :3])
    # The same three events, followed by a fourth: their outputs stay (causal attention).
    seqs = np.zeros((2, MAX_LEN), np.int32)
    seqs[:, -4:] = items + 1
    hidden = np.asarray(model.apply(variables, jnp.asarray(seqs)))
    np.testing.assert_allclose(hidden[:, -2], shorter, atol=1e-5)
    newest, _ = model_and_params()
    with pytest.raises(ValueError, match="positions='oldest'"):
        incremental.IncrementalScorer(newest, variables)


def test_a_full_window_asks_for_a_recompute():
    model, variables = model_and_params(positions="oldest")
    scorer = incremental.IncrementalScorer(model, variables)
    state = scorer.start(1)
    for _ in range(MAX_LEN):
        state, _ = scorer.append(state, [3])
    with pytest.raises(ValueError, match="reached model.max_len=12"):
        scorer.append(state, [3])
