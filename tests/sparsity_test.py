"""Sparsity: exact N:M groups, schedules, masks in the optimizer state, zeros that stay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import load_config
from hypothesis import given, settings
from hypothesis import strategies as st

from rankjax import checkpoint, trainer
from rankjax.compression import sparsity as sp


# Each example compiles the mask for a new shape: the examples are the test's cost.
@settings(max_examples=30, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8), (1, 2)]),
    groups=st.integers(1, 5),
    cols=st.integers(1, 7),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_nm_masks_keep_exactly_n_of_every_m(nm, groups, cols, seed, ties):
    n, m = nm
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 3, (groups * m, cols)) if ties else rng.normal(size=(groups * m, cols))
    mask = np.asarray(sp.nm_mask(jnp.asarray(score, jnp.float32), n, m))
    per_group = mask.reshape(groups, m, cols).sum(axis=1)
    assert np.all(per_group == n)
    # What is kept scores at least as high as what is dropped, group by group.
    s = score.reshape(groups, m, cols)
    k = mask.reshape(groups, m, cols)
    kept_min = np.where(k, s, np.inf).min(axis=1)
    dropped_max = np.where(~k, s, -np.inf).max(axis=1)
    assert np.all(kept_min >= dropped_max)


def test_channel_and_block_patterns_zero_whole_structures():
    score = jnp.asarray(np.random.default_rng(0).random((8, 6)), jnp.float32)
    channel = np.asarray(sp.structured_mask(score, "channel", jnp.asarray(0.5)))
    assert set(channel.all(axis=0).tolist()) == {True, False}
    assert np.all(channel.all(axis=0) | ~channel.any(axis=0))  # each column all or nothing
    assert (~channel.any(axis=0)).sum() == 3
    block = np.asarray(sp.structured_mask(score, sp.Block(4, 2), jnp.asarray(0.5)))
    tiles = block.reshape(2, 4, 3, 2).transpose(0, 2, 1, 3).reshape(6, 8)
    assert np.all(tiles.all(axis=1) | ~tiles.any(axis=1)) and (~tiles.any(axis=1)).sum() == 3


def test_gradual_schedule_reaches_the_target_at_end_step():
    s = sp.Sparsifier(
        pattern="unstructured",
        target=0.8,
        schedule="gradual",
        start_step=10,
        end_step=110,
        update_every=10,
    )
    values = [float(s.sparsity_at(t)) for t in (9, 10, 19, 20, 109, 110, 500)]
    assert values[0] == 0 and values[1] == 0 and values[2] == 0
    assert 0 < values[3] < values[4] < 0.8
    assert values[5] == pytest.approx(0.8) and values[6] == pytest.approx(0.8)
    assert bool(s.refreshes_at(110)) and not bool(s.refreshes_at(115))
    assert not bool(s.refreshes_at(120))


def test_gradual_schedule_off_the_update_grid_still_ends_at_the_target():
    # Updates at 1, 11, 21; end_step 25 is off that grid, and a one-step schedule
    # (end_step 1) has a single update: both end at the target, as the schedule says.
    s = sp.Sparsifier(
        pattern="unstructured", target=0.8, start_step=0, end_step=25, update_every=10
    )
    assert [bool(s.refreshes_at(t)) for t in (1, 11, 21, 25, 26)] == [1, 1, 1, 1, 0]
    assert float(s.sparsity_at(21)) < 0.8 and float(s.sparsity_at(25)) == pytest.approx(0.8)
    one = sp.Sparsifier(pattern="ffn", target=0.5, start_step=0, end_step=1, update_every=1)
    assert bool(one.refreshes_at(1)) and float(one.sparsity_at(1)) == pytest.approx(0.5)


def run_wrapped(sparsifier, steps, params=None, lr=0.05):
    params = params or {
        "Dense_0": {
            "kernel": jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32),
            "bias": jnp.zeros(8),
        },
    }
    tx = sparsifier.wrap_optax(optax.adam(lr))
    state = tx.init(params)
    history = []
    for i in range(steps):
        grads = jax.tree_util.tree_map(
            lambda p, i=i: jnp.asarray(np.random.default_rng(i).normal(size=p.shape), p.dtype),
            params,
        )
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(float(np.mean(np.asarray(params["Dense_0"]["kernel"]) == 0)))
    return params, state, history


def test_unstructured_gradual_pruning_hits_the_target_and_zeros_stay_zero():
    s = sp.Sparsifier(
        pattern="unstructured",
        target=0.75,
        schedule="gradual",
        start_step=2,
        end_step=10,
        update_every=2,
    )
    params, state, history = run_wrapped(s, 16)
    assert history[0] == 0.0
    assert history[9] == pytest.approx(0.75) and history[-1] == pytest.approx(0.75)
    assert all(b >= a for a, b in zip(history[:10], history[1:10], strict=False))
    mask = np.asarray(sp.masks_of(state)["Dense_0"]["kernel"])
    assert np.all(np.asarray(params["Dense_0"]["kernel"])[~mask] == 0)
    assert sp.masks_of(state)["Dense_0"]["bias"].shape == ()  # biases are never pruned


def test_oneshot_nm_then_fixed_masks():
    s = sp.Sparsifier(pattern="2:4", schedule="oneshot", start_step=3, end_step=3)
    params, state, history = run_wrapped(s, 8)
    assert history[:2] == [0.0, 0.0] and history[2:] == [0.5] * 6
    kernel = np.asarray(params["Dense_0"]["kernel"])
    assert np.all((kernel != 0).reshape(4, 4, 8).sum(axis=1) == 2)


def test_saliency_criterion_uses_gradients():
    params = {"Dense_0": {"kernel": jnp.ones((4, 1))}}
    tx = sp.Sparsifier(pattern="2:4", criterion="saliency", start_step=1).wrap_optax(optax.sgd(0.0))
    state = tx.init(params)
    grads = {"Dense_0": {"kernel": jnp.asarray([[0.1], [5.0], [0.2], [3.0]])}}
    _, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(
        sp.masks_of(state)["Dense_0"]["kernel"][:, 0], [False, True, False, True]
    )


def test_masks_survive_a_checkpoint_restore(tmp_path):
    s = sp.Sparsifier(pattern="2:4", schedule="oneshot", start_step=1, end_step=1)
    _, state, _ = run_wrapped(s, 2)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1)
    ckpt.save(2, state)
    ckpt.wait()
    fresh = s.wrap_optax(optax.adam(0.05)).init(
        {"Dense_0": {"kernel": jnp.zeros((16, 8)), "bias": jnp.zeros(8)}}
    )
    restored, step = ckpt.restore_or_init(fresh)
    assert step == 2
    np.testing.assert_array_equal(
        sp.masks_of(restored)["Dense_0"]["kernel"], sp.masks_of(state)["Dense_0"]["kernel"]
    )
    assert not np.asarray(sp.masks_of(restored)["Dense_0"]["kernel"]).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pattern="4:2"), "sparsity.pattern='4:2'"),
        (dict(pattern="block:0x4"), "block:RxC"),
        (dict(target=1.0), "sparsity.target=1.0"),
        (dict(criterion="random"), "sparsity.criterion"),
        (dict(start_step=10, end_step=5), "start_step <= end_step"),
    ],
)
def test_bad_sparsity_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sp.Sparsifier(**kwargs)


def test_indivisible_kernel_names_the_parameter():
    tx = sp.Sparsifier(pattern="2:4").wrap_optax(optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"Dense_0/kernel \(6, 3\) to be divisible by 4"):
        tx.init({"Dense_0": {"kernel": jnp.zeros((6, 3))}})


def test_trainer_prunes_quantizes_and_serves(tmp_path):
    config = load_config("synthetic_listwise_int8_nm24", "runlocal,steps=8")
    config.mesh.num_devices = 1
    config.sparsity.update(start_step=3, end_step=5, update_every=1)
    config.train.eval_every = 1  # steps 1-4 are evaluated too, but are not sparse yet
    results = trainer.train_and_evaluate(config, str(tmp_path))
    assert int(results["params"].split("step ")[1].rstrip(")")) >= 5
    assert results["sparsity"]["all"] == pytest.approx(0.5)
    assert results["test_served"] == pytest.approx(results["test"], rel=1e-6)
    # The served integers are stored N:M-packed: half the values plus 2-bit positions.
    saved = checkpoint.load_tree(str(tmp_path / "served"))
    q = saved["aqt"]["EncoderBlock_0"]["SelfAttention_0"]["query"]["quant_dot_general"]["qrhs"]
    packed = q["value"]
    assert set(packed) == {sp.PACKED_VALUES, sp.PACKED_INDEX}
    assert np.asarray(packed[sp.PACKED_VALUES]).dtype == np.int8
    dense = sp.unpack_nm(packed, 2, 4)
    assert dense.shape == (8, 8)
    assert np.all((dense != 0).reshape(-1, 4, 8).sum(axis=1) <= 2)
    assert np.asarray(packed[sp.PACKED_INDEX]).nbytes == 8 * 8 // 2 * 2 // 8


@settings(max_examples=20, deadline=None)
@given(
    nm=st.sampled_from([(1, 4), (2, 4), (2, 8), (1, 2), (4, 16)]),
    groups=st.integers(1, 4),
    cols=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_round_trip(nm, groups, cols, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (groups * m, cols)).astype(np.int8)
    mask = np.asarray(sp.nm_mask(jnp.asarray(np.abs(w), jnp.float32), n, m))
    w = np.where(mask, w, 0).astype(np.int8)
    packed = sp.pack_nm(w, n, m)
    assert packed[sp.PACKED_VALUES].shape == (groups * n, cols)
    np.testing.assert_array_equal(sp.unpack_nm(packed, n, m), w)


def test_packing_a_dense_kernel_is_an_error():
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        sp.pack_nm(np.ones((4, 2), np.int8), 2, 4)


def test_head_pruning_removes_whole_heads_across_q_k_v_and_out():
    from rankjax.models import listwise

    model = listwise.tiny(num_heads=4)  # width 8: 4 heads of 2
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 3, 5)), jnp.ones((1, 3), bool))
    s = sp.Sparsifier(pattern="heads:4", target=0.5, schedule="oneshot", start_step=1)
    params, state, _ = run_wrapped(s, 2, params=params["params"])
    attn = params["EncoderBlock_0"]["SelfAttention_0"]
    dead = None
    for name in ("query", "key", "value"):
        cols = np.asarray(attn[name]["kernel"]).reshape(8, 4, 2)
        zero_heads = np.all(cols == 0, axis=(0, 2))
        assert zero_heads.sum() == 2
        dead = zero_heads if dead is None else dead
        np.testing.assert_array_equal(zero_heads, dead)  # the same heads in q, k and v
    rows = np.asarray(attn["out"]["kernel"]).reshape(4, 2, 8)
    np.testing.assert_array_equal(np.all(rows == 0, axis=(1, 2)), dead)
    assert np.all(np.asarray(params["Dense_0"]["kernel"]) != 0)  # other layers stay dense
