"""Reference rankers: character n-gram TF-IDF (hand-checked) and the constant scorer."""

import math

import numpy as np
import pytest

from rankjax import baselines
from rankjax.data.dataset import from_groups


def test_char_ngrams_pad_words_and_count():
    grams = baselines.char_ngrams("Ab ab", 3, 3)
    assert grams == {" ab": 2, "ab ": 2}
    assert baselines.char_ngrams("a", 3, 5) == {" a ": 1}


def test_tfidf_matches_a_hand_computation():
    vec = baselines.TfidfVectorizer.fit(["ab", "ab", "cd"])
    # 3-grams " ab", "ab " in 2 of 3 texts, " cd", "cd " in 1; 4-grams " ab ", " cd ".
    idf_ab = math.log(4 / 3) + 1
    assert vec.idf[vec.vocabulary[" ab"]] == pytest.approx(idf_ab)
    assert vec.idf[vec.vocabulary[" cd"]] == pytest.approx(math.log(4 / 2) + 1)
    got = baselines.tfidf_scores(vec, ["ab", "ab", "ab zz"], ["ab", "cd", "ab"])
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    assert got[1] == pytest.approx(0.0)
    # "zz" n-grams are unseen in training and ignored: same vector as "ab".
    assert got[2] == pytest.approx(1.0, abs=1e-6)


def test_baseline_scores_become_item_extras():
    d = from_groups(
        np.zeros((3, 0), np.float32),
        np.array([1.0, 2.0, 3.0], np.float32),
        [2, 1],
        query_ids=np.array(["drill", "saw"], dtype=object),
        extras={"text:title": np.array(["drill bit", "hammer", "saw"], dtype=object)},
    )
    (out,) = baselines.add_baseline_scores(d, [d], ("constant", "tfidf"), ("title",))
    np.testing.assert_allclose(out.extras["baseline:constant"], 2.0)
    tfidf = out.extras["baseline:tfidf"]
    assert tfidf[0] > 0.3 and tfidf[1] == 0.0 and tfidf[2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="item_columns"):
        baselines.add_baseline_scores(d, [d], ("tfidf",))
    with pytest.raises(ValueError, match="bm25"):
        baselines.add_baseline_scores(d, [d], ("bm25",))
