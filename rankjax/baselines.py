"""Non-learned reference rankers, scored by the same evaluator as the models.

* `tfidf`: cosine similarity of character n-gram TF-IDF vectors of the query and the
  item text — the classic lexical baseline of product search (it tolerates typos and
  plurals: "drils" still shares "dri", "ril" with "drill"). As scikit-learn's
  `TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5))`: n-grams within
  space-padded words, raw counts, smoothed idf `ln((1 + n) / (1 + df)) + 1` fitted on
  the training split's queries and items, L2-normalised rows; n-grams unseen in training
  are ignored.
* `constant`: the mean training label for every item (the RMSE reference; its ranking
  keeps each list's data order).

`add_baseline_scores` stores each one as a per-item extra (`baseline:<name>`) of the
evaluation splits, so batches carry it and `ranking.extra_scores` reads it.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse

from rankjax.data import tokens
from rankjax.data.dataset import RankingDataset

BASELINES = ("constant", "tfidf")


def char_ngrams(text: str, low: int = 3, high: int = 5) -> Counter:
    """Counts of the character n-grams (`low`..`high`) of each space-padded, lower-cased
    word of `text`."""
    out: Counter = Counter()
    for word in text.lower().split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) < n:
                break
            out.update(padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


@dataclasses.dataclass(frozen=True)
class TfidfVectorizer:
    """A fitted character n-gram TF-IDF vocabulary (module docstring)."""

    vocabulary: dict[str, int]
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: Iterable[str]) -> TfidfVectorizer:
        df: Counter = Counter()
        n = 0
        for text in texts:
            df.update(char_ngrams(text).keys())
            n += 1
        vocabulary = {g: i for i, g in enumerate(sorted(df))}
        idf = np.array([math.log((1 + n) / (1 + df[g])) + 1.0 for g in sorted(df)], np.float64)
        return cls(vocabulary, idf)

    def transform(self, texts: Sequence[str]) -> scipy.sparse.csr_matrix:
        """`[len(texts), vocabulary]` L2-normalised TF-IDF rows."""
        rows, cols, vals = [], [], []
        for r, text in enumerate(texts):
            for gram, count in char_ngrams(text).items():
                j = self.vocabulary.get(gram)
                if j is not None:
                    rows.append(r)
                    cols.append(j)
                    vals.append(count * self.idf[j])
        m = scipy.sparse.csr_matrix(
            (vals, (rows, cols)), shape=(len(texts), len(self.vocabulary)), dtype=np.float64
        )
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
        return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def tfidf_scores(vectorizer: TfidfVectorizer, queries: Sequence[str], items: Sequence[str]):
    """`[len(queries)]` cosine similarity of each query with its item (paired by index)."""
    q = vectorizer.transform(queries)
    d = vectorizer.transform(items)
    return np.asarray(q.multiply(d).sum(axis=1), np.float32).ravel()


def add_baseline_scores(
    train: RankingDataset,
    datasets: Sequence[RankingDataset],
    names: Sequence[str],
    item_columns: Sequence[str] = (),
) -> list[RankingDataset]:
    """Adds `baseline:<name>` per-item scores to each of `datasets` (fitted on `train`).

    Raises:
      ValueError: an unknown name, or `tfidf` without item text columns.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"evals baselines {unknown}; valid: {list(BASELINES)}")
    extras: list[dict[str, np.ndarray]] = [dict(d.extras) for d in datasets]
    if "constant" in names:
        mean = float(train.labels.mean()) if train.num_items else 0.0
        for d, e in zip(datasets, extras, strict=True):
            e["baseline:constant"] = np.full(d.num_items, mean, np.float32)
    if "tfidf" in names:
        if not item_columns:
            raise ValueError("evals baselines 'tfidf' needs item texts: set data.text.item_columns")
        # Document frequencies over distinct texts: a query judged against 10 products,
        # or a product under 10 queries, counts once.
        fit = dict.fromkeys(tokens.query_texts(train) + tokens.item_texts(train, item_columns))
        vectorizer = TfidfVectorizer.fit(fit)
        for d, e in zip(datasets, extras, strict=True):
            e["baseline:tfidf"] = tfidf_scores(
                vectorizer, tokens.query_texts(d), tokens.item_texts(d, item_columns)
            )
    return [dataclasses.replace(d, extras=e) for d, e in zip(datasets, extras, strict=True)]
