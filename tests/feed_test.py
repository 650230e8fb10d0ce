"""The threaded input pipeline (`rankjax.data.feed`): the same batches, in step order, as
building each in the loop; errors surface unchanged; batch builders are safe to call from
several threads across an epoch's end."""

import numpy as np
import pytest
from helpers import load_config

from rankjax import trainer
from rankjax.data import feed
from rankjax.data.batches import TrainBatches
from rankjax.data.dataset import from_groups
from rankjax.tasks.recommender import epoch_rows


def _lists(num_lists=10, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=num_lists)
    n = int(sizes.sum())
    return from_groups(rng.normal(size=(n, 3)), rng.integers(0, 3, size=n), sizes)


@pytest.mark.parametrize("threads", [1, 8])
def test_threaded_batches_equal_batches_built_in_the_loop_across_epochs(threads):
    # 10 lists, 3 a batch: an epoch ends every 3 steps, so threads straddle epochs often.
    made = TrainBatches(_lists(), 3, 6, seed=4)
    expected = [TrainBatches(_lists(), 3, 6, seed=4)(s) for s in range(5, 65)]
    got = list(feed.batches_from(made, 5, 65, threads=threads, prefetch=16))
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected, strict=True), 5):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {step} {key}")


def test_recommender_rows_are_the_same_from_threads():
    rows = epoch_rows(3, size=50, batch_size=8)
    fresh = epoch_rows(3, size=50, batch_size=8)
    got = list(feed.batches_from(rows, 0, 40, threads=8, prefetch=8))
    for step, r in enumerate(got):
        np.testing.assert_array_equal(r, fresh(step))


def test_an_error_in_a_batch_is_raised_unchanged_at_its_step():
    def batches(step):
        if step == 6:
            raise ValueError("f.txt:7: bad row")
        return step

    seen = []
    with pytest.raises(ValueError, match=r"^f.txt:7: bad row$"):
        for b in feed.batches_from(batches, 2, 10, threads=4, prefetch=4):
            seen.append(b)
    assert seen == [2, 3, 4, 5]


def test_empty_range_and_no_threads():
    assert list(feed.batches_from(lambda s: s, 4, 4)) == []
    assert list(feed.batches_from(lambda s: s, 1, 4, threads=0)) == [1, 2, 3]


def test_training_with_input_threads_matches_training_without(tmp_path):
    results = []
    for threads in (0, 4):
        c = load_config("synthetic_listwise", "runlocal,steps=6")
        c.train.input_threads = threads
        results.append(trainer.train_and_evaluate(c, str(tmp_path / str(threads))))
    assert results[0]["test"] == results[1]["test"]
