"""Quantization: QAT and served outputs agree, served weights are integers with no float
kernels, PTQ trains in float, bad settings are named, and the trainer serves the model."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config

from rankjax import checkpoint, serving, trainer
from rankjax import data as data_lib
from rankjax.compression import fp8, quantization
from rankjax.data.batches import pad_lists
from rankjax.models import listwise, mlp

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6, 5)), jnp.float32)
WHERE = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [3], [1]]))


def train_convert_serve(factory, quantizer):
    model = factory(dot_general_cls=quantizer.dot_general_factory("train"))
    params = model.init(jax.random.PRNGKey(0), X, WHERE)["params"]
    qat = model.apply({"params": params}, X, WHERE)
    converter = factory(dot_general_cls=quantizer.dot_general_factory("convert"))
    served = quantizer.convert(converter, params, (X, WHERE))
    server = factory(dot_general_cls=quantizer.dot_general_factory("serve"))
    return params, qat, served, server.apply(served, X, WHERE)


@pytest.mark.parametrize("factory", [mlp.tiny, listwise.tiny])
@pytest.mark.parametrize(
    "weight_bits, activation_bits, fp8", [(8, 8, False), (4, 0, False), (4, 8, False), (8, 8, True)]
)
def test_served_outputs_match_qat_outputs(factory, weight_bits, activation_bits, fp8):
    q = quantization.Quantizer(weight_bits=weight_bits, activation_bits=activation_bits, fp8=fp8)
    params, qat, _, served_out = train_convert_serve(factory, q)
    np.testing.assert_allclose(served_out, qat, rtol=1e-6, atol=1e-6)
    float_out = factory().apply({"params": params}, X, WHERE)
    assert not np.allclose(float_out, qat, atol=1e-7)  # quantization did change something


@pytest.mark.parametrize(
    "weight_bits, fp8, dtype", [(8, False, "int8"), (4, False, "int4"), (8, True, "float8_e4m3fn")]
)
def test_served_weights_are_integers_and_float_kernels_are_gone(weight_bits, fp8, dtype):
    q = quantization.Quantizer(weight_bits=weight_bits, fp8=fp8, exclude="Dense_2$")
    _, _, served, _ = train_convert_serve(listwise.tiny, q)
    frozen = served[quantization.FROZEN_COLLECTION]
    values = [v for p, v in jax.tree_util.tree_leaves_with_path(frozen) if p[-1].key == "value"]
    assert len(values) == 8 and all(str(v.dtype) == dtype for v in values)
    kernels = [
        "/".join(k.key for k in p)
        for p, _ in jax.tree_util.tree_leaves_with_path(served["params"])
        if p[-1].key == "kernel"
    ]
    assert kernels == ["Dense_2/kernel"]  # only the excluded scoring layer stays float


def test_served_bytes_shrink_about_fourfold_on_a_wide_layer():
    wide = mlp.Model(hidden_sizes=(256,))
    q = quantization.Quantizer()
    x = jnp.ones((1, 2, 512))
    params = wide.init(jax.random.PRNGKey(0), x, jnp.ones((1, 2), bool))["params"]
    conv = mlp.Model(hidden_sizes=(256,), dot_general_cls=q.dot_general_factory("convert"))
    served = q.convert(conv, params, (x, jnp.ones((1, 2), bool)))
    ratio = quantization.array_bytes(served) / quantization.array_bytes(params)
    assert 0.25 < ratio < 0.27, ratio


def test_ptq_trains_in_float():
    q = quantization.Quantizer(mode="ptq")
    assert q.dot_general_factory("train")("Dense_0") is None
    assert q.dot_general_factory("convert")("Dense_0") is not None


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dict(enabled=True, weight_bits=2), r"quant.weight_bits=2; valid: \[4, 8\]"),
        (dict(enabled=True, mode="awq"), r"quant.mode='awq'"),
        (dict(enabled=True, layers="("), r"quant.layers='\(' is not a regex"),
        (dict(enabled=True, bits=8), r"unknown config key quant.bits"),
        (dict(enabled=True, serving="int2"), r"quant.serving='int2'; valid"),
    ],
)
def test_bad_quant_config_is_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        quantization.from_config(cfg)


def test_disabled_or_absent_quant_is_none():
    assert quantization.from_config(None) is None
    assert quantization.from_config({"enabled": False, "weight_bits": 8}) is None


def test_trainer_serves_the_converted_model(tmp_path):
    config = load_config("synthetic_listwise_int8", "runlocal,steps=4")
    config.mesh.num_devices = 1
    results = trainer.train_and_evaluate(config, str(tmp_path))
    # The served model is what QAT evaluated: same metrics.
    assert results["test_served"] == pytest.approx(results["test"], rel=1e-6)
    assert results["bytes"]["serving_bytes"] < results["bytes"]["float_bytes"]
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    dtypes = {str(v.dtype) for v in jax.tree_util.tree_leaves(saved["aqt"])}
    assert dtypes == {"int8", "float32"}
    # The report's byte count is that of the arrays actually saved.
    assert quantization.array_bytes(saved) == results["bytes"]["serving_bytes"]
    report = json.loads((tmp_path / "compression.json").read_text())
    assert report["serving_bytes"] == results["bytes"]["serving_bytes"]
    assert {r["bits"] for r in report["layers"]} == {8}


def test_quant_section_in_any_config(tmp_path):
    config = load_config("letor_lightgbm", "runlocal")
    config.quant = ml_collections.ConfigDict(dict(enabled=True, weight_bits=4, activation_bits=0))
    from rankjax import config_schema

    config_schema.validate(config)


def test_static_calibration_freezes_activation_ranges():
    q = quantization.Quantizer(mode="ptq", calibration="static", calibration_batches=3)
    model = mlp.tiny()
    params = model.init(jax.random.PRNGKey(0), X, WHERE)["params"]
    rng = np.random.default_rng(1)
    batches = [(jnp.asarray(rng.normal(size=X.shape), jnp.float32), WHERE) for _ in range(3)]
    stats = q.calibrate(
        mlp.tiny(dot_general_cls=q.dot_general_factory("calibrate")), params, batches
    )
    served = q.convert(
        mlp.tiny(dot_general_cls=q.dot_general_factory("convert")), params, (X, WHERE), stats
    )
    frozen = served[quantization.FROZEN_COLLECTION]["Dense_0"]["quant_dot_general"]
    # The activation range is frozen: one static scale per tensor.
    assert np.asarray(frozen["qlhs"]["scale"]).size == 1
    out = mlp.tiny(dot_general_cls=q.dot_general_factory("serve")).apply(served, X, WHERE)
    ref = mlp.tiny().apply({"params": params}, X, WHERE)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, atol=0.1)


def test_trainer_ptq_with_static_calibration(tmp_path):
    config = load_config("synthetic_listwise_int8", "runlocal,steps=2")
    config.mesh.num_devices = 1
    config.quant.update(mode="ptq", calibration="static", calibration_batches=2)
    results = trainer.train_and_evaluate(config, str(tmp_path))
    assert all(np.isfinite(v) for v in results["test_served"].values())
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    assert quantization.CALIBRATION_COLLECTION in saved


FP8 = quantization.Quantizer(
    mode="ptq", fp8=True, calibration="static", calibration_batches=3, serving="fp8"
)


def test_fp8_serving_matches_an_independent_e4m3_reference():
    import ml_dtypes

    # No LayerNorm: the first layer's input is the batch itself, its range known by hand.
    plain_mlp = functools.partial(mlp.tiny, layer_norm=False)
    model = plain_mlp()
    params = model.init(jax.random.PRNGKey(0), X, WHERE)["params"]
    rng = np.random.default_rng(1)
    batches = [(jnp.asarray(rng.normal(size=X.shape) * (i + 1)), WHERE) for i in range(3)]
    stats = FP8.calibrate(
        plain_mlp(dot_general_cls=FP8.dot_general_factory("calibrate")), params, batches
    )
    converter = plain_mlp(dot_general_cls=FP8.dot_general_factory("convert"))
    with pytest.raises(ValueError, match="needs the ranges from calibrate"):
        FP8.convert(converter, params, (X, WHERE))  # static scales cannot be defaults
    served = FP8.convert(converter, params, (X, WHERE), stats)
    assert quantization.CALIBRATION_COLLECTION not in served  # scales are all frozen
    frozen = served[quantization.FROZEN_COLLECTION]["Dense_0"]["quant_dot_general"]
    kernel = np.asarray(params["Dense_0"]["kernel"])
    assert frozen["kernel"].dtype == jnp.float8_e4m3fn and frozen["kernel"].shape == kernel.T.shape
    # The first layer's input range: the mean over batches of each batch's absolute maximum.
    amax = np.mean([np.abs(np.asarray(b)).max() for b, _ in batches])
    np.testing.assert_allclose(frozen["input_scale"], amax / 448, rtol=1e-6)
    np.testing.assert_allclose(frozen["kernel_scale"], np.abs(kernel).max() / 448, rtol=1e-6)
    assert "kernel" not in served["params"]["Dense_0"]

    # The fp8 product against numpy with ml_dtypes' e4m3 rounding.
    def e4m3(a, scale):  # as fp8.quantize: times the float32 reciprocal, clipped, rounded
        scaled = np.asarray(a, np.float32) * (np.float32(1) / np.float32(scale))
        return np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)

    sx, sw = float(frozen["input_scale"]), float(frozen["kernel_scale"])
    x = np.asarray(X).reshape(-1, X.shape[-1])
    ref = e4m3(x, sx) @ e4m3(kernel, sw) * sx * sw
    got = fp8.fp8_dot(jnp.asarray(x), frozen["kernel"], sx, sw, jnp.float32)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # The whole served model stays close to the float one.
    out = plain_mlp(dot_general_cls=FP8.dot_general_factory("serve")).apply(served, X, WHERE)
    np.testing.assert_allclose(out, model.apply({"params": params}, X, WHERE), atol=0.1)


def test_trainer_serves_fp8_layers(tmp_path):
    config = load_config("synthetic_listwise_int8", "runlocal,steps=2")
    config.mesh.num_devices = 1
    config.quant.update(mode="ptq", fp8=True, calibration="static", serving="fp8")
    results = trainer.train_and_evaluate(config, str(tmp_path))
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    kernels = [
        v for p, v in jax.tree_util.tree_leaves_with_path(saved["aqt"]) if p[-1].key == "kernel"
    ]
    assert kernels and all(v.dtype == jnp.float8_e4m3fn for v in kernels)
    assert results["test_served"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=0.05)
    # On test lists, what a server loads scores like the float model, but not identically.
    served, best = (serving.load(str(tmp_path), v) for v in ("served", "best"))
    test = data_lib.load(config.data).test
    batch = pad_lists(test, int(config.data.list_size))
    got, want = (r.score_batch(batch)[batch["where"]] for r in (served, best))
    assert np.corrcoef(got, want)[0, 1] > 0.98, np.corrcoef(got, want)[0, 1]
    assert not np.allclose(got, want, atol=1e-6)


def test_homedepot_serve_argument_is_post_training_quantization():
    from rankjax import config_schema

    config = load_config("homedepot_cross_encoder", "runlocal,serve=fp8")
    config_schema.validate(config)
    q = quantization.from_config(config.quant)
    assert (q.mode, q.serving, q.static) == ("ptq", "fp8", True)
    assert not q.quantizes("score") and q.quantizes("encoder/layer_0/intermediate")
    with pytest.raises(ValueError, match="serve='int3'"):
        load_config("homedepot_cross_encoder", "runlocal,serve=int3")
