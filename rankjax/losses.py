"""Ranking losses chosen by name, in rax's signature `(scores, labels, *, where) -> scalar`.

rax provides the losses; this module adds only what a config needs on top: a name registry,
lambda weights chosen by name, label scaling for the sigmoid loss, and approx-NDCG built from
rax's public approximations (`rax.approx_t12n` itself fails on current JAX, which removed
`jax.util.wraps`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import rax

LossFn = Callable[..., jax.Array]

LAMBDAWEIGHTS = {
    "none": None,
    "dcg": rax.dcg_lambdaweight,
    "dcg2": rax.dcg2_lambdaweight,
    "labeldiff": rax.labeldiff_lambdaweight,
}
LOSSES = (
    "softmax",
    "pairwise_logistic",
    "pairwise_hinge",
    "listmle",
    "approx_ndcg",
    "mse",
    "sigmoid",
)


def approx_ndcg_loss(
    scores: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    temperature: float = 1.0,
    topn: int | None = None,
    reduce_fn=jnp.mean,
) -> jax.Array:
    """Negative NDCG with ranks and cutoffs replaced by sigmoids (Qin et al., 2010).

    Args:
      scores: `[..., list_size]` scores.
      labels: `[..., list_size]` graded relevance.
      where: `[..., list_size]` bool mask of valid items.
      temperature: sigmoid temperature; smaller is closer to the true NDCG.
      topn: optional cutoff.
      reduce_fn: how per-list losses are reduced.

    Returns:
      The reduced loss (lower is better, -1 at a perfect ranking as temperature -> 0).
    """
    step_fn = lambda x: jax.nn.sigmoid(x / temperature)  # noqa: E731
    return -rax.ndcg_metric(
        scores,
        labels,
        where=where,
        topn=topn,
        rank_fn=functools.partial(rax.utils.approx_ranks, step_fn=step_fn),
        cutoff_fn=functools.partial(rax.utils.approx_cutoff, step_fn=step_fn),
        reduce_fn=reduce_fn,
    )


def get(
    name: str,
    *,
    lambdaweight: str = "none",
    temperature: float = 1.0,
    max_label: float = 1.0,
) -> LossFn:
    """Returns the loss `name` as `fn(scores, labels, *, where) -> scalar`.

    Args:
      name: one of `LOSSES`: `softmax`, `pairwise_logistic` (LambdaLoss-style with a
        `lambdaweight`), `pairwise_hinge`, `listmle`, `approx_ndcg`, `mse` (pointwise
        regression) or `sigmoid` (pointwise, labels divided by `max_label`).
      lambdaweight: for pairwise losses: one of `LAMBDAWEIGHTS`.
      temperature: for `approx_ndcg`.
      max_label: for `sigmoid`: labels are scaled to [0, 1] by this value.

    Returns:
      The loss function, averaged over lists (rax's default reduction).
    """
    if lambdaweight not in LAMBDAWEIGHTS:
        raise ValueError(f"loss.lambdaweight={lambdaweight!r}; valid: {list(LAMBDAWEIGHTS)}")
    lw = LAMBDAWEIGHTS[lambdaweight]
    if lw is not None and name not in ("pairwise_logistic", "pairwise_hinge"):
        raise ValueError(f"loss.lambdaweight applies to pairwise losses only, not {name!r}")
    if name == "softmax":
        return rax.softmax_loss
    if name == "pairwise_logistic":
        return functools.partial(rax.pairwise_logistic_loss, lambdaweight_fn=lw)
    if name == "pairwise_hinge":
        return functools.partial(rax.pairwise_hinge_loss, lambdaweight_fn=lw)
    if name == "listmle":
        return rax.listmle_loss
    if name == "approx_ndcg":
        return functools.partial(approx_ndcg_loss, temperature=temperature)
    if name == "mse":
        return rax.pointwise_mse_loss
    if name == "sigmoid":
        if max_label <= 0:
            raise ValueError(f"loss.max_label must be > 0 for the sigmoid loss, got {max_label}")

        def sigmoid_loss(scores, labels, *, where=None):
            return rax.pointwise_sigmoid_loss(scores, labels / max_label, where=where)

        return sigmoid_loss
    raise ValueError(f"unknown loss {name!r}; valid: {list(LOSSES)}")


def in_batch_softmax_loss(
    logits: jax.Array,
    item_ids: jax.Array,
    log_q: jax.Array | None = None,
    hard_logits: jax.Array | None = None,
    hard_ids: jax.Array | None = None,
    hard_log_q: float | jax.Array = 0.0,
) -> jax.Array:
    """Sampled softmax over a batch's items (Yi et al., 2019), for two-tower retrieval.

    Row `r` holds user `r`'s scores for every item of the batch; its own item (the
    diagonal) is the positive and the others are negatives. `log_q` (the log of each
    item's probability of appearing in a batch, e.g. its training frequency) is
    subtracted from the logits so popular items are not over-penalised for being sampled
    as negatives often (logQ correction); other rows' copies of the positive item
    (accidental hits) are removed from the row's negatives. Each row may add its own hard
    negatives (e.g. a retriever's top items for the user), corrected by their own
    `hard_log_q`; one that is the row's positive is removed. Mixing the two, both
    corrections must be on one scale — the log of each item's expected count among the
    row's negatives (Yang et al., 2020, mixed negative sampling): `log(batch * p)` for
    in-batch items, `log(K / pool size)` for K hard negatives drawn from a pool.

    Args:
      logits: `[batch, batch]` user-item scores.
      item_ids: `[batch]` the positive item of each row.
      log_q: `[batch]` log sampling probability of each column's item, or None.
      hard_logits: `[batch, K]` scores of each row's hard negatives, or None.
      hard_ids: `[batch, K]` their items (with `hard_logits`).
      hard_log_q: the log expected count of a hard negative (scalar or `[batch, K]`).

    Returns:
      The mean cross-entropy over rows.
    """
    n = logits.shape[0]
    logits = logits.astype(jnp.float32)
    if log_q is not None:
        logits = logits - log_q[None, :]
    same = item_ids[:, None] == item_ids[None, :]
    accidental = same & ~jnp.eye(n, dtype=bool)
    logits = jnp.where(accidental, -jnp.inf, logits)
    if hard_logits is not None:
        hard = hard_logits.astype(jnp.float32) - hard_log_q
        hard = jnp.where(hard_ids == item_ids[:, None], -jnp.inf, hard)
        logits = jnp.concatenate([logits, hard], axis=1)
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)[:, :n]))
