"""The DCN-v2 ranker's part of the retrieval task: feature crossing over (user, item)
pairs, trained on each interaction against sampled negatives."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from rankjax import compiler
from rankjax.models import dcn
from rankjax.tasks.recommender import (
    TRAINING,
    Form,
    ModelParts,
    epoch_rows,
    score_fn,
    seam,
    side_features,
)


def build_parts(
    config, log, train, row_multiple: int, quantizer, hard_pool: jax.Array | None = None
) -> ModelParts:
    """DCN-v2 over (user, item) pairs: ids and the chosen side features of both.

    Each training interaction is a list of its item and `loss.num_negatives` uniform
    negatives (accidental hits masked), plus `loss.hard_negatives` drawn from the user's
    row of `hard_pool` (items a finished retrieval run ranks high for them, training items
    excluded; None when only scoring): what a cascade's second stage will have to order.
    Softmax cross-entropy over the list, or pointwise BCE (positive 1, negatives 0).
    Scoring reads every (user, item) pair.
    """
    user_feats, user_vocab, item_feats, item_vocab = side_features(config.data, log)
    vocab = {"user_id": log.num_users, "item_id": log.num_items}
    vocab.update({f"user_{k}": v for k, v in user_vocab.items()})
    vocab.update({f"item_{k}": v for k, v in item_vocab.items()})
    user_table = {f"user_{k}": jnp.asarray(v) for k, v in user_feats.items()}
    item_table = {f"item_{k}": jnp.asarray(v) for k, v in item_feats.items()}
    mcfg = {k: tuple(v) if k == "deep" else v for k, v in config.model.items() if k != "name"}
    num_negatives = int(config.loss.get("num_negatives", 16))
    num_hard = int(config.loss.get("hard_negatives", 0))
    pointwise = config.loss.name == "bce"
    rows = epoch_rows(int(config.seed), train.num_interactions, int(config.train.batch_size))

    @functools.cache
    def build(form: Form) -> dcn.DCN:
        return dcn.DCN(
            vocab_sizes=vocab, row_multiple=row_multiple, **seam(quantizer, form), **mcfg
        )

    def pairs(users: jax.Array, items: jax.Array) -> dict[str, jax.Array]:
        """Features of the pairs `users [n] x items [n, m]`, flattened to `n * m` rows."""
        m = items.shape[1]
        users = jnp.repeat(users, m)
        items = items.reshape(-1)
        out = {"user_id": users, "item_id": items}
        out.update({k: v[users] for k, v in user_table.items()})
        out.update({k: v[items] for k, v in item_table.items()})
        return out

    sample = (pairs(jnp.zeros([1], jnp.int32), jnp.zeros([1, 2], jnp.int32)),)

    def loss(params, batch, rng):
        users, pos = batch["users"], batch["items"]
        uniform_rng, hard_rng = jax.random.split(rng)
        neg = jax.random.randint(uniform_rng, (len(pos), num_negatives), 0, log.num_items)
        if num_hard:
            picks = jax.random.randint(hard_rng, (len(pos), num_hard), 0, hard_pool.shape[1])
            neg = jnp.concatenate([neg, hard_pool[users[:, None], picks]], axis=1)
        items = jnp.concatenate([pos[:, None], neg], axis=1)
        logits = build(TRAINING).apply({"params": params}, pairs(users, items)).reshape(items.shape)
        valid = jnp.concatenate(
            [jnp.ones_like(pos[:, None], bool), neg != pos[:, None]], axis=1
        )  # a negative that is the positive is no negative
        if pointwise:
            labels = jnp.zeros_like(logits).at[:, 0].set(1.0)
            per = optax.sigmoid_binary_cross_entropy(logits, labels)
            return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.sum(valid)
        logits = jnp.where(valid, logits, -1e9)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, 0 * pos))

    def batch(step):
        r = rows(step)
        return {"users": train.users[r], "items": train.items[r]}

    @functools.partial(compiler.jit, static_argnums=0)
    def pair_scores(form, variables, users, items):
        return build(form).apply(variables, pairs(users, items)).reshape(items.shape)

    def scorer(variables, form, split):
        del split  # pairs of ids and features, not the history
        every = jnp.arange(log.num_items)
        return score_fn(
            lambda users: pair_scores(
                form, variables, users, jnp.broadcast_to(every, (len(users), len(every)))
            ),
            lambda users, items: pair_scores(form, variables, users, items),
        )

    def calibration(step):  # the batch's observed pairs
        b = batch(step)
        return (pairs(jnp.asarray(b["users"]), jnp.asarray(b["items"])[:, None]),)

    return ModelParts(build, sample, loss, batch, scorer, calibration)
