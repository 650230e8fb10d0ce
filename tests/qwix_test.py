"""Qwix, the second quantization backend: served outputs equal the QAT outputs, the stored
weights are integers (or e4m3) with the float kernels gone, the arithmetic is the one
documented (checked against NumPy), it selects the same layers as AQT, it quantizes plain
Flax modules, and the trainer converts, saves, reports and serves through it."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config

from rankjax import checkpoint, serving, trainer
from rankjax.compression import forms, quantization
from rankjax.models import listwise, mlp

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 5)), jnp.float32)
WHERE = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [3], [1]]))


def qwix(**settings) -> quantization.Quantizer:
    return quantization.Quantizer(backend="qwix", **settings)


def train_convert_serve(make, q, *args, build=quantization.build):
    """Float parameters, QAT outputs, the served tree and the served outputs of `make`'s
    module on `args`; `build(make, q, phase)` quantizes it for each phase."""
    model = build(make, q, "train")
    params = model.init(jax.random.PRNGKey(0), *args)["params"]
    qat = model.apply({"params": params}, *args)
    served = q.convert(build(make, q, "convert"), params, args)
    out = build(make, q, "serve").apply(served, *args)
    return params, qat, served, out


def wrap(make, q, phase):
    """A plain Flax module quantized as a user's own code would: `Quantizer.wrap`."""
    return q.wrap(make(), phase)


def stored_dtypes(served) -> dict[str, str]:
    flat = {
        "/".join(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(served["params"])
    }
    return {p: str(v.dtype) for p, v in flat.items() if p.endswith(("kernel", "qvalue"))}


@pytest.mark.parametrize("factory", [mlp.tiny, listwise.tiny])
@pytest.mark.parametrize(
    "weight_bits, activation_bits, fp8", [(8, 8, False), (4, 0, False), (4, 8, False), (8, 8, True)]
)
def test_served_outputs_match_qat_outputs(factory, weight_bits, activation_bits, fp8):
    q = qwix(weight_bits=weight_bits, activation_bits=activation_bits, fp8=fp8)
    params, qat, _, served_out = train_convert_serve(factory, q, X, WHERE)
    np.testing.assert_allclose(served_out, qat, rtol=1e-6, atol=1e-6)
    float_out = factory().apply({"params": params}, X, WHERE)
    assert not np.allclose(float_out, qat, atol=1e-7)  # quantization did change something


@pytest.mark.parametrize(
    "weight_bits, fp8, dtype", [(8, False, "int8"), (4, False, "int4"), (8, True, "float8_e4m3fn")]
)
def test_served_weights_are_quantized_and_float_kernels_are_gone(weight_bits, fp8, dtype):
    q = qwix(weight_bits=weight_bits, fp8=fp8, exclude="Dense_2$")
    _, _, served, _ = train_convert_serve(listwise.tiny, q, X, WHERE)
    dtypes = stored_dtypes(served)
    assert dtypes.pop("Dense_2/kernel") == "float32"  # the excluded scoring layer
    assert len(dtypes) == 8 and set(dtypes.values()) == {dtype}, dtypes
    scales = served["params"]["Dense_1"]["kernel"]["scale"]
    assert scales.shape == (1, 8) and scales.dtype == jnp.float32  # one per output channel


def test_qwix_selects_the_same_layers_as_aqt():
    kw = dict(layers="EncoderBlock|Dense_1", exclude="value")
    _, _, by_qwix, _ = train_convert_serve(listwise.tiny, qwix(**kw), X, WHERE)
    aqt = quantization.Quantizer(**kw)
    model = listwise.tiny(dot_general_cls=aqt.dot_general_factory("train"))
    params = model.init(jax.random.PRNGKey(0), X, WHERE)["params"]
    conv = listwise.tiny(dot_general_cls=aqt.dot_general_factory("convert"))
    by_aqt = aqt.convert(conv, params, (X, WHERE))
    qwix_layers = {p[7 : -len("/kernel/qvalue")] for p in _paths(by_qwix) if "qvalue" in p}
    aqt_layers = {p.split("/quant_dot_general")[0][4:] for p in _paths(by_aqt) if "qrhs" in p}
    assert qwix_layers == aqt_layers
    assert "EncoderBlock_0/SelfAttention_0/value" not in qwix_layers
    assert "Dense_1" in qwix_layers and "Dense_0" not in qwix_layers


def _paths(tree):
    return {"/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_int8_arithmetic_matches_numpy():
    # Weights per output channel, activations per row (dynamic), round half to even,
    # scale = absmax / 127 (rankjax widens Qwix's range so that the largest value maps to
    # 127, not to 127.5, which would round past int8), int32 accumulation: an
    # independent NumPy computation of mlp.tiny without its LayerNorms.
    q = qwix()
    make = functools.partial(mlp.tiny, layer_norm=False)
    params, _, served, out = train_convert_serve(make, q, X, WHERE)

    def quantize(a, axis):
        a = np.asarray(a, np.float64)
        scale = np.abs(a).max(axis=axis, keepdims=True) / 127
        return np.round(a / scale), scale

    h = np.asarray(X, np.float64).reshape(-1, 5)
    for i in range(3):
        layer = params[f"Dense_{i}"]
        xq, xs = quantize(h, 1)
        wq, ws = quantize(layer["kernel"], 0)
        np.testing.assert_array_equal(served["params"][f"Dense_{i}"]["kernel"]["qvalue"], wq)
        h = (xq @ wq) * xs * ws + np.asarray(layer["bias"])
        if i < 2:
            h = np.maximum(h, 0)
    want = h.reshape(3, 6)
    np.testing.assert_allclose(np.where(WHERE, out, 0), np.where(WHERE, want, 0), atol=1e-5)


def test_attention_products_of_two_activations_stay_float():
    q = qwix()
    params, _, served, _ = train_convert_serve(listwise.tiny, q, X, WHERE)
    model = quantization.build(listwise.tiny, q, "serve")
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, X, WHERE))(served)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    integer = [e for e in dots if all(str(v.aval.dtype) == "int8" for v in e.invars)]
    assert len(integer) == 9  # the 9 dense layers; q k^T and p v are the other two
    assert len(dots) == 11


class PlainFlax(nn.Module):
    """A user's own module: plain `flax.linen.Dense` layers, no rankjax seam."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(1, name="head")(x)[..., 0]


def test_qwix_quantizes_a_plain_flax_module():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 7, 5)), jnp.float32)
    q = qwix(exclude="head")
    params, qat, served, out = train_convert_serve(PlainFlax, q, x, build=wrap)
    np.testing.assert_allclose(out, qat, rtol=1e-6, atol=1e-6)
    assert not np.allclose(PlainFlax().apply({"params": params}, x), qat, atol=1e-6)
    assert stored_dtypes(served) == {"Dense_0/kernel/qvalue": "int8", "head/kernel": "float32"}
    # QAT trains: straight-through gradients reach the quantized kernel.
    model = q.wrap(PlainFlax(), "train")
    grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(params)
    assert np.abs(grads["Dense_0"]["kernel"]).sum() > 0


def test_aqt_refuses_a_module_without_the_seam():
    with pytest.raises(ValueError, match="PlainFlax has no dot_general_cls seam.*qwix"):
        quantization.Quantizer().wrap(PlainFlax(), "train")


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(backend="tflite"), r"quant.backend='tflite'; valid: \['aqt', 'qwix'\]"),
        (dict(backend="qwix", calibration="static"), r"calibration='static' is AQT's"),
        (dict(backend="qwix", serving="aqt"), r"serving='aqt' serves AQT's layers"),
    ],
)
def test_bad_backend_settings_are_named(settings, match):
    with pytest.raises(ValueError, match=match):
        quantization.from_config({"enabled": True, **settings})


def test_qwix_forms():
    q = qwix(serving="auto")
    assert forms.quantizer_for(q, "fp8").fp8 and forms.quantizer_for(q, "fp8").backend == "qwix"
    assert forms.quantizer_for(q, "fp8").calibration == "dynamic"
    assert not forms.quantizer_for(qwix(fp8=True), "int8").fp8
    with pytest.raises(ValueError, match="'aqt' is AQT's layers"):
        forms.quantizer_for(q, "aqt")


def test_retrieval_refuses_qwix():
    from rankjax.tasks import retrieval

    config = ml_collections.ConfigDict({"quant": {"enabled": True, "backend": "qwix"}})
    with pytest.raises(ValueError, match="retrieval and recommendation models are quantized"):
        retrieval.quantizer_of(config)


@pytest.fixture(scope="module")
def qwix_run(tmp_path_factory):
    """The quickstart's int8 config trained briefly with Qwix, 2:4 masks included."""
    workdir = tmp_path_factory.mktemp("qwix_run")
    config = load_config("synthetic_listwise_int8_nm24", "runlocal,steps=4")
    config.mesh.num_devices = 1
    config.quant.backend = "qwix"
    config.quant.serving = "int8"
    return workdir, trainer.train_and_evaluate(config, str(workdir))


def test_trainer_serves_the_qwix_model(qwix_run):
    workdir, results = qwix_run
    # The served model (saved with 2:4-packed integer kernels, loaded back) is what QAT
    # evaluated: same metrics.
    assert results["test_served"] == pytest.approx(results["test"], rel=1e-6)
    saved = checkpoint.load_tree(str(workdir / "served"))
    kernels = {p: v for p, v in _flat(saved).items() if "kernel" in p}
    assert any(p.endswith("qvalue/nm_values") for p in kernels), sorted(kernels)[:4]
    assert quantization.array_bytes(saved) == results["bytes"]["serving_bytes"]
    report = json.loads((workdir / "compression.json").read_text())
    assert report["serving_form"] == "int8"
    assert {r["bits"] for r in report["layers"]} == {8}
    # int8 values of half the weights (2:4), positions, scales; biases and norms stay float.
    assert report["serving_bytes"] < 0.4 * report["float_bytes"]


def test_serving_load_rebuilds_the_qwix_model(qwix_run):
    workdir, results = qwix_run
    ranker = serving.load(str(workdir), params="served")
    again = serving.load(str(workdir), params="best")
    width = len(json.loads((workdir / "feature_transform.json").read_text())["mean"])
    x = np.random.default_rng(2).normal(size=(2, 5, width)).astype(np.float32)
    served, best = ranker.score(x), again.score(x)
    assert np.isfinite(served).all()
    # Integer products round: close to the float model's scores, not equal.
    assert 0 < np.abs(served - best).max() < 0.5


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        out.update(_flat(v, path) if isinstance(v, dict) else {path: v})
    return out


def test_text_encoder_quantizes_q_k_v_and_keeps_attention_float():
    from benchmarks import speed

    shape = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=2)
    tokens = speed.pair_tokens(3, 12)
    where = np.ones((3, 1), bool)
    # The Pallas attention would read q, k and v from one product of concatenated
    # kernels in float; under Qwix the model keeps three quantizable products.
    make = functools.partial(speed.cross_encoder_model, shape, attention="pallas")
    q = qwix(exclude="^score$")
    params, qat, served, out = train_convert_serve(make, q, tokens, where)
    np.testing.assert_allclose(out, qat, rtol=1e-5, atol=1e-5)
    dtypes = stored_dtypes(served)
    quantized = sorted(p for p, d in dtypes.items() if d == "int8")
    assert len(quantized) == 2 * 6  # q, k, v, output and the two feed-forward layers
    assert "encoder/layer_0/attention/query/kernel/qvalue" in quantized
    assert not np.allclose(make().apply({"params": params}, tokens, where), qat, atol=1e-6)


def test_qwix_qat_on_eight_devices_matches_one():
    # Data parallelism over 8 devices computes the scores and gradients one device does,
    # up to float rounding (fusions and the order of sums over the batch differ). With
    # Qwix's own int8 bound, 127.5, each row's largest value rounded to 128 and its
    # conversion to int8 came out differently in the two programs: scores 0.04 apart.
    from jax.sharding import NamedSharding, PartitionSpec

    from rankjax import sharding

    x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 10, 17)), jnp.float32)
    where = jnp.ones((16, 10), bool)
    make = functools.partial(listwise.Model, d_model=32, num_layers=1, num_heads=2, mlp_dim=64)
    model = quantization.build(make, qwix(), "train")
    params = model.init(jax.random.PRNGKey(0), x, where)["params"]

    @jax.jit
    def scores_and_grads(params, x, where):
        scores = lambda p: model.apply({"params": p}, x, where)  # noqa: E731
        return scores(params), jax.grad(lambda p: scores(p).sum())(params)

    split = NamedSharding(sharding.make_mesh(8), PartitionSpec("data"))
    scores, grads = scores_and_grads(params, x, where)
    x8, where8 = jax.device_put((x, where), split)
    scores8, grads8 = scores_and_grads(params, x8, where8)
    np.testing.assert_allclose(np.asarray(scores8), np.asarray(scores), rtol=1e-5, atol=1e-6)
    leaves = zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads8), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
