"""Recall-then-rank: a cheap stage retrieves top-K from the whole catalog, a heavier stage
re-orders those K, and both are measured as one system.

For every evaluated user, stage 1 scores the catalog (the user's earlier items excluded)
and keeps its top K (`jax.lax.top_k`; a dot-product stage 1 served from an index would use
`topk.top_k` / `sharded_top_k`); stage 2 scores only those K; the final ranking is the
K candidates ordered by stage 2, every other item below them. Reported (full-ranking
definitions of `evaluators.retrieval`, the same users and held-out items):

* `stage1`: stage 1's own metrics, and its `recall@K` — the ceiling for anything stage 2
  can do;
* `final`: the cascade's metrics; stage 2 orders the candidates by its own score
  (`stage2_weight=1`) or by a blend with stage 1's (`fuse`), as production rankers take
  the retrieval score as a feature; `choose_weight` picks the blend on validation data;
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

from rankjax import metrics as metrics_lib
from rankjax.evaluators import retrieval
from rankjax.types import ScoreFn


def candidates(
    stage1: ScoreFn, users: np.ndarray, seen_mask: np.ndarray, k: int
) -> tuple[jax.Array, jax.Array]:
    """Stage 1's top `k` items of each user, earlier items excluded.

    Args:
      stage1: scorer of the catalog (`{"users": [n]} -> [n, num_items]`).
      users: `[n]`.
      seen_mask: `[n, num_items]` True where the user interacted before.
      k: candidates kept.

    Returns:
      `(scores, items)`, both `[n, k]`, best first.
    """
    scores = jnp.where(jnp.asarray(seen_mask), -jnp.inf, stage1({"users": users}))
    return jax.lax.top_k(scores, k)


def fuse(first: jax.Array, second: jax.Array, weight: float) -> jax.Array:
    """`(1 - weight) * z(first) + weight * z(second)` over each row's K candidates, where
    `z` standardises a row (mean 0, deviation 1) so the two stages' scales do not matter;
    weight 1 is stage 2's order, weight 0 stage 1's. `[n, K]` -> `[n, K]`."""

    def z(x):  # over the finite entries (a user with fewer than K unseen items has -inf)
        x = jnp.asarray(x, jnp.float32)
        finite = jnp.isfinite(x)
        count = jnp.maximum(finite.sum(1, keepdims=True), 1)
        mean = jnp.where(finite, x, 0.0).sum(1, keepdims=True) / count
        var = jnp.where(finite, (x - mean) ** 2, 0.0).sum(1, keepdims=True) / count
        return jnp.where(finite, (x - mean) / (jnp.sqrt(var) + 1e-6), -jnp.inf)

    if weight == 1.0:
        return jnp.asarray(second, jnp.float32)
    return (1.0 - weight) * z(first) + weight * z(second)


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
    stage2: ScoreFn,
    *,
    k: int,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    num_items: int,
    metrics: Sequence[str] = ("recall@10", "ndcg@10", "mrr@10", "hit@10"),
    users_per_chunk: int = 256,
    stage2_weight: float = 1.0,
) -> dict:
    """The cascade's quality and cost (module docstring).

    Args:
      stage1: scorer of the catalog, `{"users": [n]} -> [n, num_items]`.
      stage2: scorer of candidates, `{"users": [n], "items": [n, K]} -> [n, K]` (and of
        the catalog, for `stage2_alone`).
      k: candidates passed from stage 1 to stage 2.
      train: `(users, items)` interactions before the held-out ones (excluded).
      held_out: `(users, items)` the relevant items.
      num_items: catalog size.
      metrics: full-ranking metric names, cutoffs at most `k`; `recall@k` of stage 1 is
        added.
      users_per_chunk: users scored per call.
      stage2_weight: the final order's blend of the two stages' scores (`fuse`).

    Returns:
      `{"stage1", "final", "stage2_alone": {metric: value}, "ms_per_user": {...}, "k",
      "stage2_weight"}`.
    """
    _check(k, num_items, metrics)
    seen = _seen_rows(train, num_items)

    def evaluator(names):
        return retrieval.FullRanking(
            seen=train,
            held_out=held_out,
            num_items=num_items,
            metrics=names,
            users_per_chunk=users_per_chunk,
        )

    def final(batch):
        users = batch["users"]
        first, items = candidates(stage1, users, seen(users), k)
        second = stage2({"users": users, "items": items})
        return _as_ranking(items, fuse(first, second, stage2_weight), num_items)

    stage1_metrics = tuple(dict.fromkeys((*metrics, f"recall@{k}")))
    out = {
        "k": k,
        "stage2_weight": stage2_weight,
        "stage1": evaluator(stage1_metrics).run(stage1),
        "final": evaluator(tuple(metrics)).run(final),
        "stage2_alone": evaluator(tuple(metrics)).run(stage2),
    }
    out["ms_per_user"] = _timings(stage1, stage2, np.unique(held_out[0]), seen, k, users_per_chunk)
    return out


def choose_weight(
    stage1: ScoreFn,
    stage2: ScoreFn,
    *,
    k: int,
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    num_items: int,
    metric: str = "ndcg@10",
    grid: Sequence[float] = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11)),
    users_per_chunk: int = 256,
) -> tuple[float, dict[float, float]]:
    """The `fuse` weight in `grid` that gives the best `metric` on `held_out` (validation
    data: choosing on test would overfit the figure reported). Each stage scores each
    user once; the blends re-rank those scores.

    Returns:
      `(best weight, {weight: metric})`; ties go to the larger weight.
    """
    _check(k, num_items, (metric,))
    seen = _seen_rows(train, num_items)
    users = np.unique(held_out[0])
    row = np.zeros(int(users.max(initial=0)) + 1, np.int64)
    row[users] = np.arange(len(users))
    parts = []
    for start in range(0, len(users), users_per_chunk):
        chunk = users[start : start + users_per_chunk]
        first, items = candidates(stage1, chunk, seen(chunk), k)
        second = stage2({"users": chunk, "items": items})
        parts.append((np.asarray(items), np.asarray(first), np.asarray(second)))
    items, first, second = (np.concatenate(p) for p in zip(*parts, strict=True))
    evaluator = retrieval.FullRanking(
        seen=train, held_out=held_out, num_items=num_items, metrics=(metric,)
    )
    scores = {}
    for weight in grid:
        blended = np.asarray(fuse(first, second, float(weight)))

        def ranking(batch, blended=blended):
            r = row[np.asarray(batch["users"])]
            return _as_ranking(jnp.asarray(items[r]), jnp.asarray(blended[r]), num_items)

        scores[float(weight)] = evaluator.run(ranking)[metric]
    best = max(sorted(scores, reverse=True), key=lambda w: scores[w])
    return best, scores


def _check(k: int, num_items: int, metrics: Sequence[str]) -> None:
    if not 1 <= k <= num_items:
        raise ValueError(f"cascade k={k} must be in [1, {num_items}]")
    for name in metrics:
        cutoff = metrics_lib.parse_metric(name, metrics_lib.TOP_K_NAMES)[1] or 0
        if cutoff > k:  # the cascade returns k items; deeper cutoffs are meaningless
            raise ValueError(f"metric {name}: cutoff {cutoff} exceeds the cascade's k={k}")


def _seen_rows(train: tuple[np.ndarray, np.ndarray], num_items: int) -> Callable:
    """`users [n] -> [n, num_items]` mask of their `train` items, rows in `users`' order."""
    seen_users, seen_items = np.asarray(train[0]), np.asarray(train[1])

    def seen(users):  # the mask wants users sorted
        order = np.argsort(users)
        mask = retrieval.user_item_mask(seen_users, seen_items, users[order], num_items)
        return mask[np.argsort(order)]

    return seen


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
        pairs = zip(batches, picked, strict=True)
        return (stage2({"users": b, "items": items}) for b, items in pairs)

    result = {}
    for name, fn in (("stage1", first), ("stage2", second)):
        one_pass(fn)  # warm-up: compilation
        t = float(np.median([one_pass(fn) for _ in range(repeats)]))
        result[name] = 1000.0 * t / max(len(users), 1)
    return result
