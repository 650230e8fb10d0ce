"""Ranking lists: padding, masks, truncation, splits, transforms and batches."""

import statistics

import numpy as np
import pytest

from rankjax.data.batches import (
    ShardedTrainBatches,
    TrainBatches,
    eval_batches,
    pad_list_axis,
    pad_lists,
)
from rankjax.data.dataset import concat, from_groups, shard
from rankjax.data.splits import split_by_query, split_folds
from rankjax.data.transforms import FeatureTransform, fit_transform


def dataset(sizes=(3, 1, 5, 2), num_features=2):
    n = sum(sizes)
    features = np.arange(n * num_features, dtype=np.float32).reshape(n, num_features)
    labels = np.arange(n, dtype=np.float32) % 4
    return from_groups(
        features,
        labels,
        sizes,
        query_ids=[f"q{i}" for i in range(len(sizes))],
        extras={"oracle": labels * 2},
    )


def test_pad_lists_pads_with_mask_and_zeros():
    b = pad_lists(dataset(), 4)
    assert b["features"].shape == (4, 4, 2)
    np.testing.assert_array_equal(
        b["where"], [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(b["labels"][0], [0, 1, 2, 0])
    np.testing.assert_array_equal(b["features"][1], [[6, 7], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(b["oracle"][3], [2, 4, 0, 0])  # labels 1, 2 doubled
    assert b["labels"][2].tolist() == [0, 1, 2, 3]  # items 4..7, head-truncated from 5


def test_sampled_padding_keeps_items_of_the_same_list():
    d = dataset()
    b = pad_lists(d, 4, item_keys=np.random.default_rng(0).random(d.num_items))
    list_of_item = d.item_list_index()
    for i in range(d.num_lists):
        rows = b["features"][i][b["where"][i]][:, 0] / 2  # feature 0 is 2 * item index
        assert set(list_of_item[rows.astype(int)]) == {i}
        assert len(set(rows)) == min(d.list_sizes[i], 4)


def test_sampled_truncation_varies_with_rng():
    d = dataset(sizes=(9,))
    picks = {
        tuple(sorted(pad_lists(d, 3, item_keys=np.random.default_rng(s).random(9))["labels"][0]))
        for s in range(20)
    }
    assert len(picks) > 1


def test_select_reorders_lists():
    d = dataset().select(np.array([2, 0]))
    assert d.list_sizes.tolist() == [5, 3]
    assert d.query_ids.tolist() == ["q2", "q0"]
    assert d.features[0, 0] == 8  # first item of list 2


def test_split_by_query_is_deterministic_disjoint_and_complete():
    d = from_groups(np.zeros((300, 1)), np.zeros(300), [3] * 100)
    fr = {"train": 0.6, "valid": 0.2, "test": 0.2}
    a, b = split_by_query(d, fr, seed=0), split_by_query(d, fr, seed=0)
    ids = {k: set(v.query_ids.tolist()) for k, v in a.items()}
    assert ids == {k: set(v.query_ids.tolist()) for k, v in b.items()}
    assert not (ids["train"] & ids["valid"]) and not (ids["train"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == 100
    assert 40 < len(ids["train"]) < 80
    other = split_by_query(d, fr, seed=1)
    assert set(other["train"].query_ids.tolist()) != ids["train"]


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_query(dataset(), {"train": 0.5, "test": 0.2}, 0)


def test_transform_is_fitted_on_train_only():
    train = np.array([[0.0, 10.0], [2.0, 10.0]])
    t = fit_transform(train, ("standardize",))
    np.testing.assert_allclose(t(train)[:, 0], [-1, 1])
    np.testing.assert_allclose(t(train)[:, 1], [0, 0])  # constant feature: centred, not NaN
    np.testing.assert_allclose(t(np.array([[4.0, 10.0]]))[0, 0], 3.0)


def test_log1p_is_signed_and_round_trips_json():
    t = fit_transform(np.array([[-3.0], [3.0], [100.0]]), ("log1p", "standardize"))
    x = FeatureTransform(log1p=True)(np.array([[-np.e + 1]]))
    np.testing.assert_allclose(x, [[-1.0]], rtol=1e-6)
    again = FeatureTransform.from_json(t.to_json())
    np.testing.assert_allclose(again(np.array([[5.0]])), t(np.array([[5.0]])))


def test_quantile_transform_gives_normal_scores_and_midranks_for_ties():
    rng = np.random.default_rng(0)
    # A heavy-tailed feature and a sparse one (70% exact zeros).
    train = np.stack(
        [rng.lognormal(0, 2, 20_000), np.where(rng.random(20_000) < 0.7, 0.0, rng.random(20_000))],
        axis=1,
    )
    t = fit_transform(train, ("quantile",))
    z = t(train)
    # The continuous feature becomes standard normal.
    assert abs(z[:, 0].mean()) < 0.01 and abs(z[:, 0].std() - 1) < 0.02
    np.testing.assert_allclose(np.median(z[:, 0]), 0.0, atol=0.02)
    # All zeros get one score, the normal score of the middle of their 0-70% range.
    zeros = z[train[:, 1] == 0, 1]
    assert np.ptp(zeros) == 0
    np.testing.assert_allclose(zeros[0], statistics.NormalDist().inv_cdf(0.35), atol=0.02)
    # Monotone, and finite beyond the training range.
    probe = np.array([[-1e9, -1.0], [1.0, 0.5], [2.0, 0.6], [1e30, 2.0]])
    out = t(probe)
    assert np.all(np.isfinite(out)) and np.all(np.diff(out, axis=0) >= 0)
    np.testing.assert_allclose(out[[0, -1], 0], [-3.09, 3.09], atol=0.01)
    again = FeatureTransform.from_json(t.to_json())
    np.testing.assert_array_equal(again(probe), out)


def test_quantile_must_come_before_standardize():
    with pytest.raises(ValueError, match="before 'standardize'"):
        fit_transform(np.zeros((4, 1)), ("standardize", "quantile"))


def test_unknown_transform_raises():
    with pytest.raises(ValueError, match="standardize"):
        fit_transform(np.zeros((2, 1)), ("zscore",))


def test_train_batches_are_a_function_of_step():
    d = from_groups(np.arange(40.0)[:, None], np.zeros(40), [4] * 10)
    fresh = TrainBatches(d, 3, 4, seed=7)
    resumed = TrainBatches(d, 3, 4, seed=7)
    seq = [fresh(s) for s in range(8)]
    np.testing.assert_array_equal(resumed(5)["features"], seq[5]["features"])
    # One epoch (3 batches of 3 from 10 lists) visits 9 distinct lists.
    firsts = {int(b["features"][i][b["where"][i]].min()) // 4 for b in seq[:3] for i in range(3)}
    assert len(firsts) == 9


def test_training_batches_equal_padding_the_selected_lists():
    # TrainBatches builds its batches on a grid of the chosen lists' slots; it must equal
    # the reference path, `pad_lists(dataset.select(lists), ...)` with the same keys:
    # truncation, empty lists, padding wider than the longest list, multi-column extras.
    from rankjax.data.batches import _padded_shuffled

    rng = np.random.default_rng(0)
    for trial in range(200):
        sizes = rng.integers(0 if trial % 3 else 1, 15, size=rng.integers(1, 12))
        sizes[0] = max(sizes[0], 1)
        n = int(sizes.sum())
        d = from_groups(
            rng.normal(size=(n, 3)).astype(np.float32),
            rng.integers(0, 4, n).astype(np.float32),
            list(sizes),
            extras={
                "tokens": rng.integers(0, 100, size=(n, 5)).astype(np.int32),
                "oracle": rng.normal(size=n).astype(np.float32),
                "names": np.array([f"p{i}" for i in range(n)], dtype=object),  # not padded
            },
        )
        lists = rng.permutation(len(sizes))[: rng.integers(1, len(sizes) + 1)]
        chosen = d.list_sizes[lists]
        keys = rng.random(int(chosen.sum()))
        list_size = int(rng.integers(1, 20))
        want = pad_lists(d.select(lists), list_size, item_keys=keys)
        got = _padded_shuffled(d, lists, chosen, keys, list_size)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_train_batches_need_enough_lists():
    with pytest.raises(ValueError, match="batch_size"):
        TrainBatches(dataset(), 8, 4, seed=0)


def test_eval_batches_never_truncate_and_fill_with_empty_lists():
    d = dataset(sizes=(3, 1, 20, 2))
    batches = eval_batches(d, batch_size=3)
    assert len(batches) == 2
    # Grouped by length: sizes 1, 2, 3 padded to 8; then 20 padded to 32.
    assert batches[0]["where"].shape == (3, 8) and batches[1]["where"].shape == (3, 32)
    assert batches[0]["where"].sum(1).tolist() == [1, 2, 3]
    assert batches[1]["where"][1:].sum() == 0
    assert sum(b["where"].sum() for b in batches) == d.num_items
    assert sorted(np.concatenate([b["labels"][b["where"]] for b in batches])) == sorted(d.labels)


def test_inconsistent_dataset_raises():
    with pytest.raises(ValueError, match="features"):
        from_groups(np.zeros((3, 2)), np.zeros(4), [4])
    with pytest.raises(ValueError, match="list_offsets"):
        from_groups(np.zeros((4, 2)), np.zeros(4), [2, 1])


def test_sharded_batches_are_the_same_whoever_builds_them():
    d = from_groups(np.arange(80.0)[:, None], np.arange(80.0) % 3, [5, 7, 3, 9, 6] * 2 + [5] * 4)
    shards = [shard(d, i, 2) for i in range(2)]
    assert concat(shards).features.tolist() == d.features.tolist()
    one_process = ShardedTrainBatches(shards, [0, 1], 2, 8, 4, seed=3)
    per_process = [ShardedTrainBatches([s], [i], 2, 8, 4, seed=3) for i, s in enumerate(shards)]
    for step in (0, 3, 11):
        whole = one_process(step)
        for k in whole:
            halves = [b(step)[k] for b in per_process]
            np.testing.assert_array_equal(np.concatenate(halves), whole[k])
        # Each half draws from its own shard only.
        items = whole["features"][..., 0][whole["where"]]
        half = whole["features"][:4, :, 0][whole["where"][:4]]
        assert set(half) <= set(shards[0].features[:, 0]) and len(items) > len(half)
    # Shard streams differ from each other and from an unsharded run.
    assert not np.array_equal(per_process[0](0)["labels"], per_process[1](0)["labels"])
    with pytest.raises(ValueError, match="multiple of the 3 data shards"):
        ShardedTrainBatches(shards, [0, 1], 3, 8, 4, seed=3)


def test_pad_list_axis_adds_empty_items():
    b = eval_batches(dataset(), batch_size=4)[0]
    wide = pad_list_axis(b, 16)
    assert wide["features"].shape[1] == 16 and not wide["where"][:, 8:].any()
    np.testing.assert_array_equal(wide["labels"][:, :8], b["labels"])


def test_split_folds_tests_every_query_exactly_once():
    d = dataset(sizes=(2,) * 200)
    tested = []
    for fold in range(5):
        parts = split_folds(d, 5, fold, valid_fraction=0.1, seed=3)
        ids = {name: set(p.query_ids) for name, p in parts.items()}
        assert not ids["train"] & ids["test"] and not ids["valid"] & ids["test"]
        assert not ids["train"] & ids["valid"]
        assert ids["train"] | ids["valid"] | ids["test"] == set(d.query_ids)
        assert 20 <= len(ids["test"]) <= 60  # about a fifth
        tested += list(ids["test"])
    assert sorted(tested) == sorted(d.query_ids)
    again = split_folds(d, 5, 2, valid_fraction=0.1, seed=3)["test"]
    assert list(again.query_ids) == list(split_folds(d, 5, 2, 0.1, 3)["test"].query_ids)


def test_split_folds_rejects_bad_fold():
    with pytest.raises(ValueError, match="fold"):
        split_folds(dataset(), 5, 5, 0.1, 0)


def test_length_bucketed_batches_group_similar_lengths_and_cover_the_epoch():
    d = dataset(sizes=(1,) * 64)
    lengths = np.random.default_rng(0).integers(1, 100, 64)
    plain = TrainBatches(d, 4, 2, seed=1)
    bucketed = TrainBatches(d, 4, 2, seed=1, lengths=lengths, bucket_batches=8)

    def spread(tb):  # mean within-batch range of lengths over an epoch
        order = tb._epoch_order(0)
        batches = order.reshape(-1, 4)
        return np.mean([np.ptp(lengths[b]) for b in batches]), sorted(order)

    (s_plain, all_plain), (s_bucket, all_bucket) = spread(plain), spread(bucketed)
    assert all_bucket == all_plain == list(range(64))  # every list once per epoch
    assert s_bucket < 0.5 * s_plain
    # Deterministic: a resumed stream builds the same batches.
    again = TrainBatches(d, 4, 2, seed=1, lengths=lengths, bucket_batches=8)
    np.testing.assert_array_equal(again(5)["labels"], bucketed(5)["labels"])
