"""The fused short-sequence attention kernel (run by Pallas's interpreter on CPU) against
XLA's formulation and an independent NumPy one: padding, rows with no real key, sizes
that are not a block, gradients, and inside the BERT encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed
from rankjax import sharding
from rankjax.kernels import short_attention
from rankjax.models import bert


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


@pytest.mark.usefixtures("float32_products")
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


@pytest.mark.usefixtures("float32_products")
def test_packed_layout_reads_the_same_attention():
    q, k, v, mask = inputs((3, 10, 2, 8), [10, 4, 0], seed=5)
    qkv = jnp.stack([q, k, v], axis=2)  # [B, T, 3, heads, D], as one projection writes it
    packed = np.asarray(jax.jit(short_attention.packed_attention)(qkv, mask))
    np.testing.assert_allclose(packed, numpy_attention(q, k, v, mask), atol=2e-6)

    weights = jnp.asarray(np.random.default_rng(6).normal(size=q.shape), jnp.float32)
    grad = jax.grad(lambda x: jnp.sum(short_attention.packed_attention(x, mask) * weights))(qkv)
    plain = jax.grad(
        lambda q, k, v: jnp.sum(short_attention.reference(q, k, v, mask) * weights),
        argnums=(0, 1, 2),
    )(q, k, v)
    np.testing.assert_allclose(np.asarray(grad), np.stack(plain, axis=2), atol=1e-5)


def test_shape_errors_name_the_shapes():
    q, k, v, mask = inputs((2, 8, 2, 16), [8, 8])
    with pytest.raises(ValueError, match=r"share a \[B, T, heads, D\] shape"):
        short_attention.attention(q, k[:, :4], v, mask)
    with pytest.raises(ValueError, match=r"mask must be \[B, T\] = \(2, 8\)"):
        short_attention.attention(q, k, v, mask[:, :4])
    with pytest.raises(ValueError, match=r"qkv must be \[B, T, 3, heads, D\]; got \(2, 8, 2, 16\)"):
        short_attention.packed_attention(q, mask)


CONFIG = bert.BertConfig(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
)


def encoder_inputs():
    ids = jnp.asarray(np.random.default_rng(4).integers(1, 50, size=(3, 12)))
    mask = jnp.arange(12)[None, :] < jnp.array([[12], [6], [2]])
    return ids, mask


@pytest.mark.usefixtures("float32_products")
@pytest.mark.parametrize("norm", ["xla", "pallas"])
def test_encoder_with_pallas_kernels_matches_xla(norm):
    # Pallas attention reads a packed q, k, v product; the LayerNorm kernel is optional.
    ids, mask = encoder_inputs()
    xla = bert.Encoder(CONFIG, attention="xla", norm="xla")
    params = xla.init(jax.random.PRNGKey(0), ids, mask)
    fused = bert.Encoder(CONFIG, attention="pallas", norm=norm).apply(params, ids, mask)
    plain = xla.apply(params, ids, mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(plain)[real], atol=2e-5)


def test_pallas_kernels_declare_the_same_parameters():
    # Checkpoints, pruning and quantization address query/key/value and the LayerNorms by
    # name: the packed product and the fused LayerNorm must not change the tree.
    ids, mask = encoder_inputs()
    xla = bert.Encoder(CONFIG, attention="xla", norm="xla").init(jax.random.PRNGKey(0), ids, mask)
    fused = bert.Encoder(CONFIG, attention="pallas", norm="pallas")
    jax.tree.map(np.testing.assert_array_equal, fused.init(jax.random.PRNGKey(0), ids, mask), xla)


def test_bf16_encoder_with_fused_norm_is_as_close_to_float32_as_xla():
    # The fused LayerNorm stores its output (the residual stream) in bf16, where XLA's
    # keeps float32: its error against the float32 encoder must stay at XLA's bf16 level.
    ids, mask = encoder_inputs()
    exact = bert.Encoder(CONFIG, attention="xla", norm="xla")
    params = exact.init(jax.random.PRNGKey(1), ids, mask)
    real = np.asarray(mask)
    want = np.asarray(exact.apply(params, ids, mask))[real]

    def error(attention, norm):
        model = bert.Encoder(CONFIG, dtype=jnp.bfloat16, attention=attention, norm=norm)
        out = model.apply(params, ids, mask)
        assert out.dtype == jnp.bfloat16
        return np.abs(np.asarray(out, np.float32)[real] - want)

    fused, xla = error("pallas", "pallas"), error("xla", "xla")
    assert fused.max() < 0.05 and xla.max() < 0.05
    assert fused.mean() < 1.25 * xla.mean()


def test_norm_kernel_resolves_auto_and_rejects_unknown_names(monkeypatch):
    assert bert.norm_kernel("pallas", train=True) == "pallas"
    with pytest.raises(ValueError, match=r"model.norm='fused'; valid: \['auto', 'xla', 'pallas'\]"):
        bert.norm_kernel("fused", train=False)
    monkeypatch.setattr(bert.jax, "default_backend", lambda: "cpu")
    assert bert.norm_kernel("auto", train=False) == "xla"
    monkeypatch.setattr(bert.jax, "default_backend", lambda: "gpu")
    assert bert.norm_kernel("auto", train=False) == "pallas"
    assert bert.norm_kernel("auto", train=True) == "xla"  # training keeps XLA's numerics


def test_kernels_split_over_the_batch_under_a_context_mesh(data_mesh):
    # In a data-parallel jit XLA cannot partition the Pallas kernels itself: it gathers
    # the whole batch onto every device. Under a context mesh (as the trainer sets it)
    # each device runs the kernels on its share: no all-gather, the same scores.
    shape = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=1)
    model = speed.cross_encoder_model(shape, dtype="bfloat16", attention="pallas", norm="pallas")
    tokens, where = speed.pair_tokens(8, 16, 0), jnp.ones((8, 1), bool)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens, where)
    want = np.asarray(jax.jit(lambda v: model.apply(v, tokens, where, train=False))(variables))
    mesh = data_mesh
    score = jax.jit(
        lambda v, t, w: model.apply(v, t, w, train=False),
        in_shardings=(sharding.replicated(mesh), *[sharding.batch_sharding(mesh)] * 2),
    )

    def compile_score():
        return score.lower(variables, tokens, where).compile()

    # Without the context the kernels see the whole batch.
    assert compile_score().as_text().count("all-gather") > 0
    # `sharding.with_mesh` (how the trainer calls its evaluation) sets the context; the
    # program compiled under it is inspected and run (one compile).
    assert sharding.with_mesh(jax.sharding.get_abstract_mesh, mesh)().axis_names == ("data",)
    compiled = sharding.with_mesh(compile_score, mesh)()
    assert compiled.as_text().count("all-gather") == 0
    np.testing.assert_array_equal(np.asarray(compiled(variables, tokens, where)), want)
    with jax.set_mesh(mesh):
        # A batch the data axis cannot split evenly runs whole, still correct.
        odd = speed.pair_tokens(7, 16, 0)
        got = jax.jit(lambda v, t: model.apply(v, t, jnp.ones((7, 1), bool), train=False))(
            variables, odd
        )
        plain = model.apply(variables, odd, jnp.ones((7, 1), bool), train=False)
        np.testing.assert_allclose(np.asarray(got), np.asarray(plain), atol=1e-6)
