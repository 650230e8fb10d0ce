"""The fused short-sequence attention kernel (run by Pallas's interpreter on CPU) against
XLA's formulation and an independent NumPy one: padding, rows with no real key, sizes
that are not a block, gradients, and inside the BERT encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.models import bert, short_attention


def numpy_attention(q, k, v, mask):
    """Per sequence and head, in float64: softmax over real keys; a row with no real key
    averages `v` over all keys (what masking logits to the float minimum gives)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        keys = np.flatnonzero(mask[b])
        for h in range(q.shape[2]):
            if not keys.size:
                out[b, :, h] = v[b, :, h].mean(0)
                continue
            logits = q[b, :, h] @ k[b, keys, h].T / np.sqrt(q.shape[-1])
            w = np.exp(logits - logits.max(-1, keepdims=True))
            out[b, :, h] = (w / w.sum(-1, keepdims=True)) @ v[b, keys, h]
    return out


def inputs(shape, lengths, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for _ in range(3))
    mask = np.arange(shape[1])[None, :] < np.asarray(lengths)[:, None]
    return q, k, v, mask


@pytest.mark.parametrize("shape", [(4, 16, 2, 16), (4, 10, 3, 8), (4, 40, 1, 24)])
def test_matches_numpy_and_xla_with_padding(shape):
    # Lengths: full, partial, one token, none (that row averages all keys).
    q, k, v, mask = inputs(shape, [shape[1], shape[1] // 2 + 1, 1, 0])
    fused = np.asarray(jax.jit(short_attention.attention)(q, k, v, mask))
    np.testing.assert_allclose(fused, numpy_attention(q, k, v, mask), atol=2e-6)
    np.testing.assert_allclose(
        fused, np.asarray(short_attention.reference(q, k, v, mask)), atol=2e-6
    )


def test_bf16_inputs_stay_bf16_and_close():
    q, k, v, mask = inputs((2, 32, 2, 32), [32, 7], jnp.bfloat16, seed=1)
    fused = short_attention.attention(q, k, v, mask)
    assert fused.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(fused, np.float32), numpy_attention(q, k, v, mask), atol=2e-2
    )


def test_gradients_follow_the_xla_formulation():
    q, k, v, mask = inputs((2, 12, 2, 16), [12, 5], seed=2)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=q.shape), jnp.float32)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)

    fused = jax.grad(loss(short_attention.attention), argnums=(0, 1, 2))(q, k, v)
    plain = jax.grad(loss(short_attention.reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_shape_errors_name_the_shapes():
    q, k, v, mask = inputs((2, 8, 2, 16), [8, 8])
    with pytest.raises(ValueError, match=r"share a \[B, T, heads, D\] shape"):
        short_attention.attention(q, k[:, :4], v, mask)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\] = \(2, 8\)"):
        short_attention.attention(q, k, v, mask[:, :4])


def test_encoder_with_pallas_attention_matches_xla():
    config = bert.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    ids = jnp.asarray(np.random.default_rng(4).integers(1, 50, size=(3, 12)))
    mask = jnp.arange(12)[None, :] < jnp.array([[12], [6], [2]])
    xla = bert.Encoder(config)
    params = xla.init(jax.random.PRNGKey(0), ids, mask)
    fused = bert.Encoder(config, attention="pallas").apply(params, ids, mask)
    plain = xla.apply(params, ids, mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(plain)[real], atol=2e-5)
