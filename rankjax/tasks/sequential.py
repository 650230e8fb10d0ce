"""The sequential recommender's part of the retrieval task: a SASRec-style causal
transformer over each user's item history (leave-one-out split), trained to predict every
next item by full softmax, sampled softmax or SASRec's binary cross-entropy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rankjax import compiler
from rankjax.models import sequential
from rankjax.tasks.recommender import TRAINING, Form, ModelParts, epoch_rows, score_fn, seam


def right_aligned(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """`[len(sequences), length]` int32: each sequence's last `length` items as tokens
    (item + 1), left-padded with 0."""
    out = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail + 1
    return out


def build_parts(config, log, parts, row_multiple: int, quantizer) -> ModelParts:
    """SASRec over `parts`' per-user sequences: windows of the last `model.max_len` + 1
    training items; validation reads the training history, test also the validation item."""
    mcfg = {k: v for k, v in config.model.items() if k != "name"}
    max_len = int(mcfg.get("max_len", 50))
    loss_name = config.loss.name
    num_negatives = int(config.loss.get("num_negatives", 256))

    @functools.cache
    def build(form: Form) -> sequential.SASRec:
        return sequential.SASRec(
            num_items=log.num_items, row_multiple=row_multiple, **seam(quantizer, form), **mcfg
        )

    train_seqs = parts["train"].user_sequences()
    valid_seqs = parts["valid"].user_sequences()
    # Inputs are the first max_len of the last max_len + 1 items; targets the next ones.
    windows = right_aligned(train_seqs, max_len + 1)
    trainable = np.flatnonzero((windows > 0).sum(1) >= 2)
    histories = {
        "valid": right_aligned(train_seqs, max_len),
        "test": right_aligned(
            [np.concatenate([t, v]) for t, v in zip(train_seqs, valid_seqs, strict=True)], max_len
        ),
    }
    rows = epoch_rows(int(config.seed), len(trainable), int(config.train.batch_size))

    sample = (jnp.ones((1, max_len), jnp.int32),)

    def loss(params, batch, rng):
        model = build(TRAINING)
        drop_rng, sample_rng = jax.random.split(rng)
        h = model.apply({"params": params}, batch["inputs"], train=True, rngs={"dropout": drop_rng})
        targets = batch["targets"] - 1  # item index; -1 where there is no next item
        where = targets >= 0
        pos = jnp.maximum(targets, 0)
        items = lambda ids: model.apply({"params": params}, ids, method="items")  # noqa: E731
        if loss_name == "softmax":  # over the whole catalog
            logits = h @ items(jnp.arange(log.num_items)).T
            per = optax.softmax_cross_entropy_with_integer_labels(logits, pos)
        elif loss_name == "sampled_softmax":  # shared uniform negatives, hits removed
            neg = jax.random.randint(sample_rng, (num_negatives,), 0, log.num_items)
            pos_logit = jnp.sum(h * items(pos), -1, keepdims=True)
            neg_logits = h @ items(neg).T
            neg_logits = jnp.where(neg[None, None] == pos[..., None], -1e9, neg_logits)
            logits = jnp.concatenate([pos_logit, neg_logits], -1)
            per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros_like(pos))
        else:  # bce: SASRec's one uniform negative per position
            neg = jax.random.randint(sample_rng, pos.shape, 0, log.num_items)
            pos_logit = jnp.sum(h * items(pos), -1)
            neg_logit = jnp.sum(h * items(neg), -1)
            per = -jax.nn.log_sigmoid(pos_logit) - jax.nn.log_sigmoid(-neg_logit)
        return jnp.sum(jnp.where(where, per, 0.0)) / jnp.maximum(where.sum(), 1)

    def batch(step):
        w = windows[trainable[rows(step)]]
        return {"inputs": w[:, :-1], "targets": w[:, 1:]}

    @functools.partial(compiler.jit, static_argnums=0)
    def item_vectors(form, variables):
        return build(form).apply(variables, jnp.arange(log.num_items), method="items")

    @functools.partial(compiler.jit, static_argnums=0)
    def user_scores(form, variables, history, items_v):
        return build(form).apply(variables, history, method="users") @ items_v.T

    def scorer(variables, form, split):
        items_v, history = item_vectors(form, variables), histories[split]
        return score_fn(
            lambda users: user_scores(
                form, variables, jnp.asarray(history[np.asarray(users)]), items_v
            )
        )

    def calibration(step):
        return (jnp.asarray(batch(step)["inputs"]),)

    return ModelParts(build, sample, loss, batch, scorer, calibration)
