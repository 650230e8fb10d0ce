"""The speed module's pieces at toy sizes: served variants score like bf16, the timers
return rates, the attention choice, and the results table."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed, timing
from rankjax.kernels import short_attention
from rankjax.models import bert

SHAPE = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_layers=1)


def test_served_variants_rank_like_bf16():
    calib = speed.pair_tokens(32, 16, 1)
    served = ("fp8 (static scales) served", "int8 (AQT w8a8) served")
    scorers = speed.scoring_variants(SHAPE, ("xla",), served, calib)
    assert [s.name for s in scorers][0] == "rankjax bf16, xla attention"
    batch = speed.pair_tokens(64, 16, 2)
    scores = [np.asarray(s.score(s.variables, batch), np.float32) for s in scorers]
    assert all(s.shape == (64, 1) and np.all(np.isfinite(s)) for s in scores)
    for s, out in zip(scorers, scores, strict=True):  # weights compiled in: the same scores
        served = np.asarray(s.served(batch), np.float32)
        np.testing.assert_allclose(served, out, rtol=1e-2, atol=1e-2, err_msg=s.name)
    for s, out in zip(scorers[1:], scores[1:], strict=True):
        assert speed.agreement(scores[0], out) > 0.95, s.name
        assert not np.allclose(out, scores[0]), s.name  # compression changed something
    fp8 = next(s for s in scorers if "fp8" in s.name)
    kernels = [
        v
        for p, v in jax.tree_util.tree_leaves_with_path(fp8.variables["aqt"])
        if p[-1].key == "kernel"
    ]
    assert len(kernels) == 6 and all(k.dtype == jnp.float8_e4m3fn for k in kernels)


def test_exported_scorer_scores_like_the_served_model(tmp_path):
    scorer = speed.scoring_variants(SHAPE, ("xla",), served=())[0]
    tokens = speed.pair_tokens(6, 16, 4)
    got = speed.exported_scorer(scorer, 6, 16, str(tmp_path))(tokens)
    want = scorer.served(tokens)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want, np.float32).reshape(6, 1), rtol=1e-3, atol=1e-3
    )


def test_agreement_is_spearman():
    assert speed.agreement(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert speed.agreement(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_rates_are_measured():
    scorer = speed.scoring_variants(SHAPE, ("xla",), served=())[0]
    timing = speed.measure_scoring(scorer, batch=8, length=16, latency_batch=4, repeats=2)
    assert timing["docs_per_sec"] > 0 and 0 < timing["p50_ms"] <= timing["p99_ms"]
    exported = speed.measure_exported(scorer, batch=8, length=16, latency_batch=4, repeats=2)
    assert exported["docs_per_sec"] > 0 and 0 < exported["p50_ms"] <= exported["p99_ms"]
    # The training timer (shared by the cross-encoder's steps) on the listwise ranker.
    rate = speed.listwise_train_rate(
        4, 12, 10, repeats=2, block=2, d_model=8, num_heads=2, num_layers=1
    )
    assert rate > 0
    # The two-tower step with its tables replicated and with their rows split.
    for model_axis in (1, 2):
        assert speed.two_tower_train_rate(1000, 8, 16, 2, model_axis, repeats=1, block=1) > 0
    with pytest.raises(ValueError, match="num_devices=64, but 8 device"):
        speed.train_step_rate(8, 16, num_devices=64, shape=SHAPE)


def test_data_parallel_training_step_splits_the_batch():
    # Each device computes its share of the batch and the gradients are summed across
    # devices (an earlier version closed over the batch, which jit embedded as a replicated
    # constant: every device computed the whole batch and scaling read 1.0x).
    model = speed.cross_encoder_model(SHAPE, dtype="bfloat16")
    tokens = speed.pair_tokens(8, 16, 0)
    labels, where = np.ones((8, 1), np.float32), np.ones((8, 1), bool)
    step, state, batch = speed.training_step(
        model, speed.losses.get("mse"), tokens, labels, where, 2, 1e-3
    )
    assert batch["inputs"]["tokens"].sharding.shard_shape((8, 1, 16)) == (4, 1, 16)
    compiled = step.lower(state, batch).compile()
    hlo = compiled.as_text()
    assert "all-reduce" in hlo
    assert "s32[4,1,16]" in hlo and "s32[8,1,16]" not in hlo  # per-device token blocks
    # It is the trainer's step: its metrics, and the state advanced by one.
    state, metrics = compiled(state, batch)
    assert set(metrics) == {"loss", "grad_norm", "param_norm", "update_norm"}
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


def test_attention_choice(monkeypatch):
    assert bert.attention_kernel("xla", 0.1, True) == "xla"
    assert bert.attention_kernel("cudnn", 0.1, False) == "cudnn"
    assert bert.attention_kernel("pallas", 0.0, True) == "pallas"
    # "auto" on a GPU without attention dropout: the Pallas kernel for short rows (and for
    # packed rows or fp8 serving up to 128 tokens), cuDNN's for longer 16-bit rows, else
    # XLA's.
    assert bert.attention_kernel("auto", 0.0, False, 64) == "xla"  # the tests run on CPU
    monkeypatch.setattr(bert.jax, "default_backend", lambda: "gpu")
    auto = functools.partial(bert.attention_kernel, "auto")
    assert auto(0.1, False, 64) == "pallas"
    assert auto(0.0, True, 64, dtype=jnp.bfloat16) == "pallas"
    assert auto(0.0, True, 128, dtype=jnp.bfloat16) == "cudnn"
    assert auto(0.0, False, 256, dtype=jnp.float16) == "cudnn"
    assert auto(0.0, True, 128) == "pallas"  # float32: not cuDNN's
    assert auto(0.0, False, 128, packed=True, dtype=jnp.bfloat16) == "pallas"  # segments
    assert auto(0.0, False, 128, dtype=jnp.bfloat16, fp8=True) == "pallas"  # writes e4m3
    assert auto(0.0, False, 256, dtype=jnp.bfloat16, fp8=True) == "cudnn"
    assert auto(0.0, False, 256, packed=True, dtype=jnp.bfloat16) == "xla"  # no kernel fits
    assert auto(0.0, False, 256) == "xla"  # too long for one block, float32
    assert auto(0.1, True, 64) == "xla"  # dropout
    assert auto(0.0, False) == "xla"  # length unknown
    for fused in ("cudnn", "pallas"):
        with pytest.raises(ValueError, match="applies no attention dropout"):
            bert.attention_kernel(fused, 0.1, True)
    with pytest.raises(ValueError, match="model.attention='flash'"):
        bert.attention_kernel("flash", 0.0, False)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN and Triton kernels need a GPU")
def test_fused_attention_matches_xla_on_padded_pairs_on_gpu():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(4, 16, 2, 32)), jnp.bfloat16) for _ in range(3))
    mask = jnp.arange(16)[None, :] < jnp.array([[16], [9], [3], [1]])
    plain = short_attention.reference(q, k, v, mask)
    for kernel in ("cudnn", "pallas"):
        fused = bert.fused_attention(q, k, v, mask, kernel)
        np.testing.assert_allclose(
            np.asarray(fused, np.float32), np.asarray(plain, np.float32), atol=2e-2
        )


def test_markdown_table():
    text = timing.markdown_table("T", ["name", "x"], [["a", 12345.6], ["bb", 0.01234]])
    assert text.splitlines()[1:3] == ["T", ""]
    assert text.splitlines()[3:] == [
        "| name |      x |",
        "|-----:|-------:|",
        "|    a | 12,346 |",
        "|   bb | 0.0123 |",
    ]


def test_bf16_baseline_compares_like_with_like():
    rows = [
        {"variant": "rankjax bf16, xla attention", "docs_per_sec": 200.0},
        {"variant": "rankjax bf16, pallas attention", "docs_per_sec": 270.0},
        {"variant": "rankjax fp8 (static scales) served", "docs_per_sec": 330.0},
        {"variant": "rankjax bf16, pallas attention" + speed.EXPORTED, "docs_per_sec": 290.0},
        {"variant": "rankjax fp8 (static scales) served" + speed.EXPORTED, "docs_per_sec": 320.0},
    ]
    assert speed.bf16_baseline(rows, "rankjax fp8 (static scales) served") == 270.0
    assert speed.bf16_baseline(rows, "PyTorch bfloat16 eager") == 270.0
    assert speed.bf16_baseline(rows, rows[-1]["variant"]) == 290.0
    no_bf16_export = rows[:3] + rows[4:]
    assert speed.bf16_baseline(no_bf16_export, rows[-1]["variant"]) == 270.0
    with pytest.raises(ValueError, match="no rankjax bf16 row"):
        speed.bf16_baseline(rows[2:3], rows[2]["variant"])


def test_latency_breakdown_times_each_loop():
    fn, x = speed.one_kernel_program()
    ms = speed.latency_breakdown(fn, x, calls=20, block=5)
    assert set(ms) == {"synced_p50", "synced_p10", "synced_p99", "back_to_back", "dispatch_p50"}
    assert all(v > 0 for v in ms.values()), ms
    assert ms["synced_p10"] <= ms["synced_p50"] <= ms["synced_p99"]
    scorer = speed.scoring_variants(SHAPE, ("xla",), served=())[0]
    tokens = jax.device_put(speed.pair_tokens(4, 16, 2))
    assert speed.latency_breakdown(scorer.served, tokens, calls=10, block=5)["synced_p50"] > 0


def test_text_rankers_table_names_runs_apart_when_folder_names_repeat():
    from benchmarks import text_rankers_table

    names = text_rankers_table.run_names(["/o/hd_minilm/seed_0", "/o/hd_mpnet/seed_0/", "/o/st"])
    assert list(names.values()) == ["hd_minilm/seed_0", "hd_mpnet/seed_0", "st"]
