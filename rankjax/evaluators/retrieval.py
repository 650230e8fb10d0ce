"""Recommendation and retrieval evaluation: full ranking over the catalog, and ranking
against sampled negatives — the two protocols of the literature, named and kept apart.

* **Full ranking** (`FullRanking`, `evals` type `full_ranking`, RecBole's `mode=full`):
  every user's scores over all items; the items the user interacted with in the training
  (and, for test, validation) data are excluded from the ranking, and the held-out items
  are the relevant ones — but for repeats of excluded items, which are no new
  recommendation (logs with repeated events, such as the synthetic shop's; RecBole's
  ml-100k and Beauty have none). Metrics per user, then averaged over users with at least
  one such held-out item: `recall@K` = hits in the top K / held-out items, `ndcg@K` with
  binary gains and the ideal DCG of min(held-out, K) hits, `mrr@K` = 1 / rank of the
  first hit in the top K (0 if none), `hit@K` = whether any held-out item is in the top
  K, `precision@K` = hits / K, `auc` = the share of (held-out, other unexcluded item)
  pairs ordered right, per user (GAUC with every user weighted equally; CTR papers often
  weight users by impressions).
* **Sampled negatives** (`SampledRanking`, `evals` type `sampled_ranking`, SASRec and
  BERT4Rec's protocol): each held-out item is ranked against `num_negatives` items the
  user never interacted with, drawn uniformly or in proportion to training popularity;
  ties count against the held-out item (it ranks below every negative with the same
  score), so a constant scorer is never rewarded. `hit@K` and `ndcg@K` = 1 / log2(rank +
  1) when the rank is <= K.

Sampled metrics overestimate full-ranking ones and can reorder models (Krichene & Rendle,
2020); report which protocol a number comes from.

Options of an `evals` entry: `metrics` (`<metric>@K`), `users_per_chunk` (users scored
per call: bounds memory at chunk x catalog scores); `sampled_ranking` also takes
`num_negatives` (default 100), `negatives` (`popularity`, the default, or `uniform`) and
`seed` (valid draws with `seed`, test with `seed + 1`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import metrics as metrics_lib
from rankjax.types import ScoreFn


def _cutoffs(names: Sequence[str]) -> list[tuple[str, int]]:
    """`(kind, k)` of each top-K metric name (`metrics.TOP_K_NAMES`; "auc": k 0)."""
    parsed = [metrics_lib.parse_metric(n, metrics_lib.TOP_K_NAMES) for n in names]
    return [(kind, k or 0) for kind, k in parsed]


def user_item_mask(
    users: np.ndarray, items: np.ndarray, rows: np.ndarray, num_items: int
) -> np.ndarray:
    """`[len(rows), num_items]` bool: True where user `rows[i]` (sorted) interacted."""
    users, items = np.asarray(users), np.asarray(items)
    sel = np.isin(users, rows)
    mask = np.zeros((len(rows), num_items), bool)
    mask[np.searchsorted(rows, users[sel]), items[sel]] = True
    return mask


class FullRanking:
    """Full-ranking metrics over the catalog (module docstring).

    Args:
      seen: `(users, items)` interactions to exclude from each user's ranking (for the
        test split: training and validation interactions).
      held_out: `(users, items)` the relevant items.
      num_items: catalog size.
      metrics: names `<metric>@K` (`metrics.TOP_K_NAMES`) or `auc`.
      users_per_chunk: users scored per call.
    """

    def __init__(
        self,
        *,
        seen: tuple[np.ndarray, np.ndarray],
        held_out: tuple[np.ndarray, np.ndarray],
        num_items: int,
        metrics: Sequence[str] = ("recall@10", "ndcg@10", "mrr@10", "hit@10"),
        users_per_chunk: int = 256,
    ):
        self._parsed = _cutoffs(metrics)
        self._kmax = max([k for _, k in self._parsed] + [1])
        if self._kmax > num_items:
            raise ValueError(f"cutoff K={self._kmax} exceeds the catalog of {num_items} items")
        self.metrics = tuple(metrics)
        self.seen = tuple(np.asarray(a) for a in seen)
        self.held_out = tuple(np.asarray(a) for a in held_out)
        self.num_items = num_items
        self.users_per_chunk = users_per_chunk

    def run(self, score_fn: ScoreFn) -> dict[str, float]:
        """`{name: mean over users with a held-out item they had not interacted with}` of
        `score_fn({"users": [n]}) -> [n, num_items]`."""
        metrics, held_users, held_items = self.metrics, *self.held_out
        users = np.unique(held_users)
        sums = {m: 0.0 for m in metrics}
        evaluated = 0
        for start in range(0, len(users), self.users_per_chunk):
            rows = users[start : start + self.users_per_chunk]
            excluded = user_item_mask(*self.seen, rows, self.num_items)
            # A held-out repeat of an excluded item is no new item to recommend (and keeping
            # just those rankable would tell the scorer which seen items recur: a leak).
            relevant = user_item_mask(held_users, held_items, rows, self.num_items) & ~excluded
            keep = relevant.any(1)
            rows, relevant, excluded = rows[keep], relevant[keep], excluded[keep]
            evaluated += len(rows)
            if not len(rows):
                continue
            scores = jnp.where(jnp.asarray(excluded), -jnp.inf, score_fn({"users": rows}))
            _, top = jax.lax.top_k(scores, self._kmax)  # [n, kmax] item indices, best first
            hits = np.take_along_axis(relevant, np.asarray(top), axis=1)  # [n, kmax]
            num_relevant = relevant.sum(1)
            for name, (kind, k) in zip(metrics, self._parsed, strict=True):
                if kind == "auc":
                    v = _user_auc(np.asarray(scores), relevant, excluded)
                else:
                    v = metrics_lib.top_k_metric(kind, hits, num_relevant, k)
                sums[name] += float(v.sum())
        if not evaluated:
            return dict.fromkeys(metrics, 0.0)
        return {m: sums[m] / evaluated for m in metrics}


def _user_auc(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """`[n]` per-user AUC (`metrics.auc`, ties against the held-out items) over the items
    neither held out nor excluded as negatives; 0 for a user without negatives."""
    out = np.zeros(len(scores))
    for i in range(len(scores)):
        candidates = ~excluded[i]
        if (candidates & ~relevant[i]).any():
            out[i] = metrics_lib.auc(scores[i, candidates], relevant[i, candidates], "against")
    return out


def sample_negatives(
    users: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray],
    num_items: int,
    num_negatives: int,
    *,
    popularity: np.ndarray | None = None,
    seed: int = 0,
    max_rounds: int = 100,
) -> np.ndarray:
    """`[len(users), num_negatives]` distinct items each user never interacted with (in
    `seen`), uniformly or with probability proportional to `popularity` (counts).

    Vectorised rejection sampling: every round draws twice the needed items for the rows
    still open and keeps rows that got enough unseen, distinct ones.
    """
    users = np.asarray(users, np.int64)
    p = None
    if popularity is not None:
        p = np.asarray(popularity, np.float64)
        if p.sum() <= 0 or (p < 0).any():
            raise ValueError("popularity must be >= 0 with a positive total")
        p = p / p.sum()
    seen_keys = np.unique(np.asarray(seen[0], np.int64) * num_items + np.asarray(seen[1]))
    drawable = num_items if p is None else int(np.count_nonzero(p))
    seen_users, seen_items = seen_keys // num_items, seen_keys % num_items
    counted = np.ones(len(seen_keys), bool) if p is None else p[seen_items] > 0
    banned = np.bincount(seen_users[counted], minlength=int(users.max(initial=0)) + 1)
    short = drawable - banned[users] < num_negatives
    if short.any():
        u = int(users[np.flatnonzero(short)[0]])
        raise ValueError(
            f"user {u} has only {drawable - banned[u]} unseen items that can be drawn, fewer "
            f"than num_negatives={num_negatives}"
        )
    rng = np.random.default_rng(seed)
    out = np.zeros((len(users), num_negatives), np.int64)
    open_rows = np.arange(len(users))
    for _ in range(max_rounds):
        if not open_rows.size:
            return out
        draw = rng.choice(num_items, size=(len(open_rows), 2 * num_negatives), p=p)
        ok = ~np.isin(users[open_rows, None] * num_items + draw, seen_keys)
        # Keep the first occurrence of an item within a row.
        order = np.argsort(draw, axis=1, kind="stable")
        sorted_draw = np.take_along_axis(draw, order, axis=1)
        repeat = np.zeros_like(ok)
        np.put_along_axis(repeat, order[:, 1:], sorted_draw[:, 1:] == sorted_draw[:, :-1], axis=1)
        ok &= ~repeat
        enough = ok.sum(1) >= num_negatives
        rows = np.flatnonzero(enough)
        take = ok[rows] & (np.cumsum(ok[rows], axis=1) <= num_negatives)
        out[open_rows[rows]] = draw[rows][take].reshape(len(rows), num_negatives)
        open_rows = open_rows[~enough]
    raise RuntimeError(f"negative sampling did not finish in {max_rounds} rounds")


def sampled_ranking(
    positive_scores: np.ndarray,
    negative_scores: np.ndarray,
    metrics: Sequence[str] = ("hit@10", "ndcg@10"),
) -> dict[str, float]:
    """Metrics of one held-out item per row ranked against its sampled negatives.

    Args:
      positive_scores: `[n]` the held-out items' scores.
      negative_scores: `[n, num_negatives]`.
      metrics: `hit@K`, `ndcg@K` or `mrr@K`.

    Returns:
      `{name: mean over rows}`. Rank = 1 + negatives scoring >= the positive.
    """
    pos = np.asarray(positive_scores, np.float64)[:, None]
    rank = 1 + (np.asarray(negative_scores, np.float64) >= pos).sum(1)
    out = {}
    for name in metrics:
        metrics_lib.parse_metric(name, metrics_lib.SAMPLED_NAMES)  # one relevant item
    for name, (kind, k) in zip(metrics, _cutoffs(metrics), strict=True):
        hits = (rank[:, None] - 1) == np.arange(k)  # the held-out item's position, if <= k
        v = metrics_lib.top_k_metric(kind, hits, np.ones(len(rank), np.int64), k)
        out[name] = float(v.mean())
    return out


class SampledRanking:
    """`sampled_ranking` of a scorer: each row's held-out item against its sampled
    negatives.

    Args:
      users: `[n]` the evaluated users (one held-out item each).
      positives: `[n]` their held-out items.
      negatives: `[n, num_negatives]` from `sample_negatives`.
      metrics: `hit@K`, `ndcg@K` or `mrr@K`.
      users_per_chunk: rows scored per call.
    """

    def __init__(
        self,
        *,
        users: np.ndarray,
        positives: np.ndarray,
        negatives: np.ndarray,
        metrics: Sequence[str] = ("hit@10", "ndcg@10"),
        users_per_chunk: int = 256,
    ):
        self.metrics = tuple(metrics)
        self.users = np.asarray(users)
        self.candidates = np.concatenate(
            [np.asarray(positives)[:, None], np.asarray(negatives)], axis=1
        )
        self.users_per_chunk = users_per_chunk

    def run(self, score_fn: ScoreFn) -> dict[str, float]:
        """`{name: mean over rows}` of `score_fn({"users": [n], "items": [n, 1 +
        num_negatives]}) -> [n, 1 + num_negatives]`."""
        picked = []
        for start in range(0, len(self.users), self.users_per_chunk):
            rows = slice(start, start + self.users_per_chunk)
            batch = {"users": self.users[rows], "items": self.candidates[rows]}
            picked.append(np.asarray(score_fn(batch)))
        got = np.concatenate(picked) if picked else np.zeros((0, self.candidates.shape[1]))
        return sampled_ranking(got[:, 0], got[:, 1:], self.metrics)
