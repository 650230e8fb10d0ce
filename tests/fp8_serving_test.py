"""Served fp8 with fused kernels (Pallas's interpreter on CPU): the attention kernel's slot
and output scales, the LayerNorm's e4m3 copy, and the cross-encoder whose q, k, v run as
one fp8 product and whose kernels write the next layer's input in e4m3, against the same
served variables computed layer by layer."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from short_attention_test import inputs, numpy_attention

from benchmarks import speed
from rankjax import sharding
from rankjax.compression import fp8
from rankjax.kernels import fused_norm, short_attention
from rankjax.models import layers

SHAPE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=2)
FP8 = "fp8 (static scales) served"


def e4m3(x, scale):
    """NumPy reference quantize: divide in float32, clip to ±448, round to e4m3."""
    scaled = np.asarray(x, np.float32) / np.float32(scale)
    return np.clip(scaled, -448, 448).astype(ml_dtypes.float8_e4m3fn)


@pytest.mark.usefixtures("float32_products")
def test_packed_attention_applies_slot_scales_and_writes_e4m3():
    q, k, v, mask = inputs((3, 12, 2, 8), [12, 5, 0], seed=7)
    scales = np.array([0.5, 2.0, 0.25], np.float32)
    qkv = jnp.stack([q / scales[0], k / scales[1], v / scales[2]], axis=2)
    want = numpy_attention(q, k, v, mask)
    scaled = short_attention.packed_attention(qkv, mask, slot_scales=scales)
    np.testing.assert_allclose(np.asarray(scaled), want, atol=2e-6)
    # An output scale writes e4m3: the attention divided by it, clipped (0.004 sends the
    # largest values past 448), rounded; at most a rounding tie apart from NumPy's.
    out_scale = np.float32(0.004)
    got = short_attention.packed_attention(qkv, mask, slot_scales=scales, out_scale=out_scale)
    assert got.dtype == jnp.float8_e4m3fn
    ref = e4m3(want, out_scale).astype(np.float32)
    assert np.abs(ref).max() == 448 and np.isfinite(np.asarray(got, np.float32)).all()
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=0.07)


def test_layer_norm_writes_its_e4m3_copy_in_the_same_pass():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 8, 48)) * 3, jnp.bfloat16)
    scale, bias = (jnp.asarray(rng.normal(size=48), jnp.float32) for _ in range(2))
    out_scale = np.float32(0.006)
    y, yq = fused_norm.layer_norm(x, scale, bias, 1e-12, out_scale=out_scale)
    np.testing.assert_array_equal(y, fused_norm.layer_norm(x, scale, bias, 1e-12))
    assert yq.dtype == jnp.float8_e4m3fn and yq.shape == x.shape
    # Quantized from the bf16 output with the bf16-rounded scale (what the fp8 product's
    # dequantize uses), clipped.
    divisor = np.float32(jnp.asarray(out_scale, jnp.bfloat16))
    want = e4m3(np.asarray(y, np.float32), divisor)
    assert np.abs(want.astype(np.float32)).max() == 448
    np.testing.assert_array_equal(np.asarray(yq, np.float32), want.astype(np.float32))


def test_e4m3_copies_keep_subnormals():
    # Small activations land in e4m3's subnormal range (2^-9 to 2^-6 after the scale). A
    # kernel that flushed them to zero would bias the next product; Pallas's interpreter
    # and the compiled Triton kernels must both keep them (on a GPU, run this file with
    # RANKJAX_TEST_PLATFORMS=cuda,cpu).
    tiny = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).tiny)  # 2^-6
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 16, 64)), jnp.bfloat16)
    scale = jnp.asarray(np.logspace(-4, -0.5, 64), jnp.float32)  # outputs from 1e-5 to 1
    bias = jnp.zeros(64, jnp.float32)
    y, yq = fused_norm.layer_norm(x, scale, bias, 1e-12, out_scale=np.float32(1.0))
    want = e4m3(np.asarray(y, np.float32), 1.0).astype(np.float32)
    subnormal = (want != 0) & (np.abs(want) < tiny)
    assert subnormal.sum() > 200, subnormal.sum()
    np.testing.assert_array_equal(np.asarray(yq, np.float32), want)

    q, k, v, mask = inputs((3, 16, 2, 8), [16, 9, 3], seed=2)
    qkv = jnp.stack([q, k, v * 0.006], axis=2)  # attention outputs of about 1e-3
    got = short_attention.packed_attention(qkv, mask, out_scale=np.float32(1.0))
    want = e4m3(numpy_attention(q, k, v * 0.006, mask), 1.0).astype(np.float32)
    got = np.asarray(got, np.float32)
    subnormal = (want != 0) & (np.abs(want) < tiny)
    assert subnormal.sum() > 100, subnormal.sum()
    # Within one subnormal step of NumPy's (float32 against float64 may round a tie the
    # other way), and not flushed: as many nonzero values as NumPy's.
    step = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).smallest_subnormal)
    assert np.abs(got - want)[subnormal].max() <= step
    assert (got[subnormal] != 0).mean() > 0.97


@pytest.fixture(scope="module")
def variants():
    """The bf16 model (XLA attention) and the same parameters served in fp8."""
    return speed.scoring_variants(SHAPE, ("xla",), (FP8,), speed.pair_tokens(32, 16, 1))


def test_q_k_v_calibrate_the_same_input_scale(variants):
    # The packed fp8 product quantizes x once with the query's input scale.
    served = variants[1]
    for i in range(SHAPE["num_layers"]):
        attention = served.variables["aqt"]["encoder"][f"layer_{i}"]["attention"]
        scales = {n: float(attention[n]["quant_dot_general"]["input_scale"]) for n in attention}
        assert scales["query"] == scales["key"] == scales["value"] != scales["output"], scales


def test_fused_fp8_encoder_is_as_close_to_float_as_the_layer_by_layer_one(variants):
    # The same served variables, once through the fused kernels (one q, k, v product;
    # LayerNorm and attention writing the next product's input in e4m3; feed-forward on
    # flat tokens) and once with a seam that offers no fusion (three products, separate
    # quantize steps, [B, T, H] products); and with XLA's attention and LayerNorm, as an
    # export runs it (one q, k, v product, scaled per slot after it). Each rounds
    # differently, so all are compared with the float32 model: fp8's error at this toy
    # width is about 0.05 a score; a wrong scale or slot would be far off.
    bf16, served = variants
    seam = served.model.dot_general_cls
    fused = served.model.clone(attention="pallas", norm="pallas")
    plain = fused.clone(dot_general_cls=lambda path: seam(path))
    packed = served.model.clone(attention="xla", norm="xla")
    # 256 pairs: on 24 the paths' mean errors moved by ±20% with the rounding's luck.
    tokens = speed.pair_tokens(256, 16, 3)
    tokens["tokens"][5:, :, 11:] = 0  # padded pairs
    where = jnp.ones((256, 1), bool)

    def score(model, variables):
        # Without excess precision: XLA on a GPU otherwise drops a quantize-dequantize
        # pair (f32 -> e4m3 -> f32) wherever a product is not an fp8 GEMM, as at this
        # toy width, so the layer-by-layer path would skip fp8's rounding (mean error
        # 0.027 against the kernels' 0.043 on an H200; 0.055 and 0.055 without it).
        run = jax.jit(lambda v: model.apply(v, tokens, where, train=False))
        compiled = run.lower(variables).compile({"xla_allow_excess_precision": False})
        return np.asarray(compiled(variables), np.float32).ravel()

    exact = score(bf16.model.clone(dtype="float32"), bf16.variables)
    scores = {m: score(m, served.variables) for m in (fused, plain, packed)}
    errors = {m: np.abs(s - exact) for m, s in scores.items()}
    for model in (fused, packed):
        assert errors[model].mean() <= 1.25 * errors[plain].mean(), errors
        assert errors[model].max() <= 0.1 * np.abs(exact).max() + 0.1, errors[model]
        assert speed.agreement(exact, scores[model]) > 0.9

    def census(model):
        # Matrix products outside kernels, fp8 products (each guards its e4m3 weights
        # with an optimization barrier), and kernels that write e4m3.
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, tokens, where, train=False))
        counts = {"dot_general": 0, "fp8": 0, "e4m3 kernels": 0}
        for eqn in _equations(jaxpr(served.variables).jaxpr):
            counts["dot_general"] += eqn.primitive.name == "dot_general"
            counts["fp8"] += eqn.primitive.name == "optimization_barrier"
            e4m3_out = any(v.aval.dtype == jnp.float8_e4m3fn for v in eqn.outvars)
            counts["e4m3 kernels"] += eqn.primitive.name == "pallas_call" and e4m3_out
        return counts

    # Per layer: q, k, v as one product, not three; the attention and both LayerNorms
    # write e4m3 (the last layer's output LayerNorm has no fp8 reader). XLA's attention
    # adds its two batched products.
    layers, products = SHAPE["num_layers"], 1 + 6 * SHAPE["num_layers"]  # + the score
    assert census(plain) == {"dot_general": products, "fp8": 6 * layers, "e4m3 kernels": 0}
    want = {"dot_general": products - 2 * layers, "fp8": 4 * layers}
    assert census(fused) == want | {"e4m3 kernels": 3 * layers - 1}
    assert census(packed) == {"dot_general": products, "fp8": 4 * layers, "e4m3 kernels": 0}


def _equations(jaxpr):
    """Every equation of `jaxpr`, including those of the jaxprs it calls (not kernels')."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name == "pallas_call":
            continue
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


def test_a_serving_model_initialises_through_the_layer_by_layer_path(variants):
    # `init` has no frozen variables to read, so the fused paths step aside and each layer
    # declares its own e4m3 kernel and scales (the tree `convert` fills).
    served = variants[1]
    model = served.model.clone(attention="pallas", norm="pallas")
    tokens = speed.pair_tokens(2, 16, 0)
    where = jnp.ones((2, 1), bool)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, where))
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), shapes["aqt"])
    want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), served.variables["aqt"])
    assert got == want


def test_e4m3_inputs_reach_only_fp8_serving_layers():
    x = jnp.zeros((2, 4), jnp.float8_e4m3fn)
    dense = layers.Dense(3)
    with pytest.raises(ValueError, match="e4m3 input to a float layer"):
        dense.init(jax.random.PRNGKey(0), x)
    assert layers.flat_tokens(None) and not layers.flat_tokens(lambda path: None)
    seam = fp8.Seam("serve", lambda path: True)
    assert layers.flat_tokens(seam) and seam("x").takes_e4m3


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuBLASLt fp8 GEMMs: NVIDIA GPUs")
def test_compiled_fp8_encoder_runs_fp8_gemms_writing_e4m3_on_gpu(variants):
    # On the GPU every encoder product is a cuBLASLt fp8 GEMM, with the weights passed in
    # and with them compiled in (where XLA would fold an unguarded dequantize into a bf16
    # constant); the feed-forward GEMM writes the next GEMM's e4m3 input itself; and the
    # Pallas kernels lower for Triton.
    served = variants[1]
    model = served.model.clone(attention="auto", norm="auto")
    scorer = speed.Scorer("fp8", model, served.variables)
    tokens = speed.pair_tokens(64, 16, 4)
    programs = {
        "weights as arguments": scorer.score.lower(served.variables, tokens),
        "weights compiled in": scorer.served.lower(tokens),
    }
    for how, lowered in programs.items():
        text = lowered.compile().as_text()
        gemms = [ln for ln in text.splitlines() if "__cublas$lt$matmul$f8" in ln]
        assert len(gemms) == 4 * SHAPE["num_layers"], (how, gemms)
        outputs = [ln.split("=", 1)[1].lstrip(" (") for ln in gemms]
        assert any(out.startswith("f8e4m3fn") for out in outputs), (how, outputs)
    where = jnp.ones((64, 1), bool)
    plain = served.model.clone(dot_general_cls=lambda path: served.model.dot_general_cls(path))
    want = plain.clone(attention="xla", norm="xla").apply(served.variables, tokens, where)
    for got in (scorer.score(served.variables, tokens), scorer.served(tokens)):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.1, atol=0.15)


def test_fused_fp8_encoder_splits_over_the_batch_under_a_context_mesh(variants, data_mesh):
    # The e4m3-writing kernels (tuple outputs) run on each device's share, as the float
    # ones do (short_attention_test): no all-gather, the same scores as on one device.
    served = variants[1]
    model = served.model.clone(attention="pallas", norm="pallas")
    tokens, where = speed.pair_tokens(8, 16, 3), jnp.ones((8, 1), bool)
    want = jax.jit(lambda v: model.apply(v, tokens, where, train=False))(served.variables)
    mesh = data_mesh
    split = (sharding.replicated(mesh), *[sharding.batch_sharding(mesh)] * 2)
    score = jax.jit(lambda v, t, w: model.apply(v, t, w, train=False), in_shardings=split)
    with jax.set_mesh(mesh):
        compiled = score.lower(served.variables, tokens, where).compile()
    got = compiled(served.variables, tokens, where)
    assert "all-gather" not in compiled.as_text()
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
