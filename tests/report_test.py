"""Compression report: counts read from the arrays, bytes as stored."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax.compression import quantization, report
from rankjax.models import mlp


def test_float_model_report_counts_by_hand():
    model = mlp.Model(hidden_sizes=(8,), layer_norm=False)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2, 4)), jnp.ones((1, 2), bool))
    params = jax.tree_util.tree_map(np.array, params["params"])  # writable copies
    params["Dense_0"]["kernel"][:2] = 0.0  # 16 of 32 weights pruned
    r = report.build(params)
    first, last = r["layers"]
    assert first["shape"] == [4, 8] and first["params"] == 4 * 8 + 8
    assert first["nonzeros"] == 16 and first["sparsity"] == pytest.approx(0.5)
    assert first["float_bytes"] == first["serving_bytes"] == (32 + 8) * 4
    assert first["dense_flops_per_item"] == 64 and first["effective_flops_per_item"] == 32
    assert last["shape"] == [8, 1]
    assert r["float_bytes"] == r["serving_bytes"] == (32 + 8 + 8 + 1) * 4
    assert r["dense_flops_per_item"] == 64 + 16


def test_int8_report_counts_integer_bytes_and_scales():
    q = quantization.Quantizer()
    x, where = jnp.ones((1, 2, 64)), jnp.ones((1, 2), bool)
    params = mlp.Model(hidden_sizes=(32,), layer_norm=False).init(jax.random.PRNGKey(0), x, where)
    conv = mlp.Model(
        hidden_sizes=(32,), layer_norm=False, dot_general_cls=q.dot_general_factory("convert")
    )
    served = q.convert(conv, params["params"], (x, where))
    r = report.build(params["params"], served)
    first = r["layers"][0]
    assert first["bits"] == 8
    # 64x32 int8 values, 32 float32 scales, 32 float32 biases.
    assert first["serving_bytes"] == 64 * 32 + 32 * 4 + 32 * 4
    assert r["serving_bytes"] == quantization.array_bytes(served)
    assert r["serving_ratio"] == pytest.approx(r["serving_bytes"] / r["float_bytes"])
    assert "whole model" in report.format_table(r)
