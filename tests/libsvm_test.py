"""LibSVM / LETOR reader: qid and .query formats, clear errors, the real LightGBM files."""

import os

import numpy as np
import pytest

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
