"""Packed cross-encoder input: the packing itself, segment-masked attention, and the same
scores (and gradients) as padded pairs, with XLA's attention and the Pallas kernel."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from short_attention_test import numpy_attention

from benchmarks import speed
from rankjax import models
from rankjax.data import packing
from rankjax.kernels import short_attention


def test_round_rows_keeps_few_significant_bits():
    rows = (0, 1, 3, 5, 7, 8, 9, 17, 33, 100)
    assert [packing.round_rows(r) for r in rows] == [1, 1, 3, 6, 8, 8, 12, 24, 48, 128]
    assert [packing.round_rows(r, bits=3) for r in rows] == [1, 1, 3, 5, 7, 8, 10, 20, 40, 112]


def test_best_fit_places_every_sequence_without_overlap():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, size=300)
    row, offset, used = packing.best_fit(lengths, 64)
    assert (row[lengths == 0] == -1).all() and (row[lengths > 0] >= 0).all()
    occupied = np.zeros((used, 64), int)
    for r, o, n in zip(row, offset, lengths, strict=True):
        if n:
            occupied[r, o : o + n] += 1
    assert occupied.max() == 1 and (offset + lengths <= 64).all()
    # Best-fit decreasing is within 11/9 of the optimum (+ 1); the optimum is at least
    # the total over the capacity.
    assert used <= 11 / 9 * np.ceil(lengths.sum() / 64) + 1


def padded_batch(lengths, t=12, seed=0):
    """A padded batch `[B, N, t]` with pairs of the given real lengths (0: empty slot)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    real = np.arange(t) < lengths[..., None]
    ids = np.where(real, rng.integers(1, 50, size=lengths.shape + (t,)), 0).astype(np.int32)
    types = np.where(real & (np.arange(t) >= 3), 1, 0).astype(np.int8)
    return {
        "tokens": ids,
        "token_types": types,
        "where": lengths > 0,
        "labels": rng.random(lengths.shape).astype(np.float32),
    }


@pytest.mark.parametrize("groups", [1, 2])
def test_pack_pairs_keeps_every_pair_and_nothing_else(groups):
    lengths = [[5, 12, 0, 0], [3, 3, 3, 9], [12, 0, 0, 0], [1, 2, 7, 0]]
    batch = padded_batch(lengths)
    packed = packing.pack_pairs(batch, row_length=16, groups=groups)
    assert "tokens" not in packed and packed["labels"] is batch["labels"]
    ids = packed["packed_tokens"]
    rows = ids.shape[0] // groups
    assert ids.shape[0] % groups == 0 and ids.shape[1] == 16
    assert (ids != 0).sum() == np.sum(lengths)  # real tokens only, each once
    at = packed["packed_item_at"]
    assert at.shape == (groups, 16 // groups)
    segments, positions = packed["packed_segments"], packed["packed_positions"]
    for slot, n in enumerate(np.ravel(lengths)):
        g, local = divmod(slot, 16 // groups)
        flat = ids[g * rows : (g + 1) * rows].reshape(-1)
        start = at[g, local]
        if not n:
            assert not (segments == slot).any()
            continue
        np.testing.assert_array_equal(
            flat[start : start + n], batch["tokens"].reshape(16, -1)[slot, :n]
        )
        seg = segments[g * rows : (g + 1) * rows].reshape(-1)
        assert (seg[start : start + n] == slot).all() and (seg == slot).sum() == n
        pos = positions[g * rows : (g + 1) * rows].reshape(-1)
        np.testing.assert_array_equal(pos[start : start + n], np.arange(n))
    assert (segments[ids == 0] == -1).all()


def test_pack_pairs_explains_what_does_not_fit():
    batch = padded_batch([[5, 12]])
    with pytest.raises(ValueError, match="12 tokens does not fit data.text.pack_length=8"):
        packing.pack_pairs(batch, row_length=8)
    batch["tokens"][0, 0, 0] = 0  # a hole before real tokens
    with pytest.raises(ValueError, match="right-padded"):
        packing.pack_pairs(batch, row_length=16)
    with pytest.raises(ValueError, match="pack_length=32 is shorter than data.text.max_length"):
        packing.preparer({"pack_length": 32, "max_length": 64}, packs=True)


@pytest.mark.usefixtures("float32_products")
@pytest.mark.parametrize("fn", ["attention", "packed_attention", "reference"])
def test_segmented_attention_is_attention_within_each_segment(fn):
    rng = np.random.default_rng(1)
    shape = (3, 20, 2, 8)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    # Row 0: three sequences and padding; row 1: one full sequence; row 2: only padding.
    segments = np.full(shape[:2], -1, np.int32)
    segments[0, :4], segments[0, 4:11], segments[0, 11:17] = 3, 8, 5
    segments[1] = 2
    mask = segments >= 0
    if fn == "attention":
        out = short_attention.attention(q, k, v, mask, segments=segments)
    elif fn == "packed_attention":
        qkv = jnp.stack([q, k, v], axis=2)
        out = short_attention.packed_attention(qkv, mask, segments=segments)
    else:
        out = short_attention.reference(q, k, v, mask, segments)
    out = np.asarray(out)
    for b in range(2):
        for s in set(segments[b]) - {-1}:
            cols = np.flatnonzero(segments[b] == s)
            one = (x[b : b + 1, cols] for x in (q, k, v))
            expected = numpy_attention(*one, np.ones((1, len(cols)), bool))[0]
            np.testing.assert_allclose(out[b, cols], expected, atol=2e-6)


def test_segmented_gradients_follow_the_xla_formulation():
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32) for _ in range(3))
    segments = np.repeat(np.array([[0, 1, 1, -1], [4, 4, 5, 5]], np.int32), 3, axis=1)
    mask = segments >= 0
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask, segments=segments) * w)

    fused = jax.grad(loss(short_attention.attention), argnums=(0, 1, 2))(q, k, v)
    plain = jax.grad(loss(short_attention.reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def cross_encoder(**kw):
    config = dict(
        name="cross_encoder",
        pretrained=False,
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        dtype="float32",
    )
    return models.get({**config, **kw})


@pytest.mark.usefixtures("float32_products")
@pytest.mark.parametrize(
    "attention, pooling, groups",
    [("xla", "cls", 1), ("pallas", "cls", 2), ("xla", "mean", 2), ("pallas", "mean", 1)],
)
def test_packed_batch_scores_like_the_padded_batch(attention, pooling, groups):
    model = cross_encoder(attention=attention, pooling=pooling)
    batch = padded_batch([[5, 12, 0, 0], [3, 3, 3, 9], [12, 0, 0, 0], [1, 2, 7, 0]], seed=3)
    params = model.init(jax.random.PRNGKey(0), *models.sample_inputs(model, batch))
    packed = packing.pack_pairs(batch, row_length=24, groups=groups)
    assert models.packed(model, packed) and not models.packed(model, batch)

    def scores(b):
        return model.apply(params, models.inputs(model, b), b["where"])

    padded, packed_scores = np.asarray(scores(batch)), np.asarray(scores(packed))
    where = batch["where"]
    np.testing.assert_allclose(packed_scores[where], padded[where], atol=2e-5)
    assert (packed_scores[~where] == 0).all()

    # The same gradients too (no dropout here): training on packed rows learns the same.
    def loss(p, b):
        s = model.apply(p, models.inputs(model, b), b["where"])
        return jnp.sum(jnp.where(b["where"], s * b["labels"], 0.0))

    g_padded, g_packed = jax.grad(loss)(params, batch), jax.grad(loss)(params, packed)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_padded), jax.tree_util.tree_leaves(g_packed), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.usefixtures("float32_products")
def test_packed_mpnet_scores_like_the_padded_batch(tmp_path):
    # MPNet's relative position bias sees the same offsets within a packed pair, and its
    # absolute positions restart (past the padding id) in every pair.
    config = {"model_type": "mpnet", "vocab_size": 64, "pad_token_id": 1}
    (tmp_path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 40}))
    model = cross_encoder(checkpoint=str(tmp_path))
    assert model.bert_config.mpnet
    batch = padded_batch([[5, 12, 0, 0], [3, 3, 3, 9], [12, 0, 0, 0]], seed=4)
    params = model.init(jax.random.PRNGKey(1), *models.sample_inputs(model, batch))
    packed = packing.pack_pairs(batch, row_length=24)
    where = batch["where"]
    padded = np.asarray(model.apply(params, models.inputs(model, batch), where))
    got = np.asarray(model.apply(params, models.inputs(model, packed), packed["where"]))
    np.testing.assert_allclose(got[where], padded[where], atol=2e-5)


def test_cudnn_attention_refuses_packed_rows():
    model = cross_encoder(attention="cudnn")
    batch = padded_batch([[5, 12], [3, 0]])
    params = model.clone(attention="xla").init(
        jax.random.PRNGKey(0), *models.sample_inputs(model, batch)
    )
    packed = packing.pack_pairs(batch, row_length=16)
    with pytest.raises(ValueError, match="takes no packed rows"):
        model.apply(params, models.inputs(model, packed), packed["where"])


def test_preparer_packs_only_models_that_read_packed_pairs():
    batch = padded_batch([[5, 12, 0, 0], [3, 3, 3, 9]], t=64)
    cfg = {"pack_length": 32, "max_length": 32, "pad_multiple": 16}
    assert "packed_tokens" in packing.preparer(cfg, packs=True)(batch)
    trimmed = packing.preparer(cfg, packs=False)(batch)
    assert trimmed["tokens"].shape == (2, 4, 16)
    assert packing.preparer({}, packs=True)(batch)["tokens"].shape == (2, 4, 16)
    share = packing.real_token_share(packing.pack_pairs(batch, 32))
    assert share == pytest.approx(np.sum([5, 12, 3, 3, 3, 9]) / (2 * 32))


def test_fp8_served_cross_encoder_scores_packed_rows_like_padded_ones():
    # The fused fp8 path (one q, k, v product, scaled slots and an e4m3 output in the
    # attention kernel) with segments: the same per-token inputs give the same scores.
    shape = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=2)
    fp8 = "fp8 (static scales) served"
    _, served = speed.scoring_variants(shape, ("xla",), (fp8,), speed.pair_tokens(32, 16, 1))
    model = served.model.clone(attention="pallas", norm="pallas")
    batch = speed.pair_tokens(24, 16, 2)
    lengths = np.random.default_rng(4).integers(3, 17, size=24)
    batch["tokens"] = np.where(np.arange(16) < lengths[:, None, None], batch["tokens"], 0)
    batch["token_types"] = batch["token_types"] * (batch["tokens"] != 0)
    batch = {k: v.reshape(4, 6, 16) for k, v in batch.items()}
    batch["where"] = np.ones((4, 6), bool)
    packed = packing.pack_pairs(batch, row_length=32, groups=2)

    def scores(b):
        return np.asarray(model.apply(served.variables, models.inputs(model, b), b["where"]))

    np.testing.assert_allclose(scores(packed), scores(batch), atol=1e-2)
