"""Top-K retrieval: the catalog sharded over 8 CPU devices gives the unsharded results."""

import jax
import numpy as np
import pytest

from benchmarks import topk
from rankjax import sharding


def vectors(n, m, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


def test_exact_top_k_matches_numpy():
    q, items = vectors(5, 300)
    scores, ids = topk.top_k(q, items, 10)
    want = np.argsort(-(q @ items.T), axis=1)[:, :10]
    np.testing.assert_array_equal(np.asarray(ids), want)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ items.T, want, 1), rtol=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_sharded_catalog_matches_one_device(approximate):
    assert jax.device_count() >= 8
    mesh = sharding.make_mesh(8)
    q, items = vectors(7, 8 * 40)
    s1, i1 = topk.top_k(q, items, 12)
    s8, i8 = topk.sharded_top_k(q, items, 12, mesh, approximate=approximate)
    # On CPU approx_max_k searches exactly, so both agree exactly here.
    np.testing.assert_array_equal(np.asarray(i8), np.asarray(i1))
    np.testing.assert_allclose(s8, s1, rtol=1e-5)


def test_sharded_top_k_checks_shapes():
    mesh = sharding.make_mesh(8)
    q, items = vectors(2, 30)
    with pytest.raises(ValueError, match="does not split over 8"):
        topk.sharded_top_k(q, items, 2, mesh)
    q, items = vectors(2, 16)
    with pytest.raises(ValueError, match="fewer than k=5"):
        topk.sharded_top_k(q, items, 5, mesh)
