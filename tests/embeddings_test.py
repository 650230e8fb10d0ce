"""Row-wise quantized embedding tables: round trips, int4 packing, served lookups."""

import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.compression import embeddings
from rankjax.models import layers


@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_at_most_half_a_step(bits):
    table = np.random.default_rng(0).normal(size=(50, 256)).astype(np.float32)
    table[3] = 0.0  # an all-zero row keeps scale 0 and decodes to zeros
    q = embeddings.quantize_table(table, bits)
    width = 128 if bits == 4 else 256
    assert q["values"].shape == (50, width) and q["scales"].shape == (50, 2)
    ids = jnp.arange(50)
    got = np.asarray(
        embeddings.lookup(jnp.asarray(q["values"]), jnp.asarray(q["scales"]), ids, bits)
    )
    step = np.repeat(q["scales"], 128, axis=1)
    assert (np.abs(got - table) <= step / 2 + 1e-6).all()
    np.testing.assert_array_equal(got[3], 0.0)


def test_int4_packing_keeps_every_value_including_negatives():
    # Integer-valued rows with max 7: every value in -7..7 is exact after the round trip.
    row = np.arange(-7, 9, dtype=np.float32).clip(-7, 7)
    table = np.tile(row, (2, 8))  # width 128
    q = embeddings.quantize_table(table, 4)
    got = embeddings.lookup(jnp.asarray(q["values"]), jnp.asarray(q["scales"]), jnp.array([1]), 4)
    np.testing.assert_allclose(np.asarray(got)[0], table[1], atol=1e-6)


def test_quantize_tree_replaces_only_embedding_tables():
    tree = {"word": {"embedding": np.ones((4, 8))}, "dense": {"kernel": np.ones((8, 2))}}
    out = embeddings.quantize_tree(tree, 8)
    assert set(out["word"]) == {"values", "scales"} and out["word"]["values"].dtype == np.int8
    assert out["dense"]["kernel"] is tree["dense"]["kernel"]


def test_served_embed_layer_reads_the_quantized_table():
    table = np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32)
    ids = jnp.array([[1, 9, 0]])
    float_out = layers.Embed(10, 8).apply({"params": {"embedding": table}}, ids)
    served = embeddings.quantize_tree({"embedding": {"embedding": table}}, 8)["embedding"]
    q_out = layers.Embed(10, 8, bits=8).apply({"params": served}, ids)
    np.testing.assert_allclose(q_out, float_out, atol=np.abs(table).max() / 127)


def test_bad_bits_are_named():
    with pytest.raises(ValueError, match="embedding_bits"):
        embeddings.quantize_table(np.ones((2, 4)), 2)
