"""Unlabelled query–product lists built from the training catalog, for distillation.

A teacher can score pairs nobody labelled. `with_catalog_lists` adds, for every training
query, one more list: the `per_query` products of the split's catalog (its distinct item
texts) most similar to the query by character n-gram TF-IDF cosine (`baselines.tfidf`,
fitted on the split), leaving out the query's own products. Those are the candidates a
lexical recall stage would return for it: plausible products the raters never saw, where
a student learns the teacher's judgement rather than the labels. Their items carry the
per-item extra `labelled = 0` (1 for the original items), so the label loss skips them
and only the distillation loss reads them (`compression.distillation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rankjax import baselines
from rankjax.data import tokens
from rankjax.data.dataset import RankingDataset, concat, from_groups

LABELLED = "labelled"
_CHUNK = 256  # queries per similarity block: [256, catalog] float64 at a time


def nearest_products(
    queries: Sequence[str],
    products: Sequence[str],
    own: Sequence[np.ndarray],
    k: int,
    vectorizer: baselines.TfidfVectorizer,
) -> np.ndarray:
    """The `k` products most similar to each query, its own products left out.

    Args:
      queries: `[num_queries]` query strings.
      products: `[num_products]` product texts (the catalog).
      own: per query, the indices into `products` it must not get.
      k: products per query (at most `num_products` minus the query's own).
      vectorizer: the fitted TF-IDF vocabulary.

    Returns:
      `[num_queries, k]` int64 indices into `products`, most similar first (ties by index).
    """
    q = vectorizer.transform(queries)
    d = vectorizer.transform(products).T.tocsc()
    out = np.zeros((len(queries), k), np.int64)
    for start in range(0, len(queries), _CHUNK):
        sim = np.asarray((q[start : start + _CHUNK] @ d).todense())
        for row, mine in enumerate(own[start : start + _CHUNK]):
            sim[row, mine] = -np.inf
        out[start : start + len(sim)] = top_k(sim, k)
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of the `k` highest scores, highest first, equal scores in
    column order: the first `k` of a stable descending sort, without sorting whole rows.

    Args:
      scores: `[rows, columns]` scores (`-inf` never chosen before a finite score).
      k: columns per row, 1 <= k <= columns.

    Returns:
      `[rows, k]` int64 column indices.
    """
    # The k-th highest score of each row bounds the candidates; every column tied with
    # it stays a candidate, so the column-order tie break among them is exact.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    out = np.empty((len(scores), k), np.int64)
    for row, (values, bound) in enumerate(zip(scores, kth, strict=True)):
        cols = np.flatnonzero(values >= bound)
        out[row] = cols[np.lexsort((cols, -values[cols]))[:k]]
    return out


def with_catalog_lists(
    dataset: RankingDataset, per_query: int, item_columns: Sequence[str]
) -> RankingDataset:
    """`dataset` followed by one unlabelled list of `per_query` catalog products per query
    (module docstring), with the per-item extra `labelled`. Token extras are dropped
    (the caller tokenizes the result, so both kinds of list share one width).

    Args:
      dataset: the training lists; query ids are query strings, items have `text:*`
        extras.
      per_query: products per added list (at least 1).
      item_columns: the text columns that make an item's text.

    Raises:
      ValueError: `per_query` < 1, or more than the catalog holds besides a query's own
        products.
    """
    texts = np.asarray(tokens.item_texts(dataset, item_columns), dtype=object)
    catalog, first_row, item_product = np.unique(texts, return_index=True, return_inverse=True)
    bounds = dataset.list_offsets
    own = [np.unique(item_product[bounds[i] : bounds[i + 1]]) for i in range(dataset.num_lists)]
    room = len(catalog) - max((len(o) for o in own), default=0)
    if not 1 <= per_query <= room:
        raise ValueError(
            f"distill.catalog_pairs={per_query}: must be between 1 and {room} (the "
            f"{len(catalog)} distinct products of {dataset.source}'s training split, less "
            "the most a query already has)"
        )
    queries = [str(q) for q in dataset.query_ids]
    vectorizer = baselines.TfidfVectorizer.fit([*queries, *catalog])
    picked = first_row[nearest_products(queries, catalog, own, per_query, vectorizer)]
    rows = picked.reshape(-1)  # item rows of `dataset` whose extras the new items copy
    plain = {k: v for k, v in dataset.extras.items() if k not in tokens.TOKEN_KEYS}
    added = from_groups(
        dataset.features[rows],
        np.zeros(len(rows), np.float32),
        [per_query] * dataset.num_lists,
        query_ids=dataset.query_ids,
        feature_names=dataset.feature_names,
        extras={
            **{k: v[rows] for k, v in plain.items()},
            LABELLED: np.zeros(len(rows), np.float32),
        },
        source=f"{dataset.source} (catalog pairs)",
    )
    ones = np.ones(dataset.num_items, np.float32)
    return concat([dataclasses.replace(dataset, extras={**plain, LABELLED: ones}), added])
