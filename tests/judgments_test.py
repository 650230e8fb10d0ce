"""Judgment-table reader: grouping by query, encodings, clear errors, Home Depot."""

import os

import numpy as np
import pytest

from rankjax.data import judgments
from rankjax.data.libsvm import FormatError

CSV = """\
id,query,product,title,relevance,price
1,drill,p1,Cordless Drill,3,99.5
2,saw,p2,Hand Saw,2,10
3,drill,p3,Drill Bits,2.5,5
"""


def write(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "j.csv"
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_groups_rows_by_query_in_first_appearance_order(tmp_path):
    d = judgments.read(
        write(tmp_path, CSV),
        query_column="query",
        label_column="relevance",
        item_column="product",
        feature_columns=("price",),
        text_columns=("title",),
    )
    assert d.query_ids.tolist() == ["drill", "saw"]
    assert d.list_sizes.tolist() == [2, 1]
    np.testing.assert_array_equal(d.labels, [3, 2.5, 2])
    np.testing.assert_array_equal(d.features[:, 0], [99.5, 5, 10])
    assert d.extras["item_id"].tolist() == ["p1", "p3", "p2"]
    assert d.extras["text:title"].tolist() == ["Cordless Drill", "Drill Bits", "Hand Saw"]


def test_latin1_needs_the_encoding(tmp_path):
    path = write(tmp_path, CSV.replace("Hand Saw", "Hand S\u00e4w"), encoding="latin-1")
    with pytest.raises(FormatError, match="cannot decode as utf-8.*latin-1"):
        judgments.read(path, query_column="query", label_column="relevance")
    d = judgments.read(
        path,
        query_column="query",
        label_column="relevance",
        text_columns=("title",),
        encoding="latin-1",
    )
    assert "Hand S\u00e4w" in d.extras["text:title"].tolist()


@pytest.mark.parametrize(
    "text, match",
    [
        (CSV.replace("relevance", "score"), r":1: missing column\(s\) \['relevance'\]"),
        (CSV.replace("2,saw,p2,Hand Saw,2,10", "2,saw,p2"), r":3: expected 6 fields, got 3"),
        (CSV.replace("Hand Saw,2,", "Hand Saw,high,"), r":3: column 'relevance' must be a finite"),
        (CSV.replace("99.5", "nan"), r":2: column 'price' must be a finite"),
        ("id,query,relevance,price\n", "no data rows"),
        ("", "empty file"),
    ],
)
def test_bad_tables_name_file_and_line(tmp_path, text, match):
    with pytest.raises(FormatError, match=match):
        judgments.read(
            write(tmp_path, text),
            query_column="query",
            label_column="relevance",
            feature_columns=("price",),
        )


def test_real_home_depot_table(shared_data):
    d = judgments.read(
        os.path.join(shared_data, "homedepot", "train.csv"),
        query_column="search_term",
        label_column="relevance",
        item_column="product_uid",
        text_columns=("product_title",),
        encoding="latin-1",
    )
    assert d.num_items == 74_067
    assert d.num_lists == 11_795
    assert d.labels.min() == 1.0 and d.labels.max() == 3.0
