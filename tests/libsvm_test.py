"""LibSVM / LETOR reader: qid and .query formats, clear errors, the real LightGBM files."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankjax.data import libsvm

QID_FILE = """\
2 qid:10 1:0.5 3:1.5 # doc a
0 qid:10 2:-1
1 qid:7 1:2 2:3 3:4

0 qid:7 # no features
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_reads_qid_format(tmp_path):
    d = libsvm.read(write(tmp_path, "train.txt", QID_FILE))
    assert d.query_ids.tolist() == ["10", "7"]
    assert d.list_sizes.tolist() == [2, 2]
    np.testing.assert_array_equal(d.labels, [2, 0, 1, 0])
    np.testing.assert_array_equal(d.features, [[0.5, 0, 1.5], [0, -1, 0], [2, 3, 4], [0, 0, 0]])


def test_reads_lightgbm_query_file(tmp_path):
    path = write(tmp_path, "rank.train", "1 1:1\n0 2:1\n3 1:5\n0 1:0\n2 2:2\n")
    write(tmp_path, "rank.train.query", "2\n3\n")
    d = libsvm.read(path, num_features=4)
    assert d.list_sizes.tolist() == [2, 3]
    assert d.features.shape == (5, 4)


def test_num_features_pads_missing_columns(tmp_path):
    d = libsvm.read(write(tmp_path, "a", QID_FILE), num_features=5)
    assert d.features.shape == (4, 5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("1 qid:1 a:1\n", r":1: expected 'index:value'"),
        ("1 qid:1 1:x\n", r":1: expected 'index:value'"),
        ("1 qid:1 0:1\n", r":1: expected 'index:value' with an integer index >= 1"),
        ("1 qid:1 1:1\nzz qid:1 1:1\n", r":2: expected a numeric label"),
        ("1 qid:1 1:1\n1 qid:2 1:1\n1 qid:1 1:1\n", r":3: lines of qid 1 are not contiguous"),
        ("1 qid:1 1:1\n1 1:1\n", r":2: expected 'qid:<id>'"),
        ("1 qid:1 9:1\n", r":1: feature index 9 exceeds num_features=4"),
        ("# only a comment\n\n", "no data lines"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, match):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(libsvm.FormatError, match=match) as e:
        libsvm.read(path, num_features=4)
    assert str(e.value).startswith(path)


def test_group_sizes_must_match_lines(tmp_path):
    path = write(tmp_path, "r", "1 1:1\n0 1:1\n")
    write(tmp_path, "r.query", "3\n")
    with pytest.raises(libsvm.FormatError, match="sum to 3, but .* has 2 lines"):
        libsvm.read(path)


def test_missing_groups_and_files(tmp_path):
    with pytest.raises(libsvm.FormatError, match="no 'qid:'"):
        libsvm.read(write(tmp_path, "r", "1 1:1\n"))
    with pytest.raises(FileNotFoundError, match="nope"):
        libsvm.read(str(tmp_path / "nope"))


def test_real_lightgbm_rank_files(shared_data):
    folder = os.path.join(shared_data, "letor_lightgbm")
    train = libsvm.read(os.path.join(folder, "rank.train"), num_features=300)
    test = libsvm.read(os.path.join(folder, "rank.test"), num_features=300)
    assert (train.num_lists, train.num_items) == (201, 3005)
    assert (test.num_lists, test.num_items) == (50, 768)
    assert set(np.unique(train.labels)) == {0, 1, 2, 3, 4}
    assert train.features.min() >= 0 and train.features.max() <= 1


def _concat(parts):
    return (
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.labels for p in parts]),
        [str(q) for p in parts for q in p.query_ids],
        [int(s) for p in parts for s in p.list_sizes],
    )


def _assert_shards_rebuild(path, num_shards, **kw):
    whole = libsvm.read(path, **kw)
    parts = [libsvm.read(path, shard=(i, num_shards), **kw) for i in range(num_shards)]
    features, labels, qids, sizes = _concat(parts)
    np.testing.assert_array_equal(features, whole.features)
    np.testing.assert_array_equal(labels, whole.labels)
    assert qids == [str(q) for q in whole.query_ids]
    assert sizes == whole.list_sizes.tolist()
    return parts


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    num_shards=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_qid_shards_concatenate_to_the_whole_file(tmp_path_factory, sizes, num_shards, seed):
    rng = np.random.default_rng(seed)
    lines = []
    for q, size in enumerate(sizes):
        for _ in range(size):
            feats = " ".join(f"{j}:{rng.integers(0, 9)}" for j in range(1, rng.integers(2, 5)))
            # Comments and blank lines of random length move the byte boundaries around.
            lines.append(f"{rng.integers(0, 3)} qid:{q * 7} {feats} #{'x' * rng.integers(0, 40)}")
            if rng.random() < 0.2:
                lines.append("")
    path = tmp_path_factory.mktemp("s") / "data.txt"
    path.write_text("\n".join(lines) + "\n")
    parts = _assert_shards_rebuild(str(path), num_shards, num_features=4)
    assert sum(p.num_lists > 0 for p in parts) <= num_shards


def test_group_file_shards_concatenate_and_skip_other_lines(tmp_path, shared_data):
    folder = os.path.join(shared_data, "letor_lightgbm")
    for n in (2, 3, 7):
        parts = _assert_shards_rebuild(os.path.join(folder, "rank.train"), n, num_features=300)
        # Blocks of about equal size: no shard holds more than its share plus one list.
        assert max(p.num_items for p in parts) <= 3005 / n + 30


def test_errors_in_a_shard_name_the_true_line(tmp_path):
    good = "".join(f"1 qid:{q} 1:1\n" for q in range(50))
    path = write(tmp_path, "d.txt", good + "1 qid:50 1:x\n" + good.replace("qid:", "qid:9"))
    errors = []
    for i in range(4):
        try:
            libsvm.read(path, shard=(i, 4))
        except libsvm.FormatError as e:
            errors.append(str(e))
    assert errors == [
        f"{path}:51: expected 'index:value' with an integer index >= 1 and a number, got '1:x'"
    ]


def test_a_query_file_that_ends_early_fails_in_every_shard_that_needs_it(tmp_path):
    path = write(tmp_path, "r", "1 1:1\n0 1:1\n1 1:1\n")
    write(tmp_path, "r.query", "1\n1\n2\n")
    with pytest.raises(libsvm.FormatError, match="sum to 4, but .* has 3 lines"):
        libsvm.read(path, shard=(1, 2))
    assert libsvm.read(path, shard=(0, 2)).list_sizes.tolist() == [1, 1]


def test_an_unsorted_file_read_in_shards_is_reported(tmp_path):
    from rankjax import data

    lines = [f"{q % 2} qid:{q} 1:{q}" for q in range(40)] + ["1 qid:3 1:9"]
    path = write(tmp_path, "train.txt", "\n".join(lines) + "\n")
    test = write(tmp_path, "test.txt", "1 qid:1 1:1\n0 qid:1 1:2\n")
    cfg = dict(source="libsvm", train_file=path, test_file=test, valid_fraction=0.2)
    cfg.update(num_features=1, list_size=8)
    with pytest.raises(libsvm.FormatError, match=r"train.txt:41: lines of qid 3"):
        data.load(cfg)
    # Sharded, the two parts of qid 3 fall in different shards: caught after reading.
    with pytest.raises(libsvm.FormatError, match=r"train.txt: lines of qid 3 are not contiguous"):
        data.load(cfg, shards=(0, 1), num_shards=2)
