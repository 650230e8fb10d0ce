"""compression.serve: trained parameters -> served tree -> saved -> loaded -> scored."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rankjax import checkpoint
from rankjax.compression import quantization, serve, sparsity
from rankjax.models import mlp

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 8)), jnp.float32)
WHERE = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [3], [1]]))


def _build(quantizer):
    def build(phase):
        seam = {} if quantizer is None else quantizer.model_seam(phase)
        return mlp.tiny(**seam)

    return build


def _nm_params(params, sparsifier):
    """`params` with every kernel the sparsifier selects pruned to 2:4 along its input."""

    def prune(path, w):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if w.ndim != 2 or not sparsifier.selects(name, w):
            return w
        return w * sparsity.nm_mask(jnp.abs(w), 2, 4)

    return jax.tree_util.tree_map_with_path(prune, params)


@pytest.mark.parametrize("quantized", [False, True])
def test_round_trip_serves_what_training_computed(tmp_path, quantized):
    quantizer = quantization.Quantizer() if quantized else None
    sparsifier = sparsity.Sparsifier(pattern="2:4", exclude="^score")
    build = _build(quantizer)
    params = build("train").init(jax.random.PRNGKey(0), X, WHERE)["params"]
    params = _nm_params(params, sparsifier)
    want = build("train").apply({"params": params}, X, WHERE)

    served = serve.convert(build, params, (X, WHERE), quantizer=quantizer, sparsifier=sparsifier)
    loaded = serve.round_trip(str(tmp_path), served, sparsifier)
    got = build("serve").apply(loaded, X, WHERE)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)

    # On disk: N:M kernels packed (half their values), and with a quantizer, integers
    # without the float kernels they replace.
    saved = checkpoint.load_tree(str(tmp_path / serve.SERVED_DIR))
    leaves = {
        "/".join(str(getattr(k, "key", k)) for k in p): v
        for p, v in jax.tree_util.tree_leaves_with_path(saved)
    }
    assert any(sparsity.PACKED_VALUES in path for path in leaves)
    if quantized:
        assert not any(path.endswith("Dense_0/kernel") for path in leaves)
        assert any(np.asarray(v).dtype == np.int8 for v in leaves.values())


def test_static_calibration_needs_its_batches():
    quantizer = quantization.Quantizer(calibration="static", mode="ptq")
    build = _build(quantizer)
    params = build("train").init(jax.random.PRNGKey(0), X, WHERE)["params"]
    with pytest.raises(ValueError, match="at least one batch"):
        serve.convert(build, params, (X, WHERE), quantizer=quantizer)
    served = serve.convert(
        build, params, (X, WHERE), quantizer=quantizer, calibration_batches=[(X, WHERE)]
    )
    assert quantization.CALIBRATION_COLLECTION in served


def test_embedding_bits_store_tables_as_integer_rows():
    params = {"items": {"embedding": np.ones((10, 8), np.float32)}, "dense": {"kernel": 1.0}}
    served = serve.convert(_build(None), params, None, embedding_bits=8)
    assert set(served["params"]["items"]) == {"values", "scales"}
    assert served["params"]["dense"] == {"kernel": 1.0}


def test_load_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/served: no served model"):
        serve.load(str(tmp_path))
