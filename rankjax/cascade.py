"""Recall-then-rank: a cheap stage retrieves top-K from the whole catalog, a heavier stage
re-orders those K, and both are measured as one system.

For every evaluated user, stage 1 scores the catalog (the user's earlier items excluded)
and keeps its top K (`jax.lax.top_k`; a dot-product stage 1 served from an index would use
`topk.top_k` / `sharded_top_k`); stage 2 scores only those K; the final ranking is the
K candidates ordered by stage 2, every other item below them. Reported (full-ranking
definitions of `evaluators.retrieval`, the same users and held-out items):

* `stage1`: stage 1's own metrics, and its `recall@K` — the ceiling for anything stage 2
  can do;
* `final`: the cascade's metrics;
* `stage2_alone`: stage 2 over the whole catalog (what the cascade approximates);
* `ms_per_user`: measured wall time per user of stage 1 (catalog scoring + top-K) and of
  stage 2 (K candidates), in batches of `users_per_chunk`, after a warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rankjax.evaluators import retrieval

ScoreFn = Callable[[np.ndarray], jax.Array]  # users [n] -> [n, num_items]
PairScoreFn = Callable[[np.ndarray, jax.Array], jax.Array]  # (users [n], items [n, K]) -> [n, K]


def candidates(
    stage1: ScoreFn, users: np.ndarray, seen_mask: np.ndarray, k: int
) -> tuple[jax.Array, jax.Array]:
    """Stage 1's top `k` items of each user, earlier items excluded.

    Args:
      stage1: catalog scorer.
      users: `[n]`.
      seen_mask: `[n, num_items]` True where the user interacted before.
      k: candidates kept.

    Returns:
      `(scores, items)`, both `[n, k]`, best first.
    """
    scores = jnp.where(jnp.asarray(seen_mask), -jnp.inf, stage1(users))
    return jax.lax.top_k(scores, k)


def _as_ranking(items: jax.Array, scores: jax.Array, num_items: int) -> jax.Array:
    """`[n, num_items]` scores that put `items` in the order of `scores`, every other item
    below them."""
    n, k = items.shape
    # Rank r (0 = best) of each candidate under stage 2, mapped to a score above any other.
    order = jnp.argsort(-scores, axis=1)
    ranks = jnp.argsort(order, axis=1)
    full = jnp.full((n, num_items), -1.0 - k, jnp.float32)
    return full.at[jnp.arange(n)[:, None], items].set((k - ranks).astype(jnp.float32))


def evaluate(
    stage1: ScoreFn,
    stage2: PairScoreFn,
    *,
    k: int,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    num_items: int,
    metrics: Sequence[str] = ("recall@10", "ndcg@10", "mrr@10", "hit@10"),
    users_per_chunk: int = 256,
) -> dict:
    """The cascade's quality and cost (module docstring).

    Args:
      stage1: catalog scorer `users -> [n, num_items]`.
      stage2: candidate scorer `(users, items [n, K]) -> [n, K]`.
      k: candidates passed from stage 1 to stage 2.
      train: `(users, items)` interactions before the held-out ones (excluded).
      held_out: `(users, items)` the relevant items.
      num_items: catalog size.
      metrics: full-ranking metric names, cutoffs at most `k`; `recall@k` of stage 1 is
        added.
      users_per_chunk: users scored per call.

    Returns:
      `{"stage1", "final", "stage2_alone": {metric: value}, "ms_per_user": {...}, "k"}`.
    """
    if not 1 <= k <= num_items:
        raise ValueError(f"cascade k={k} must be in [1, {num_items}]")
    for name in metrics:
        cutoff = retrieval.parse(name)[1]
        if cutoff > k:  # the cascade returns k items; deeper cutoffs are meaningless
            raise ValueError(f"metric {name}: cutoff {cutoff} exceeds the cascade's k={k}")
    seen_users, seen_items = np.asarray(train[0]), np.asarray(train[1])
    common = dict(train=train, held_out=held_out, num_items=num_items)
    common["users_per_chunk"] = users_per_chunk

    def seen(users):  # rows in the order of `users` (the mask wants them sorted)
        order = np.argsort(users)
        mask = retrieval.user_item_mask(seen_users, seen_items, users[order], num_items)
        return mask[np.argsort(order)]

    def final(users):
        _, items = candidates(stage1, users, seen(users), k)
        return _as_ranking(items, stage2(users, items), num_items)

    def stage2_alone(users):
        items = jnp.broadcast_to(jnp.arange(num_items), (len(users), num_items))
        return stage2(users, items)

    stage1_metrics = tuple(dict.fromkeys((*metrics, f"recall@{k}")))
    out = {
        "k": k,
        "stage1": retrieval.full_ranking(stage1, metrics=stage1_metrics, **common),
        "final": retrieval.full_ranking(final, metrics=tuple(metrics), **common),
        "stage2_alone": retrieval.full_ranking(stage2_alone, metrics=tuple(metrics), **common),
    }
    out["ms_per_user"] = _timings(stage1, stage2, np.unique(held_out[0]), seen, k, users_per_chunk)
    return out


def _timings(stage1, stage2, users, seen, k, chunk, repeats: int = 3) -> dict[str, float]:
    """Median wall ms per user of each stage over `repeats` passes (after one warm-up)."""
    batches = [users[i : i + chunk] for i in range(0, len(users), chunk)]
    masks = [seen(b) for b in batches]
    picked = [candidates(stage1, b, m, k)[1] for b, m in zip(batches, masks, strict=True)]

    def one_pass(fn):
        t0 = time.perf_counter()
        for out in fn():
            jax.block_until_ready(out)
        return time.perf_counter() - t0

    def first():
        return (candidates(stage1, b, m, k) for b, m in zip(batches, masks, strict=True))

    def second():
        return (stage2(b, items) for b, items in zip(batches, picked, strict=True))

    result = {}
    for name, fn in (("stage1", first), ("stage2", second)):
        one_pass(fn)  # warm-up: compilation
        t = float(np.median([one_pass(fn) for _ in range(repeats)]))
        result[name] = 1000.0 * t / max(len(users), 1)
    return result
