"""The fused LayerNorm kernel (run by Pallas's interpreter on CPU) against float64 NumPy
and Flax's `nn.LayerNorm`: widths that are not a power of two, row counts with no
power-of-two factor, bf16, gradients, and the parameter tree it declares."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.kernels import fused_norm


def numpy_layer_norm(x, scale, bias, epsilon):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * np.asarray(scale) + np.asarray(bias)


def inputs(shape, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    # An offset and a spread that differ per row, as a residual stream has.
    x = rng.normal(size=shape) * rng.uniform(0.5, 4, size=shape[:-1] + (1,)) + 3.0
    scale = jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)
    bias = jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)
    return jnp.asarray(x, dtype), scale, bias


# Widths: 384 (three 128-wide chunks, MiniLM), 40 (five 8-wide chunks), 64 (one chunk).
# Row counts: 64 (16 per program), 15 (odd: one row per program), 6 (two per program).
@pytest.mark.parametrize("shape", [(4, 16, 384), (3, 5, 40), (6, 64)])
def test_matches_numpy_and_flax(shape):
    x, scale, bias = inputs(shape)
    fused = np.asarray(jax.jit(fused_norm.layer_norm, static_argnums=3)(x, scale, bias, 1e-12))
    np.testing.assert_allclose(fused, numpy_layer_norm(x, scale, bias, 1e-12), atol=2e-5)
    flax_norm = nn.LayerNorm(epsilon=1e-12)
    flax_out = flax_norm.apply({"params": {"scale": scale, "bias": bias}}, x)
    np.testing.assert_allclose(fused, np.asarray(flax_out), atol=2e-5)


def test_bf16_stays_bf16_with_float32_statistics():
    x, scale, bias = inputs((2, 8, 384), jnp.bfloat16, seed=1)
    fused = fused_norm.layer_norm(x, scale, bias, 1e-12)
    assert fused.dtype == jnp.bfloat16
    want = numpy_layer_norm(np.asarray(x, np.float32), scale, bias, 1e-12)
    # One bf16 rounding of outputs up to ~10: 2^-8 relative.
    np.testing.assert_allclose(np.asarray(fused, np.float32), want, rtol=8e-3, atol=8e-3)


def test_gradients_follow_the_xla_formulation():
    x, scale, bias = inputs((3, 4, 48), seed=2)
    weights = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b, 1e-6) * weights)

    fused = jax.grad(loss(fused_norm.layer_norm), argnums=(0, 1, 2))(x, scale, bias)
    plain = jax.grad(loss(fused_norm.reference), argnums=(0, 1, 2))(x, scale, bias)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_module_declares_flax_layer_norm_parameters():
    x = jnp.ones((2, 3, 24))
    mine = fused_norm.LayerNorm(1e-6).init(jax.random.PRNGKey(0), x)
    flax_params = nn.LayerNorm().init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), mine) == jax.tree.map(
        lambda a: (a.shape, a.dtype), flax_params
    )
    jax.tree.map(np.testing.assert_array_equal, mine, flax_params)


def test_parameter_shape_error_names_the_shapes():
    x, scale, bias = inputs((2, 32))
    with pytest.raises(ValueError, match=r"scale and bias must be \[32\] for x \(2, 32\)"):
        fused_norm.layer_norm(x, scale[:16], bias, 1e-6)
