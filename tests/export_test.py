"""`jax.export` artifacts: the served ranker as one file, run without rankjax's code."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config

from benchmarks import speed, timing
from rankjax import export, serving, trainer
from rankjax.data import transforms

# Loads an artifact with jax and numpy only: the file format is a magic line, a JSON
# signature line, then `jax.export`'s serialized program.
STANDALONE = """
import json, sys
import jax, jax.export, numpy as np
blob = open(sys.argv[1], "rb").read()
_, header, program = blob.split(b"\\n", 2)
exported = jax.export.deserialize(bytearray(program))
x = np.load(sys.argv[2])
scores = exported.call({"features": x["features"]}, x["where"])
np.save(sys.argv[3], np.asarray(scores))
assert "rankjax" not in sys.modules and "flax" not in sys.modules
"""


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("int8"))
    trainer.train_and_evaluate(load_config("synthetic_listwise_int8", "runlocal"), workdir)
    return workdir


def test_exported_served_ranker_scores_like_the_ranker_at_any_shape(served_run, tmp_path):
    ranker = serving.load(served_run, "served")
    num_features = export.raw_width(ranker.transform)
    path = str(tmp_path / "ranker.jaxexport")
    signature = export.save(ranker, path, num_features=num_features, platforms=("cpu",))
    assert signature["inputs"] == {"features": [["b", "n", num_features], "float32"]}
    score = export.load(path)
    rng = np.random.default_rng(0)
    for b, n in ((2, 5), (7, 3)):  # one artifact, symbolic batch and list sizes
        x = rng.lognormal(size=(b, n, num_features)).astype(np.float32)
        where = rng.random((b, n)) < 0.8
        want = ranker.score(x, where)
        np.testing.assert_allclose(score(x, where=where), want, rtol=1e-4, atol=1e-4)
    # A process that imports neither rankjax nor flax runs it.
    np.savez(tmp_path / "in.npz", features=x, where=where)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    out = tmp_path / "out.npy"
    subprocess.run(
        [sys.executable, str(script), path, str(tmp_path / "in.npz"), str(out)],
        check=True,
        env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        timeout=120,
    )
    # Padding items' scores mean nothing (the scorers zero their features; the bare
    # program takes them as given): compare the valid items.
    np.testing.assert_allclose(np.load(out)[where], want[where], rtol=1e-4, atol=1e-4)
    # Float parameters stored in bf16: scores within bf16's rounding.
    half = str(tmp_path / "half.jaxexport")
    export.save(ranker, half, num_features=num_features, platforms=("cpu",), param_dtype="bfloat16")
    np.testing.assert_allclose(export.load(half)(x, where=where), want, rtol=0.05, atol=0.05)


def test_exported_fp8_text_ranker_scores_like_the_model(tmp_path):
    # A 1-layer cross-encoder served with fp8 weights and static scales: the token arrays
    # are inputs with a symbolic length, the e4m3 kernels travel inside the program.
    shape = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=1)
    served = ("fp8 (static scales) served",)
    scorer = speed.scoring_variants(shape, (), served, speed.pair_tokens(16, 16, 1))[0]
    ranker = serving.Ranker(scorer.model, scorer.variables, None, None)
    path = str(tmp_path / "fp8.jaxexport")
    signature = export.save(ranker, path, platforms=("cpu",))
    assert signature["inputs"]["tokens"] == [["b", "n", "t"], "int32"]
    score = export.load(path)
    for b, t in ((4, 16), (3, 24)):
        tokens = speed.pair_tokens(b, t, b)
        want = np.asarray(scorer.score(scorer.variables, tokens), np.float32)
        got = score(**tokens)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def _cuda_export(scorer, tmp_path) -> str:
    """Exports `scorer`'s model for CUDA alone with 16 tokens; returns the file's path."""
    path = str(tmp_path / "cuda.jaxexport")
    ranker = serving.Ranker(scorer.model, scorer.variables, None, None)
    export.save(ranker, path, token_length=16, platforms=("cuda",))
    return path


def test_cuda_export_carries_xla_formulations_not_pallas_kernels(tmp_path):
    # An export's batch is symbolic and a Triton grid must be static, so "auto" kernels
    # export as XLA's formulations, on any machine (off a GPU, Pallas would otherwise
    # export its interpreter's loop over the grid).
    shape = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_layers=1)
    (auto,) = speed.scoring_variants(shape, ("auto",), ())
    program = export.load(_cuda_export(auto, tmp_path)).exported.mlir_module()
    assert "stablehlo.while" not in program and "triton" not in program.lower()


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="runs a CUDA export")
def test_cuda_export_scores_like_xla_on_gpu(tmp_path):
    shape = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_layers=2)
    auto, xla = speed.scoring_variants(shape, ("auto", "xla"), ())
    plain = xla.model.clone(norm="xla")
    score = export.load(_cuda_export(auto, tmp_path))
    for b in (4, 7):
        tokens = speed.pair_tokens(b, 16, b)
        want = np.asarray(speed.Scorer("xla", plain, xla.variables).score(xla.variables, tokens))
        np.testing.assert_allclose(score(**tokens), want, rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuBLASLt fp8 GEMMs: NVIDIA GPUs")
def test_cuda_fp8_export_runs_fp8_gemms_on_gpu(tmp_path):
    # The exported fp8 artifact carries e4m3 weights as constants; compiled as `load`
    # compiles it, every encoder product must stay an fp8 GEMM: an unguarded dequantize
    # folds into a bf16 constant, and three q, k, v products of one input merge into a
    # bf16 GEMM. Per layer: q, k and v packed, the output and the two feed-forward
    # products; the only 16-bit GEMMs left are XLA's attention's batched products.
    shape = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_layers=2)
    served = ("fp8 (static scales) served",)
    scorer = speed.scoring_variants(shape, (), served, speed.pair_tokens(32, 16, 1))[0]
    score = export.load(_cuda_export(scorer, tmp_path))
    tokens = speed.pair_tokens(8, 16, 5)
    where = np.ones((8, 1), bool)
    text = score.call.lower(tokens, where).compile().as_text()
    calls = [ln for ln in text.splitlines() if 'custom_call_target="__cublas' in ln]
    gemms = [ln for ln in calls if "__cublas$lt$matmul$f8" in ln]
    assert len(gemms) == 4 * shape["num_layers"], gemms
    others = [ln for ln in calls if ln not in gemms and "bhqk" not in ln and "bqhd" not in ln]
    assert not others, others
    want = np.asarray(scorer.score(scorer.variables, tokens), np.float32)
    np.testing.assert_allclose(score(**tokens), want, rtol=0.05, atol=0.05)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="Triton kernels: NVIDIA GPUs")
def test_cuda_pallas_export_holds_the_kernels_on_gpu(tmp_path):
    # A fixed-shape export with kernels="pallas" carries rankjax's Triton kernels and scores
    # as the model does in process with them (bf16, and fp8 with its e4m3-writing kernels).
    shape = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, num_layers=2)
    served = ("fp8 (static scales) served",)
    calibration = speed.pair_tokens(32, 16, 1)
    for scorer in speed.scoring_variants(shape, ("auto",), served, calibration):
        path = str(tmp_path / "pallas.jaxexport")
        ranker = serving.Ranker(scorer.model, scorer.variables, None, None)
        kwargs = dict(token_length=16, platforms=("cuda",), fixed_shape=(8, 1))
        signature = export.save(ranker, path, kernels="pallas", **kwargs)
        assert signature["kernels"] == {"name": "pallas", "jax": jax.__version__}
        score = export.load(path)
        program = score.exported.mlir_module()
        assert program.count("xla.gpu.triton") >= 2 * shape["num_layers"], scorer.name
        tokens = speed.pair_tokens(8, 16, 5)
        want = np.asarray(scorer.served(tokens), np.float32)
        np.testing.assert_allclose(score(**tokens), want, rtol=2e-2, atol=2e-2)


def test_export_errors_name_the_problem(served_run, tmp_path):
    ranker = serving.load(served_run, "served")
    with pytest.raises(ValueError, match="num_features"):
        export.save(ranker, str(tmp_path / "x"))
    (tmp_path / "junk").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="not a rankjax export"):
        export.load(str(tmp_path / "junk"))
    # A fixed-shape export takes only its shape; any export only its feature width.
    width = export.raw_width(ranker.transform)
    path = str(tmp_path / "fixed.jaxexport")
    kwargs = dict(num_features=width, platforms=("cpu",))
    signature = export.save(ranker, path, fixed_shape=(2, 5), **kwargs)
    assert signature["where"] == [[2, 5], "bool"]
    score = export.load(path)
    x = np.ones((2, 5, width), np.float32)
    np.testing.assert_allclose(score(x), ranker.score(x, np.ones((2, 5), bool)), rtol=1e-4)
    with pytest.raises(ValueError, match=r"input 'features' has shape \(3, 5, \d+\); the export"):
        score(np.ones((3, 5, width), np.float32))
    with pytest.raises(ValueError, match="input 'features' has shape"):
        score(np.ones((2, 5, width + 1), np.float32))
    # Pallas kernels: only a fixed-shape CUDA export made on a GPU holds them, and it loads
    # only under the jax version that made it.
    with pytest.raises(ValueError, match="kernels="):
        export.save(ranker, path, kernels="triton", **kwargs)
    with pytest.raises(ValueError, match=r"kernels='pallas' needs platforms=\('cuda',\)"):
        export.save(ranker, path, kernels="pallas", **kwargs)
    blob = open(path, "rb").read().split(b"\n", 2)
    header = json.loads(blob[1]) | {"kernels": {"name": "pallas", "jax": "0.0.1"}}
    other = tmp_path / "other.jaxexport"
    other.write_bytes(b"\n".join([blob[0], json.dumps(header).encode(), blob[2]]))
    with pytest.raises(ValueError, match="corrupted \\(checksum mismatch"):  # edited header
        export.load(str(other))
    del header["sha256"]  # as a file written before checksums existed
    other.write_bytes(b"\n".join([blob[0], json.dumps(header).encode(), blob[2]]))
    with pytest.raises(ValueError, match="under jax 0.0.1"):
        export.load(str(other))


def test_benchmark_script_times_the_exported_models_and_plots_the_front(served_run, tmp_path):
    # The run was trained here on 8 CPU devices; the script's process has one, so this also
    # checks that `serving.load` restores a checkpoint saved by another topology.
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run_serving",
            "--lists=4",
            "--candidates=8",
            f"--json={out}",
            f"--plots={tmp_path / 'plots'}",
            served_run,
        ],
        check=True,
        cwd=ROOT,
        env={
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        },
        timeout=300,
        capture_output=True,
    )
    rows = json.loads(out.read_text())
    assert [r["run"].endswith("(served)") for r in rows] == [False, True]
    assert rows[1]["bytes"] < rows[0]["bytes"] and all(r["items_per_sec"] > 0 for r in rows)
    assert rows[0]["train_examples_per_sec"] > 0  # from the run's metrics.jsonl
    assert sorted(os.listdir(tmp_path / "plots")) == [
        "ndcg10_vs_bytes.png",
        "ndcg10_vs_latency_p50_ms.png",
    ]


def test_pareto_front_keeps_the_undominated_points():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (2.0, 0.4), (4.0, 0.9), (1.0, 0.5)]
    assert timing.pareto_front(points) == [(1.0, 0.5), (2.0, 0.7), (4.0, 0.9)]


def test_auto_kernels_export_as_xla_and_pallas_is_refused():
    model = speed.cross_encoder_model(dict(hidden_size=32, num_attention_heads=2, num_layers=1))
    assert (model.attention, model.norm) == ("auto", "auto")
    fixed = export.exportable(model)
    assert (fixed.attention, fixed.norm) == ("xla", "xla")
    chosen = model.clone(attention="cudnn", norm="xla")
    assert export.exportable(chosen) is chosen
    for field in ("attention", "norm"):
        with pytest.raises(ValueError, match=f"model.{field}='pallas' cannot be exported"):
            export.exportable(model.clone(**{field: "pallas"}))
    pallas = export.exportable(model, "pallas")
    assert (pallas.attention, pallas.norm) == ("pallas", "pallas")


def test_the_export_transforms_tied_features_like_numpy():
    """Integer features with many ties (quantile knots repeat, at the ends too): the traced
    transform equals `FeatureTransform` (NumPy, float64) to float32 precision."""
    rng = np.random.default_rng(0)
    train = np.stack(
        [
            rng.integers(0, 3, 5000),  # three values: runs of equal knots, ends included
            np.where(rng.random(5000) < 0.7, 0, rng.integers(1, 50, 5000)),  # sparse counts
            rng.normal(size=5000),  # no ties
        ],
        axis=1,
    ).astype(np.float32)
    t = transforms.fit_transform(train, ("log1p", "quantile", "standardize"))
    x = np.concatenate([train[:500], [[0, 0, 0], [2, 49, 5], [-1, 100, -5], [1, 0, 0.1]]])
    x = x.astype(np.float32)
    np.testing.assert_allclose(export.traced_transform(t)(x), t(x), atol=2e-5)


def test_the_export_and_the_ranker_refuse_the_same_nan(served_run, tmp_path):
    ranker = serving.load(served_run, "served")
    width = export.raw_width(ranker.transform)
    path = str(tmp_path / "ranker.jaxexport")
    assert export.save(ranker, path, num_features=width, platforms=("cpu",))["missing"] == "error"
    score = export.load(path)
    x = np.random.default_rng(1).lognormal(size=(2, 4, width)).astype(np.float32)
    where = np.array([[True, True, True, False], [True, True, False, False]])
    x[0, 3, 1] = x[1, 2, 0] = np.nan  # on padding: ignored by both
    np.testing.assert_allclose(score(x, where=where), ranker.score(x, where), atol=1e-5)
    x[1, 1, 2] = np.nan  # on a valid item: refused by both, naming it
    for scorer in (lambda: score(x, where=where), lambda: ranker.score(x, where)):
        with pytest.raises(ValueError, match=r"features\[1, 1, 2\] is NaN"):
            scorer()
