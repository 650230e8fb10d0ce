"""Models: shapes, masking, permutation equivariance, mixed precision, the Dense seam."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import models
from rankjax.models import layers, listwise, mlp

B, L, F = 3, 5, 4


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, L, F)), jnp.float32)
    where = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    return x, where


@pytest.mark.parametrize("module", [mlp.tiny(), listwise.tiny()])
def test_scores_have_list_shape_and_float32(module):
    x, where = inputs()
    params = module.init(jax.random.PRNGKey(0), x, where)
    scores = module.apply(params, x, where)
    assert scores.shape == (B, L) and scores.dtype == jnp.float32
    assert np.all(np.isfinite(scores))


def test_listwise_padding_does_not_change_valid_scores():
    m = listwise.tiny()
    x, where = inputs()
    params = m.init(jax.random.PRNGKey(0), x, where)
    noisy = jnp.where(where[..., None], x, 1e3 * jnp.ones_like(x))
    np.testing.assert_allclose(
        m.apply(params, x, where)[where], m.apply(params, noisy, where)[where], rtol=1e-5
    )


def test_listwise_items_see_their_list():
    m = listwise.tiny()
    x, where = inputs()
    params = m.init(jax.random.PRNGKey(0), x, where)
    changed = x.at[1, 4].set(5.0)  # change one valid item of list 1
    a, b = m.apply(params, x, where), m.apply(params, changed, where)
    assert not np.allclose(a[1, :4], b[1, :4])  # other items of list 1 react
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)  # other lists do not


def test_listwise_is_permutation_equivariant():
    m = listwise.tiny()
    x, _ = inputs()
    where = jnp.ones((B, L), bool)
    params = m.init(jax.random.PRNGKey(0), x, where)
    perm = np.array([3, 0, 4, 1, 2])
    np.testing.assert_allclose(
        m.apply(params, x, where)[:, perm], m.apply(params, x[:, perm], where), atol=1e-5
    )


@pytest.mark.parametrize("factory", [mlp.tiny, listwise.tiny])
def test_bfloat16_computes_in_bf16_with_float32_params(factory):
    x, where = inputs()
    f32, bf16 = factory(), factory(dtype="bfloat16")
    params = bf16.init(jax.random.PRNGKey(0), x, where)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply(p, x, where))(params))
    assert "bf16" in jaxpr
    np.testing.assert_allclose(
        bf16.apply(params, x, where), f32.apply(params, x, where), atol=0.1, rtol=0.05
    )


@pytest.mark.parametrize("factory, num_dense", [(mlp.tiny, 3), (listwise.tiny, 9)])
def test_every_weight_product_goes_through_the_seam(factory, num_dense):
    calls = []

    def counting_dot_general(path):
        def dg(lhs, rhs, dims, **kw):
            calls.append(rhs.shape)
            return jax.lax.dot_general(lhs, rhs, dims, **kw)

        return dg

    x, where = inputs()
    m = factory(dot_general_cls=counting_dot_general)
    params = m.init(jax.random.PRNGKey(0), x, where)
    calls.clear()
    m.apply(params, x, where)
    kernels = [k for k in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(k[0])]
    assert len(calls) == len(kernels) == num_dense


def test_dense_matches_matmul():
    d = layers.Dense(3)
    x = jnp.ones((2, 4))
    p = d.init(jax.random.PRNGKey(0), x)
    want = x @ p["params"]["kernel"] + p["params"]["bias"]
    np.testing.assert_allclose(d.apply(p, x), want, rtol=1e-6)


def test_registry_errors_list_valid_choices():
    with pytest.raises(ValueError, match="listwise"):
        models.get({"name": "gbdt"})
    with pytest.raises(ValueError, match="hidden_sizes"):
        models.get({"name": "mlp", "hidden": (3,)})
    with pytest.raises(ValueError, match="bfloat16"):
        layers.dtype_of("fp8")
