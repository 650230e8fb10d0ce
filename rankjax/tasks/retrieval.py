"""The retrieval task (`config.task = "retrieval"`): recommendation over interaction logs.

interaction log -> per-user split -> model -> the one training loop -> periodic
validation, checkpoints and the best parameters -> test metrics beside a popularity
ranker. Models (`model.name`), each in its own module:

* `two_tower` (`tasks/two_tower.py`): user and item towers over ids and side features
  (and an item text through a BERT checkpoint), in-batch sampled softmax with logQ
  correction, optionally with hard negatives from a finished run (`loss.hard_negatives`);
* `dcn` (`tasks/dcn.py`): a DCN-v2 feature-crossing ranker over (user, item) pairs
  trained against `loss.num_negatives` uniform negatives by softmax over the list
  (`softmax`) or pointwise (`bce`); scores every pair;
* `sasrec` (`tasks/sequential.py`): a causal transformer over each user's item history
  (leave-one-out split), trained by full softmax, sampled softmax or SASRec's BCE.

Evaluation (`evals`, `evaluators.section`): type `full_ranking` scores the whole catalog
for every evaluated user (RecBole's protocol), the user's earlier items excluded;
`sampled_ranking` ranks each held-out item against sampled negatives (SASRec/BERT4Rec's
protocol); `ctr` adds CTR-style AUC, GAUC and log-loss on impressions (test only).

Compression (`quant`, optional): `embedding_bits` serves every table as int8/int4 rows;
`enabled=True` trains the dense layers with AQT (QAT) and serves them as integer weights.
The served model is saved in `WORKDIR/served/` and evaluated as loaded (`test_served`).

Devices (`mesh`, optional; default one device): `mesh.num_devices` devices as a
`(data, model)` mesh with `mesh.model` devices on the model axis. Every embedding table is
split by rows over `model` (padded to a multiple of it), so a table larger than one
device's memory trains; the batch is split over `data`. `results.json` names the sharded
tables. Several processes (`rankjax.distributed`) each build the same global batch (a pure
function of seed and step) and place their devices' rows; every process evaluates the
same gathered parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from rankjax import cascade, checkpoint, config_schema, models, serving, sharding
from rankjax.compression import forms, quantization, serve
from rankjax.data import feed, interactions
from rankjax.data.sources import LOG_SOURCES, read_log
from rankjax.evaluators import ctr, retrieval, section
from rankjax.tasks import dcn, sequential, two_tower
from rankjax.tasks.recommender import TRAINING, Form, ModelParts, score_fn
from rankjax.types import Evaluator, Run, ScoreFn

SPLITS = ("random", "leave_one_out")
EVAL_TYPES = ("full_ranking", "sampled_ranking", "ctr")
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
        {"dim", "max_len", "num_layers", "num_heads", "dropout", "positions"},
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
            "layout",
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
    "train": ({"num_steps", "batch_size", "log_every", "eval_every"}, set(feed.TRAIN_KEYS)),
    "ckpt": ({"every", "keep"}, {"best_metric", "best_mode", "use_best"}),
    # Optional: served quantized embedding tables (`embedding_bits`) and, with
    # `enabled=True`, int8/int4 towers by AQT (`compression.quantization.Quantizer` keys).
    "quant": (set(), {"enabled", *(f.name for f in dataclasses.fields(quantization.Quantizer))}),
    "mesh": (set(), {"num_devices", "model", "rules", "fsdp"}),  # optional: default one device
}
OPTIONAL_SECTIONS = ("quant", "mesh")
# Embedding tables (float, while training) are split by rows over the `model` axis.
TABLE_RULES = ((r"_embedding/embedding$", (sharding.MODEL_AXIS, None)),)


def validate(config: ml_collections.ConfigDict) -> None:
    section.validate(config, EVAL_TYPES, "retrieval")
    config_schema.check_values(config)
    # `provenance`: what config.json records of the versions that wrote it, not a setting.
    allowed = set(_KEYS) | {"seed", "task", "evals", "provenance"}
    for key in config:
        if key not in allowed:
            raise ValueError(
                f"unknown config key {key}; valid for task=retrieval: {sorted(allowed)}"
            )
    for part, (required, optional) in _KEYS.items():
        given = config.get(part)
        if given is None and part in OPTIONAL_SECTIONS:
            continue
        if given is None:
            raise ValueError(f"config is missing the {part} section")
        for key in given:
            if key not in required | optional:
                raise ValueError(
                    f"unknown config key {part}.{key}; valid: {sorted(required | optional)}"
                )
        missing = sorted(required - set(given))
        if missing:
            raise ValueError(f"config {part} is missing {missing}")
    if config.data.source not in LOG_SOURCES:
        raise ValueError(
            f"data.source={config.data.source!r}; valid for retrieval: {list(LOG_SOURCES)}"
        )
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
    main = section.selecting(config.evals)
    best = config.ckpt.get("best_metric")
    if best and best not in config.evals[main].get("metrics", ()):
        raise ValueError(f"ckpt.best_metric={best!r} is not in evals.{main}.metrics")
    quantizer_of(config)  # its section's errors too, before anything is written


def quantizer_of(config: ml_collections.ConfigDict) -> quantization.Quantizer | None:
    """The towers' quantizer (`quant.enabled`), or None."""
    qcfg = dict(config.get("quant") or {})
    if not qcfg.get("enabled", False):
        extra = sorted(set(qcfg) - {"enabled", "embedding_bits"})
        if extra:
            raise ValueError(f"config quant.{extra[0]} is set but quant.enabled is not true")
        return None
    quantizer = quantization.from_config(qcfg)
    if quantizer.backend != "aqt":
        raise ValueError(
            f"quant.backend={quantizer.backend!r}: retrieval and recommendation models are "
            "quantized through AQT (quant.backend='aqt'); Qwix serves the ranking task"
        )
    return quantizer


def served(
    task: ModelParts,
    quantizer: quantization.Quantizer | None,
    params: Any,
    embedding_bits: int,
    users: np.ndarray | None = None,
) -> tuple[dict[str, Any], Form, dict[str, Any]]:
    """`(variables, form, choice)` of the model as served (host arrays): quantized layers
    converted to the served form (`compression.forms`; their float kernels dropped), and
    embedding tables stored as int8/int4 rows when `embedding_bits` is set.

    Under `quant.serving="auto"` with several forms on this device (fp8 and bf16 on an fp8
    GPU) each is converted and the faster at scoring the catalog for `users` is served
    (without `users`, the first). `choice`: `{"serving_form", "serving_forms": {form:
    {"bytes", "seconds_per_pass"}}}`, empty without a quantizer.
    """
    if quantizer is None:
        form = Form("serve", embedding_bits)
        build = lambda phase: task.build(Form(phase))  # noqa: E731
        return serve.convert(build, params, task.sample, embedding_bits=embedding_bits), form, {}
    built = {
        f: _convert_form(task, quantizer, f, params, embedding_bits)
        for f in forms.candidates(quantizer)
    }
    chosen, seconds = next(iter(built)), {}
    if len(built) > 1 and users is not None:
        scorers = {
            f: task.scorer(jax.device_put(v), Form("serve", embedding_bits, f), "test")
            for f, v in built.items()
        }
        chosen, seconds = forms.fastest(scorers, [{"users": jnp.asarray(users)}])
        chosen = forms.agreed(chosen, built)
        logging.info("served forms, seconds per pass: %s; serving %s", seconds, chosen)
    choice = {
        "serving_form": chosen,
        "serving_forms": {
            f: {"bytes": quantization.array_bytes(v), "seconds_per_pass": seconds.get(f)}
            for f, v in built.items()
        },
    }
    return built[chosen], Form("serve", embedding_bits, chosen), choice


def _convert_form(task, quantizer, form: str, params: Any, embedding_bits: int) -> dict:
    """The model converted to one served `form` of `quantizer` (host arrays)."""
    quantizer = forms.quantizer_for(quantizer, form)
    converts = forms.quantizes_layers(form)
    if not converts:  # bf16: float weights stored in 16 bits
        params = serving.cast_params({"params": params})["params"]
    steps = range(quantizer.calibration_batches if converts and quantizer.static else 0)
    return serve.convert(
        lambda phase: task.build(Form(phase, 0, form)),
        params,
        task.sample,
        quantizer=quantizer if converts else None,
        calibration_batches=(task.calibration(i) for i in steps),
        embedding_bits=embedding_bits,
    )


def _retrieved(config, train, num_items: int) -> jax.Array:
    """`[num_users, retriever_top - retriever_skip]` the items at ranks
    `[loss.retriever_skip, loss.retriever_top)` of the finished retrieval run
    `loss.retriever` for every user, the user's training items excluded: hard negatives.
    Skipping the first ranks leaves out most false negatives (items the user would like
    but has not rated yet), which crowd the very top."""
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


BUILDERS = {"two_tower": two_tower.build_parts, "dcn": dcn.build_parts}


def _setup(config, row_multiple: int = 1, training: bool = True):
    """`(log, splits, model parts)` of a checked config; tables padded to `row_multiple`
    rows (the model axis) so their rows split evenly; `training=False` skips what only
    the loss needs (the hard negatives' retriever candidates)."""
    log = read_log(config.data)
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
        return log, parts, sequential.build_parts(config, log, parts, row_multiple, quantizer)
    # The retriever is read for training only, not when a finished run is loaded to score.
    hard = int(config.loss.get("hard_negatives", 0)) and training
    hard_pool = _retrieved(config, parts["train"], log.num_items) if hard else None
    build = BUILDERS[config.model.name]
    return log, parts, build(config, log, parts["train"], row_multiple, quantizer, hard_pool)


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
    task: ModelParts
    _served: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def _model(self, served_form: bool, embedding_bits: int) -> tuple[Any, Form]:
        if not served_form:
            return {"params": self.params}, TRAINING
        if embedding_bits not in self._served:  # converted once per table width
            quantizer = quantizer_of(self.config)
            users = np.arange(min(512, self.log.num_users))
            variables, form, _ = served(self.task, quantizer, self.params, embedding_bits, users)
            self._served[embedding_bits] = variables, form
        return self._served[embedding_bits]

    def scorer(self, split: str = "test", embedding_bits: int = 0, serve: bool = False) -> ScoreFn:
        """The `ScoreFn` (catalog or chosen items) of the trained model (`serve=False`) or
        of the served one (converted integer towers when the run quantized them; float or
        int8/int4 tables by `embedding_bits`)."""
        return self.task.scorer(*self._model(serve or bool(embedding_bits), embedding_bits), split)


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
    validate(config)
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


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
    """Recommendation over interaction logs (see the module docstring)."""

    name: str = "retrieval"

    def validate(self, config: ml_collections.ConfigDict) -> None:
        validate(config)

    def setup(self, config: ml_collections.ConfigDict, mesh: Mesh, workdir: str) -> Run:
        model_axis = dict(mesh.shape).get(sharding.MODEL_AXIS, 1)
        log, parts, task = _setup(config, model_axis)
        evaluators = _evaluators(config, log, parts)
        main = section.selecting(config.evals)

        def evaluate(params, split: str) -> dict[str, float]:
            score = task.scorer({"params": _local(params)}, TRAINING, split)
            return evaluators[main, split].run(score)

        def init(rng, loaded):
            params = task.init(rng)
            return params if loaded is None else models.overlay(params, loaded)

        train = parts["train"]
        return Run(
            init=init,
            loaded=task.loaded,
            loss=task.loss,
            batches=task.batch,
            global_batches=True,
            evaluate=evaluate,
            finish=_Final(config, log, parts, task, evaluators, workdir),
            # Dropout and sampled negatives draw from their own stream, not init's key.
            rng=jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 1),
            rules=TABLE_RULES if model_axis > 1 else (),
            describe=(
                f"data: {log.source} | {log.num_users} users, {log.num_items} items | train "
                f"{train.num_interactions} interactions"
            ),
        )


TASK = RetrievalTask()


@dataclasses.dataclass(frozen=True)
class _Final:
    """The final evaluation (`Run.finish`): every `evals` entry on its splits, the served
    model (integer towers, int8/int4 tables) saved, loaded and evaluated on test, the
    popularity baseline and the printed table."""

    config: ml_collections.ConfigDict
    log: interactions.Interactions
    parts: dict[str, interactions.Interactions]
    task: ModelParts
    evaluators: dict[tuple[str, str], Evaluator]
    workdir: str

    def __call__(self, params: Any, params_from: str) -> dict[str, Any]:
        config, log, parts, task = self.config, self.log, self.parts, self.task
        evals, main = config.evals, section.selecting(config.evals)
        params = _local(params)
        kind = evals[main].type
        results: dict[str, Any] = {"protocol": "full" if kind == "full_ranking" else "sampled"}
        # One scorer per split: building one computes the catalog's item vectors.
        splits = dict.fromkeys(split for _, split in self.evaluators)
        scores = {s: task.scorer({"params": params}, TRAINING, s) for s in splits}
        for (name, split), ev in self.evaluators.items():
            results[section.result_key(evals, name, split)] = ev.run(scores[split])
        results["bytes"] = {"float_bytes": quantization.array_bytes(params)}
        bits = int((config.get("quant") or {}).get("embedding_bits", 0))
        quantizer = quantizer_of(config)
        if bits or quantizer:
            # Served model: tables as int8/int4 rows plus scales, towers as integer weights.
            users = np.arange(min(512, log.num_users))
            variables, form, choice = served(task, quantizer, jax.device_get(params), bits, users)
            # Evaluate what a server would load: the saved tree.
            loaded = jax.device_put(serve.round_trip(self.workdir, variables))  # once
            served_scores = task.scorer(loaded, form, "test")
            for (name, split), ev in self.evaluators.items():
                if split == "test":
                    key = section.result_key(evals, name, split, served=True)
                    results[key] = ev.run(served_scores)
            results["bytes"]["serving_bytes"] = quantization.array_bytes(loaded)
            if quantizer:
                results["serving_form"] = choice["serving_form"]
                results["serving_forms"] = choice["serving_forms"]
        counts = jnp.asarray(
            np.bincount(parts["train"].items, minlength=log.num_items), jnp.float32
        )
        popularity = score_fn(lambda users: jnp.broadcast_to(counts, (len(users), log.num_items)))
        test = self.evaluators[main, "test"]
        results["baselines"] = {"popularity": {"test": test.run(popularity)}}
        if jax.process_index() == 0:
            _print_table(config, results, params_from, self.workdir, quantizer, bits)
        return results


def _print_table(config, results, params_from: str, workdir: str, quantizer, bits: int) -> None:
    what = "full-ranking" if results["protocol"] == "full" else "sampled-negative"
    print(f"\nTest metrics, {what} protocol ({params_from} parameters), workdir {workdir}:")
    for name, values in [
        (config.model.name, results["test"]),
        *(
            [(served_name(quantizer, bits, results.get("serving_form")), results["test_served"])]
            if bits or quantizer
            else []
        ),
        ("popularity", results["baselines"]["popularity"]["test"]),
    ]:
        print(f"  {name:<24} " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
    main = section.selecting(config.evals)
    for name, entry in config.evals.items():
        for served in (False, True):
            key = section.result_key(config.evals, name, "test", served)
            if name == main or key not in results:
                continue
            r = results[key]
            if entry.type == "ctr":
                row = (
                    f"auc {r['auc']:.4f}  gauc {r['gauc']:.4f}  logloss {r['logloss']:.4f}  "
                    f"({r['impressions']} impressions, {r['gauc_users']} users)"
                )
            else:
                row = "  ".join(f"{k} {v:.4f}" for k, v in r.items())
            print(f"  {key:<24} {row}")


def _local(tree: Any) -> Any:
    """`tree` with every array that spans several processes gathered into a host array
    here (each process then scores on its own devices); other leaves unchanged."""

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)  # the global value
        return x

    return jax.tree_util.tree_map(gather, tree)


def served_name(quantizer: quantization.Quantizer | None, bits: int, form: str | None) -> str:
    """E.g. `"int8 towers, int4 tables"`: the served towers' and tables' formats."""
    parts = []
    if quantizer:
        fp8 = form == "fp8" or (form == "aqt" and quantizer.fp8)
        kind = "bf16" if form == "bf16" else "fp8" if fp8 else f"int{quantizer.weight_bits}"
        parts = [f"{kind} towers"]
    return ", ".join(parts + ([f"int{bits} tables"] if bits else []))


def _evaluators(config, log, parts) -> dict[tuple[str, str], Evaluator]:
    """`{(evals entry, split): Evaluator}` for every entry of `config.evals` on its splits.

    Full ranking excludes the items the user interacted with before the split (train;
    for test, train and valid). The sampled protocol ranks each held-out item against
    `num_negatives` items the user never interacted with anywhere in the log, drawn once
    per split with a fixed seed, by popularity over the whole log (BERT4Rec's protocol) or
    uniformly. CTR impressions put each held-out item among never-seen uniform ones.
    """
    seen = {"valid": [parts["train"]], "test": [parts["train"], parts["valid"]]}
    everything = (log.users, log.items)
    counts = np.bincount(log.items, minlength=log.num_items)  # popularity over the log
    out = {}
    for name, entry in config.evals.items():
        chunk = int(entry.get("users_per_chunk", 512 if entry.type == "ctr" else 256))
        seed = int(entry.get("seed", 0))
        for split in section.splits_of(entry):
            held = parts[split]
            if entry.type == "full_ranking":
                before = seen[split]
                out[name, split] = retrieval.FullRanking(
                    seen=(
                        np.concatenate([s.users for s in before]),
                        np.concatenate([s.items for s in before]),
                    ),
                    held_out=(held.users, held.items),
                    num_items=log.num_items,
                    metrics=tuple(entry.metrics),
                    users_per_chunk=chunk,
                )
            elif entry.type == "sampled_ranking":
                by = entry.get("negatives", "popularity")
                negatives = retrieval.sample_negatives(
                    held.users,
                    everything,
                    log.num_items,
                    int(entry.get("num_negatives", 100)),
                    popularity=counts if by == "popularity" else None,
                    seed=seed + section.SPLITS.index(split),
                )
                out[name, split] = retrieval.SampledRanking(
                    users=held.users,
                    positives=held.items,
                    negatives=negatives,
                    metrics=tuple(entry.metrics),
                    users_per_chunk=chunk,
                )
            else:
                shown = ctr.impressions(
                    held.users,
                    held.items,
                    everything,
                    log.num_items,
                    int(entry.negatives_per_positive),
                    seed=seed,
                )
                out[name, split] = ctr.CtrEvaluator(*shown, users_per_chunk=chunk)
    return out
