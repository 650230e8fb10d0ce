"""`train_and_evaluate(config, workdir)` for retrieval (`config.task = "retrieval"`).

interaction log -> per-user split -> two-tower model -> in-batch sampled softmax with
logQ correction -> periodic full-ranking validation, checkpoints and the best parameters
-> full-ranking test metrics beside a popularity ranker -> `results.json`.

The whole catalog is scored for every evaluated user (full ranking, RecBole's protocol),
with the user's training (and, for test, validation) items excluded. Runs on one device;
sharded embedding tables are a later step.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from rankjax import checkpoint, losses, optim
from rankjax.compression import embeddings, quantization
from rankjax.data import interactions
from rankjax.evaluators import retrieval
from rankjax.metric_writer import MetricWriter
from rankjax.models import two_tower

SOURCES = ("atomic", "user_item", "synthetic")
SPLITS = ("random", "leave_one_out")
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
        },
    ),
    "model": ({"name"}, {"dim", "hidden", "normalize", "temperature"}),
    "loss": ({"name"}, {"log_q"}),
    "optim": (
        {"name", "learning_rate"},
        {"schedule", "warmup_steps", "weight_decay", "grad_clip_norm", "momentum", "b1", "b2"},
    ),
    "train": ({"num_steps", "batch_size", "log_every", "eval_every"}, set()),
    "eval": ({"metrics"}, {"users_per_chunk"}),
    "ckpt": ({"every", "keep"}, {"best_metric", "best_mode"}),
    "quant": (set(), {"embedding_bits"}),  # optional: served quantized embedding tables
}


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
        if given is None and section == "quant":
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
    if config.loss.name != "in_batch_softmax":
        raise ValueError(
            f"loss.name={config.loss.name!r}; valid for retrieval: ['in_batch_softmax']"
        )
    if config.data.split not in SPLITS:
        raise ValueError(f"data.split={config.data.split!r}; valid: {SPLITS}")
    if config.model.name != "two_tower":
        raise ValueError(f"model.name={config.model.name!r}; valid for retrieval: ['two_tower']")
    for name in config.eval.metrics:
        retrieval.parse(name)
    best = config.ckpt.get("best_metric")
    if best and best not in config.eval.metrics:
        raise ValueError(f"ckpt.best_metric={best!r} is not in eval.metrics")


def load_log(cfg: ml_collections.ConfigDict) -> interactions.Interactions:
    """The interaction log named by `config.data`."""
    if cfg.source == "atomic":
        return interactions.read_atomic(
            cfg.inter_file, cfg.get("item_file") or None, cfg.get("user_file") or None
        )
    if cfg.source == "user_item":
        return interactions.read_user_item(cfg.file)
    from rankjax.data import synthetic

    return interactions.from_synthetic(synthetic.make_world(**dict(cfg.get("world", {}))))


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the two-tower model of `config` and evaluates it by full ranking.

    Returns:
      The contents of `workdir/results.json`.
    """
    _validate(config)
    os.makedirs(workdir, exist_ok=True)
    checkpoint.write_json(
        os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
    )
    dcfg, tcfg = config.data, config.train
    log = load_log(dcfg)
    seed = int(dcfg.get("split_seed", 0))
    if dcfg.split == "random":
        parts = interactions.random_split(log, tuple(dcfg.get("fractions", (0.8, 0.1, 0.1))), seed)
    else:
        parts = interactions.leave_one_out(log)
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    logging.info(
        "data %s: %d users, %d items; train %d, valid %d, test %d interactions",
        log.source,
        log.num_users,
        log.num_items,
        train.num_interactions,
        valid.num_interactions,
        test.num_interactions,
    )
    item_feats, item_vocab = _features(
        log, dcfg.get("item_features", ()), "item", log.item_features
    )
    user_feats, user_vocab = _features(
        log, dcfg.get("user_features", ()), "user", log.user_features
    )
    mcfg = {k: v for k, v in config.model.items() if k != "name"}

    def build(embedding_bits: int = 0) -> two_tower.Model:
        return two_tower.Model(
            num_users=log.num_users,
            num_items=log.num_items,
            user_vocab_sizes=user_vocab,
            item_vocab_sizes=item_vocab,
            embedding_bits=embedding_bits,
            **{k: tuple(v) if k == "hidden" else v for k, v in mcfg.items()},
        )

    model = build()
    item_table = jax.tree_util.tree_map(jnp.asarray, item_feats)
    user_table = jax.tree_util.tree_map(jnp.asarray, user_feats)
    counts = np.bincount(train.items, minlength=log.num_items).astype(np.float64)
    log_q = jnp.asarray(np.log(np.maximum(counts, 1) / counts.sum()), jnp.float32)
    use_log_q = bool(config.loss.get("log_q", True))
    num_steps, batch_size = int(tcfg.num_steps), int(tcfg.batch_size)
    tx, schedule = optim.make(config.optim, num_steps)

    def gather(table, ids):
        return {k: v[ids] for k, v in table.items()}

    def init(rng):
        ids = jnp.zeros([2], jnp.int32)
        params = model.init(rng, ids, gather(user_table, ids), ids, gather(item_table, ids))
        params = params["params"]
        return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params))

    @jax.jit
    def train_step(state, users, items):
        def loss_of(params):
            logits = model.apply(
                {"params": params},
                users,
                gather(user_table, users),
                items,
                gather(item_table, items),
            )
            return losses.in_batch_softmax_loss(logits, items, log_q[items] if use_log_q else None)

        loss, grads = jax.value_and_grad(loss_of)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
        }

    @functools.partial(jax.jit, static_argnums=0)
    def item_vectors(bits, params):
        ids = jnp.arange(log.num_items)
        return build(bits).apply({"params": params}, ids, gather(item_table, ids), method="items")

    @functools.partial(jax.jit, static_argnums=0)
    def user_vectors(bits, params, ids):
        return build(bits).apply({"params": params}, ids, gather(user_table, ids), method="users")

    def rank(score_fn, held: interactions.Interactions, seen: list) -> dict[str, float]:
        """Full-ranking metrics of `score_fn` on `held`, the `seen` splits' items excluded."""
        return retrieval.full_ranking(
            score_fn,
            train=(
                np.concatenate([s.users for s in seen]),
                np.concatenate([s.items for s in seen]),
            ),
            held_out=(held.users, held.items),
            num_items=log.num_items,
            metrics=tuple(config.eval.metrics),
            users_per_chunk=int(config.eval.get("users_per_chunk", 256)),
        )

    def evaluate(params, held: interactions.Interactions, seen: list, bits=0) -> dict[str, float]:
        items_v = item_vectors(bits, params)
        return rank(
            lambda users: user_vectors(bits, params, jnp.asarray(users)) @ items_v.T, held, seen
        )

    state = jax.jit(init)(jax.random.PRNGKey(int(config.seed)))
    ckpt = checkpoint.Checkpointer(
        workdir,
        every=int(config.ckpt.every),
        keep=int(config.ckpt.keep),
        best_metric=config.ckpt.get("best_metric", ""),
        best_mode=config.ckpt.get("best_mode", "max"),
    )
    state, restored = ckpt.restore_or_init(state)
    writer = MetricWriter(workdir, resume_step=restored)
    steps_per_epoch = max(train.num_interactions // batch_size, 1)
    if train.num_interactions < batch_size:
        raise ValueError(
            f"train has {train.num_interactions} interactions, fewer than train.batch_size="
            f"{batch_size}"
        )
    perm, perm_epoch = None, -1
    t0 = time.perf_counter()
    try:
        for step in range(int(state.step), num_steps):
            epoch, index = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:  # batch `step` is a pure function of (seed, step)
                perm = np.random.default_rng([int(config.seed), epoch]).permutation(
                    train.num_interactions
                )
                perm_epoch = epoch
            rows = perm[index * batch_size : (index + 1) * batch_size]
            state, m = train_step(
                state, jnp.asarray(train.users[rows]), jnp.asarray(train.items[rows])
            )
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
                metrics = evaluate(state.params, valid, [train])
                logging.info("step %d | valid %s", done, metrics)
                writer.write(done, "valid", metrics)
                ckpt.save_best(done, state.params, metrics)
            if done % ckpt.every == 0 or done == num_steps:
                ckpt.save(done, state, force=True)
    finally:
        ckpt.wait()
        writer.close()
    best = ckpt.restore_best(state.params)
    params = best if best is not None else state.params
    ckpt.close()
    results = {
        "step": int(state.step),
        "params": f"best (step {ckpt.best_step()})" if best is not None else "last",
        "valid": evaluate(params, valid, [train]),
        "test": evaluate(params, test, [train, valid]),
    }
    results["bytes"] = {"float_bytes": quantization.array_bytes(params)}
    bits = int((config.get("quant") or {}).get("embedding_bits", 0))
    if bits:
        # Served towers: every embedding table stored as int8/int4 rows plus scales.
        served = embeddings.quantize_tree(jax.device_get(params), bits)
        results["test_served"] = evaluate(served, test, [train, valid], bits=bits)
        results["bytes"]["serving_bytes"] = quantization.array_bytes(served)
    popularity = jnp.asarray(counts, jnp.float32)
    by_popularity = lambda users: jnp.broadcast_to(popularity, (len(users), log.num_items))  # noqa: E731
    results["baselines"] = {"popularity": {"test": rank(by_popularity, test, [train, valid])}}
    checkpoint.write_json(os.path.join(workdir, "results.json"), results)
    print(f"\nFull-ranking test metrics ({results['params']} parameters), workdir {workdir}:")
    for name, values in [
        ("two_tower", results["test"]),
        *([(f"int{bits} tables", results["test_served"])] if bits else []),
        ("popularity", results["baselines"]["popularity"]["test"]),
    ]:
        print(f"  {name:<12} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    return results
