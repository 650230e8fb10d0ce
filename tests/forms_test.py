"""Served forms (`compression.forms`): what `quant.serving="auto"` picks on each backend,
one trained model converted to int8, fp8 or bf16, the measured choice between forms, and
serving a finished run in the form it was converted to."""

import dataclasses
import json
import time

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config

from rankjax import checkpoint, serving, trainer
from rankjax import data as data_lib
from rankjax.compression import forms, quantization
from rankjax.data.batches import pad_lists


@dataclasses.dataclass
class FakeDevice:
    platform: str
    compute_capability: str | None = None


@pytest.mark.parametrize(
    "device, want",
    [
        (FakeDevice("cpu"), ("int8",)),
        (FakeDevice("tpu"), ("int8",)),
        (FakeDevice("gpu", "8.0"), ("bf16",)),  # A100: no fp8 GEMMs
        (FakeDevice("gpu", "8.9"), ("fp8", "bf16")),  # L4 / Ada
        (FakeDevice("gpu", "9.0"), ("fp8", "bf16")),  # H100 / H200
        (FakeDevice("gpu", "10.0"), ("fp8", "bf16")),
    ],
)
def test_auto_offers_the_forms_each_backend_runs_natively(device, want):
    assert forms.device_forms(device) == want


def test_each_form_converts_the_same_trained_model():
    q = quantization.Quantizer(mode="qat", weight_bits=4, embedding_bits=4)  # int4 QAT
    assert forms.candidates(q) == ("int8",)  # this CPU
    assert forms.candidates(dataclasses.replace(q, serving="bf16")) == ("bf16",)
    fp8 = forms.quantizer_for(q, "fp8")
    assert (fp8.fp8, fp8.static, fp8.serving, fp8.weight_bits) == (True, True, "fp8", 8)
    integer = forms.quantizer_for(dataclasses.replace(q, fp8=True), "int8")
    assert (integer.fp8, integer.serving, integer.weight_bits) == (False, "aqt", 4)
    bf16 = forms.quantizer_for(q, "bf16")
    assert not bf16.quantizes("Dense_0") and bf16.embedding_bits == 4
    assert bf16.dot_general_factory("serve")("Dense_0") is None
    with pytest.raises(ValueError, match="served form 'int3'"):
        forms.quantizer_for(q, "int3")


def test_fastest_times_every_form_and_picks_the_quickest():
    calls = {"slow": 0, "fast": 0}

    def scorer(name, seconds):
        def score(batch):
            calls[name] += 1
            time.sleep(seconds)
            return jnp.zeros(1)

        return score

    form, seconds = forms.fastest(
        {"slow": scorer("slow", 0.004), "fast": scorer("fast", 0.0)}, [0, 1], repeats=3
    )
    assert form == "fast" and seconds["slow"] > seconds["fast"]
    assert calls == {"slow": 8, "fast": 8}  # one untimed pass, three timed, two batches


def _kernels(tree):
    import jax

    return {
        jax.tree_util.keystr(p): v
        for p, v in jax.tree_util.tree_leaves_with_path(tree)
        if getattr(p[-1], "key", None) in ("kernel", "value")
    }


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """An int8 QAT listwise run converted under `auto` with two forms to choose from (as
    on an fp8 GPU), so the choice is measured."""
    mp = pytest.MonkeyPatch()
    mp.setattr(forms, "device_forms", lambda device=None: ("fp8", "bf16"))
    workdir = str(tmp_path_factory.mktemp("auto"))
    config = load_config("synthetic_listwise_int8", "runlocal,steps=2")
    config.mesh.num_devices = 1
    try:
        results = trainer.train_and_evaluate(config, workdir)
    finally:
        mp.undo()
    return workdir, results


def test_auto_serves_the_measured_fastest_form(auto_run):
    workdir, results = auto_run
    with open(f"{workdir}/compression.json") as f:
        report = json.load(f)
    seconds = {f: r["seconds_per_pass"] for f, r in report["serving_forms"].items()}
    assert set(seconds) == {"fp8", "bf16"} and all(s > 0 for s in seconds.values())
    sizes = {f: r["bytes"] for f, r in report["serving_forms"].items()}
    assert sizes["fp8"] < sizes["bf16"]  # e4m3 kernels against bf16 ones
    form = min(seconds, key=seconds.get)
    assert report["serving_form"] == results["serving_form"] == form
    saved = checkpoint.load_tree(f"{workdir}/served")
    if form == "fp8":
        assert all(v.dtype == jnp.float8_e4m3fn for v in _kernels(saved["aqt"]).values())
    else:
        assert "aqt" not in saved
        assert all(v.dtype == jnp.bfloat16 for v in _kernels(saved["params"]).values())
    # The server rebuilds that form from the record.
    served, best = (serving.load(workdir, p) for p in ("served", "best"))
    got, want = _test_scores(served), _test_scores(best)
    assert np.corrcoef(got, want)[0, 1] > 0.98


def _test_scores(ranker):
    test = data_lib.load(ranker.config.data).test
    batch = pad_lists(test, int(ranker.config.data.list_size))
    return ranker.score_batch(batch)[batch["where"]]


@pytest.mark.parametrize("form", ["bf16", "fp8"])
def test_one_int8_qat_model_serves_in_another_form(tmp_path, form):
    config = load_config("synthetic_listwise_int8", "runlocal,steps=2")
    config.mesh.num_devices = 1
    config.quant.serving = form
    results = trainer.train_and_evaluate(config, str(tmp_path))
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    kernels = _kernels(saved)
    dtype = jnp.bfloat16 if form == "bf16" else jnp.float8_e4m3fn
    assert kernels and all(v.dtype == dtype for v in kernels.values()), kernels.keys()
    assert results["serving_form"] == form
    assert results["test_served"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=0.05)
    if form == "bf16":  # every float parameter in 16 bits
        ratio = results["bytes"]["serving_bytes"] / results["bytes"]["float_bytes"]
        assert 0.45 < ratio <= 0.5
    served, best = (serving.load(str(tmp_path), p) for p in ("served", "best"))
    got, want = _test_scores(served), _test_scores(best)
    assert np.corrcoef(got, want)[0, 1] > 0.98 and not np.array_equal(got, want)


@pytest.mark.parametrize("family", ["ml100k_two_tower", "ml100k_dcn", "beauty_sequential"])
def test_retrieval_families_serve_fp8_and_bf16_and_choose_by_time(
    shared_data, tmp_path, monkeypatch, family
):
    # As on an fp8 GPU: both forms converted (fp8 after static calibration on training
    # batches), the faster at scoring the catalog served and recorded.
    monkeypatch.setattr(forms, "device_forms", lambda device=None: ("fp8", "bf16"))
    arg = "runlocal,towers=int8,steps=4" + (",features" if family == "ml100k_two_tower" else "")
    c = load_config(family, arg)
    results = trainer.train_and_evaluate(c, str(tmp_path))
    timed = results["serving_forms"]
    assert set(timed) == {"fp8", "bf16"} and all(t["seconds_per_pass"] > 0 for t in timed.values())
    form = min(timed, key=lambda f: timed[f]["seconds_per_pass"])
    assert results["serving_form"] == form
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    if form == "fp8":
        assert all(v.dtype == jnp.float8_e4m3fn for v in _kernels(saved["aqt"]).values())
    else:
        assert "aqt" not in saved
    for name, metric in results["test_served"].items():
        assert metric == pytest.approx(results["test"][name], abs=0.05), name


@pytest.mark.parametrize("form", ["fp8", "bf16"])
def test_retrieval_towers_serve_a_fixed_form(shared_data, tmp_path, form):
    c = load_config("ml100k_two_tower", "runlocal,features,towers=int8,steps=4")
    c.quant.serving = form
    results = trainer.train_and_evaluate(c, str(tmp_path))
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    assert results["serving_form"] == form
    dtype = jnp.bfloat16 if form == "bf16" else jnp.float8_e4m3fn
    kernels = _kernels(saved["params" if form == "bf16" else "aqt"])
    assert kernels and all(v.dtype == dtype for v in kernels.values())
    assert results["test_served"]["ndcg@10"] == pytest.approx(results["test"]["ndcg@10"], abs=0.02)
