"""The ranking task (`config.task = "ranking"`, the default): feature and text rankers
over query lists.

data (LibSVM, judgments CSV or the synthetic shop; this process's shards, the transform
fitted on all of train) -> model (`rankjax.models`, every product on the quantization
seam) -> rax loss, plus a distillation term from a frozen teacher run -> batches of lists
-> evaluation on whole splits (the `evals` entries, type `ranking`) -> at the end the best
parameters beside a random and an oracle ranker (and the entries' `baselines`), the
served model (integer weights, packed N:M) saved, loaded back and evaluated, and
`compression.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from rankjax import (
    baselines,
    checkpoint,
    compiler,
    config_schema,
    distributed,
    losses,
    models,
    serving,
    sharding,
)
from rankjax import data as data_lib
from rankjax.compression import distillation, forms, quantization, report, serve, sparsity
from rankjax.data import catalog, packing, pipeline, tokens
from rankjax.data.batches import ShardedTrainBatches, max_list_size
from rankjax.data.dataset import concat
from rankjax.evaluators import ranking, section
from rankjax.models import bert
from rankjax.types import Run, ScoreFn


def data_shards(data_config: ml_collections.ConfigDict) -> tuple[int, tuple[int, ...]]:
    """`(num_shards, this process's shard ids)`: `data.shards` blocks of the queries
    (0: one per process), dealt to processes in contiguous runs, so that process order is
    shard order in every global batch."""
    count, index = jax.process_count(), jax.process_index()
    num_shards = int(data_config.get("shards", 0)) or count
    if num_shards % count:
        raise ValueError(
            f"data.shards={num_shards} must be a multiple of the {count} processes "
            "(0: one shard per process)"
        )
    per = num_shards // count
    return num_shards, tuple(range(index * per, (index + 1) * per))


@dataclasses.dataclass(frozen=True)
class RankingTask:
    """Feature and text rankers over query lists (see the module docstring)."""

    name: str = "ranking"

    def validate(self, config: ml_collections.ConfigDict) -> None:
        config_schema.validate(config)

    def setup(self, config: ml_collections.ConfigDict, mesh: Mesh, workdir: str) -> Run:
        evals = config.evals
        main = section.selecting(evals)
        # Data: this process's shards of the splits, the transform fitted on all of train,
        # deterministic batches.
        num_shards, shard_ids = data_shards(config.data)
        splits = data_lib.load(
            config.data, shards=shard_ids, num_shards=num_shards, gather=distributed.allgather
        )
        if jax.process_index() == 0:
            checkpoint.write_json(
                os.path.join(workdir, "feature_transform.json"), splits.transform.to_json()
            )
        text_cfg = config.data.get("text") or {}
        quantizer = quantization.from_config(config.get("quant"))
        model = _build(config, quantizer, "train")
        # Token axes are cut to each batch's longest sequence, or a cross-encoder's pairs
        # packed into rows (`data.text.pack_length`), one group per data-parallel device;
        # with several processes every one would need the same shapes, so they keep the
        # full width there.
        prepare = _preparer(text_cfg, model, mesh.shape[sharding.DATA_AXIS])

        # Baselines, fitted on the labelled training lists only.
        wanted = tuple(dict.fromkeys(b for e in evals.values() for b in e.get("baselines", ())))
        if wanted:
            valid, test = baselines.add_baseline_scores(
                splits.train,
                [splits.valid, splits.test],
                wanted,
                tuple(text_cfg.get("item_columns", ())),
            )
            splits = dataclasses.replace(splits, valid=valid, test=test)
        labelled_lists = splits.train.num_lists

        # Loss; the teacher's scores on the training items (and on catalog pairs).
        loss_fn = losses.get(**config.loss)
        distiller = distillation.from_config(config.get("distill"))
        start_params = None  # what a distilled student starts from, if not pretrained
        if distiller is not None:
            splits, start_params = _with_teacher(
                distiller, splits, config, prepare, mesh.shape[sharding.DATA_AXIS]
            )
        objective = (
            distillation.label_objective(loss_fn)
            if distiller is None
            else distiller.objective(loss_fn)
        )
        train_batches = ShardedTrainBatches(
            splits.train_shards,
            shard_ids,
            num_shards,
            int(config.train.batch_size),
            int(config.data.list_size),
            int(config.seed),
            lengths=[tokens.list_token_lengths(d) for d in splits.train_shards],
            bucket_batches=int(config.data.get("bucket_batches", 0)),
        )
        if text_cfg and hasattr(model, "packed_inputs"):
            multiple = int(text_cfg.get("pad_multiple", 16))
            logging.info("%s", packing.describe_shares(train_batches, prepare, multiple))
        shards = f" (this process's shards {list(shard_ids)} of {num_shards})"
        unlabelled = splits.train.num_lists - labelled_lists
        describe = (
            f"data: {config.data.source} | train {labelled_lists} lists"
            f"{f' + {unlabelled} unlabelled (catalog pairs)' if unlabelled else ''}, valid "
            f"{splits.valid.num_lists}, test {splits.test.num_lists}"
            f"{shards if num_shards > 1 else ''} | {splits.train.num_features} features"
        )

        # The keys the training step reads: the rest (oracle grades, ids, baseline inputs)
        # would only be copied to the devices.
        step_keys = frozenset(
            {"labels", "where", *models.input_keys(model), *getattr(model, "packed_inputs", ())}
            | ({"teacher"} if distiller is not None else set())
            | ({catalog.LABELLED} if distiller is not None and distiller.catalog_pairs else set())
        )

        # Initial weights: pretrained or teacher weights where the config asks for them.
        sample = models.sample_inputs(model, train_batches(0))

        def init(rng, loaded):
            params = model.init(rng, *sample)["params"]
            return params if loaded is None else _overlay(params, loaded, distiller)

        def loss(params, batch, rng):
            scores = model.apply(
                {"params": params},
                models.inputs(model, batch),
                batch["where"],
                train=True,
                rngs={"dropout": rng},
            )
            return objective(scores, batch)

        # Under the mesh as context the Pallas kernels of a data-parallel evaluation split
        # over the batch; without it XLA would gather the whole batch onto every device.
        predict = sharding.with_mesh(
            compiler.jit(
                lambda params, batch: model.apply(
                    {"params": params}, models.inputs(model, batch), batch["where"], train=False
                ),
            ),
            mesh,
        )
        evaluators = {
            (name, split): ranking.RankingEvaluator(
                splits[split],
                mesh=mesh,
                batch_size=int(entry.batch_size),
                metrics=tuple(entry.metrics),
                no_relevant=entry.get("no_relevant", "zero"),
                gain=entry.get("gain", "exp2"),
                min_list_size=int(entry.get("min_list_size", 1)),
                prepare=prepare,
            )
            for name, entry in evals.items()
            for split in section.splits_of(entry)
        }

        def model_scores(params):
            return lambda batch: predict(params, batch)

        final = _Final(
            config,
            evaluators,
            model_scores,
            quantizer,
            sparsity.from_config(config.get("sparsity")),
            train_batches,
            workdir,
        )
        return Run(
            init=init,
            loaded=_initial_weights(model, distiller, start_params),
            loss=loss,
            batches=lambda step: _only(prepare(train_batches(step)), step_keys),
            evaluate=lambda params, split: evaluators[main, split].run(model_scores(params)),
            finish=final,
            rng=jax.random.PRNGKey(int(config.seed)),
            describe=describe,
            # A `model` mesh axis splits the text encoder's heads and feed-forward units.
            rules=bert.TENSOR_PARALLEL_RULES if mesh.shape.get(sharding.MODEL_AXIS, 1) > 1 else (),
        )


TASK = RankingTask()


def _identity(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch


def _preparer(text_cfg, model, groups: int):
    """What host batches go through before `model` (`packing.preparer`); several
    processes keep the full token width, as each would need the same shapes."""
    if jax.process_count() > 1:
        return _identity
    return packing.preparer(text_cfg, hasattr(model, "packed_inputs"), groups)


def _with_teacher(distiller, splits, config, prepare, groups: int):
    """Loads the teacher run's best parameters and adds its scores on every training item
    (the `teacher` extra). A teacher that tokenizes otherwise than the student (e.g.
    MPNet teaching MiniLM) scores the items' texts tokenized its own way.

    Returns:
      `(splits, params that start the student)`: the teacher's, or those of the
      `distill.init_from` run.
    """
    teacher = serving.load(distiller.teacher, "best")
    own_text = config.data.get("text") or {}
    teacher_text = (teacher.config.get("data") or {}).get("text") or {}
    retokenize = bool(own_text and teacher_text) and not pipeline.same_tokens(
        own_text, teacher_text
    )
    if retokenize:
        teacher_prepare = _preparer(teacher_text, teacher.model, groups)
        teacher_view = functools.partial(pipeline.tokenized, text_cfg=teacher_text)
    else:
        teacher_prepare, teacher_view = prepare, _identity
    score = compiler.jit(
        lambda v, batch: teacher.model.apply(
            v, models.inputs(teacher.model, batch), batch["where"], train=False
        )
    )
    train_shards = splits.train_shards
    if distiller.catalog_pairs:
        train_shards = _with_catalog_lists(
            train_shards, distiller.catalog_pairs, own_text, int(config.data.list_size)
        )
    list_size = max_list_size(*train_shards)
    t0 = time.perf_counter()
    shards = tuple(
        distillation.with_teacher_scores(
            d,
            distillation.score_items(
                lambda b: score(teacher.variables, b),
                teacher_view(d),
                batch_size=int(config.evals[section.selecting(config.evals)].batch_size),
                list_size=list_size,
                prepare=teacher_prepare,
            ),
        )
        for d in train_shards
    )
    logging.info(
        "teacher %s (%s%s) scored %d training items in %.1f s",
        distiller.teacher,
        teacher.config.model.name,
        ", its own tokens" if retokenize else "",
        sum(d.num_items for d in shards),
        time.perf_counter() - t0,
    )
    splits = dataclasses.replace(splits, train=concat(shards), train_shards=shards)
    if not distiller.init_from_teacher:
        return splits, None
    source = teacher if not distiller.init_from else serving.load(distiller.init_from, "best")
    source_text = (source.config.get("data") or {}).get("text") or {}
    if own_text and source_text and not pipeline.same_tokens(own_text, source_text):
        raise ValueError(
            f"distill.init_from_teacher: the run that starts the student "
            f"({distiller.init_from or distiller.teacher}) tokenizes with "
            f"{source_text.get('checkpoint') or 'the default checkpoint'}, the student with "
            f"{own_text.get('checkpoint') or 'the default checkpoint'}: its embeddings are "
            "of another vocabulary; set distill.init_from to a run with the student's "
            "tokenizer"
        )
    logging.info("the student starts from %s", distiller.init_from or distiller.teacher)
    return splits, source.variables["params"]


def _with_catalog_lists(shards, per_query: int, text_cfg, list_size: int):
    """Each training shard followed by its unlabelled catalog lists (`data.catalog`; a
    shard's own products are its catalog), tokenized as the student reads them.

    Raises:
      ValueError: a model without text, or lists longer than `data.list_size`.
    """
    if not text_cfg:
        raise ValueError("distill.catalog_pairs needs a text ranker (a data.text section)")
    if per_query > list_size:
        raise ValueError(
            f"distill.catalog_pairs={per_query} is longer than data.list_size={list_size}"
        )
    t0 = time.perf_counter()
    columns = tuple(text_cfg["item_columns"])
    out = tuple(
        pipeline.tokenized(catalog.with_catalog_lists(d, per_query, columns), text_cfg)
        for d in shards
    )
    logging.info(
        "catalog pairs: an unlabelled list of %d products for each of %d training queries (%.1f s)",
        per_query,
        sum(d.num_lists for d in shards),
        time.perf_counter() - t0,
    )
    return out


def _initial_weights(model, distiller, start_params):
    """What `init` loads over fresh parameters: the teacher's or the `init_from` run's
    (distillation with `init_from_teacher`), else the model's pretrained encoders, else
    None."""
    if distiller is not None and distiller.init_from_teacher:
        return jax.device_get(start_params)
    pretrained = getattr(model, "pretrained_params", None)
    return pretrained() if pretrained is not None else None


def _overlay(params, loaded, distiller):
    if distiller is not None and distiller.init_from_teacher:
        return distillation.init_from_teacher(
            params, loaded, distiller.init_layers, distiller.init_embeddings
        )[0]
    return models.overlay(params, loaded)


def _only(batch: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k in keys}


def _build(config, quantizer: quantization.Quantizer | None, phase: str):
    """`config.model` quantized for `phase` (float without a quantizer)."""
    return quantization.build(functools.partial(models.get, config.model), quantizer, phase)


def _serve(config, quantizer, sparsifier, params, train_batches, evaluator, workdir):
    """Builds the served model, saves it to `workdir/served/` and loads it back from there.

    Quantized layers are converted to the served form (`compression.forms`: the configured
    one, or under `quant.serving="auto"` the fastest of this device's, timed on the
    evaluator's first batches) and their float kernels dropped; N:M-sparse kernels are
    stored packed (kept values and bit-packed positions); pruned units are cut out.

    Returns:
      `(the tree as saved, the loaded model's score function, {"serving_form": form,
      "serving_forms": {form: {"bytes", "seconds_per_pass"}}})` (the last empty without a
      quantizer; seconds only where forms were timed against each other).
    """
    mesh = evaluator.mesh
    convert = functools.partial(
        _convert,
        config,
        sparsifier=sparsifier,
        params=params,
        train_batches=train_batches,
        evaluator=evaluator,
    )
    choice: dict[str, Any] = {}
    if quantizer is None:
        served, serve_model = convert(None, None)
    else:
        built = {form: convert(quantizer, form) for form in forms.candidates(quantizer)}
        form, seconds = next(iter(built)), {}
        if len(built) > 1:
            size = evaluator.batch_size
            batches = [sharding.put_batch(b, mesh, size) for b in evaluator.batches[:8]]
            scorers = {}
            for f, (tree, m) in built.items():  # as loaded: N:M kernels unpacked
                m, v = serve.served_module(m, sparsity.unpack_tree(tree, sparsifier))
                v = jax.device_put(v, sharding.replicated(mesh))
                scorers[f] = functools.partial(_predictor(m, mesh), v)
            form, seconds = forms.fastest(scorers, batches)
            form = forms.agreed(form, built)
            logging.info("served forms, seconds per pass: %s; serving %s", seconds, form)
        served, serve_model = built[form]
        choice = {
            "serving_form": form,
            "serving_forms": {
                f: {"bytes": quantization.array_bytes(tree), "seconds_per_pass": seconds.get(f)}
                for f, (tree, _) in built.items()
            },
        }
    # Evaluate what a server would load: the saved (packed) tree, unpacked.
    serve_model, loaded = serve.served_module(
        serve_model, serve.round_trip(workdir, served, sparsifier)
    )
    loaded = jax.device_put(loaded, sharding.replicated(mesh))  # once, not every batch
    predict = _predictor(serve_model, mesh)
    return served, lambda batch: predict(loaded, batch), choice


def _predictor(model, mesh):
    """`(variables, batch) -> scores`, jitted, under the mesh (Pallas kernels split)."""
    return sharding.with_mesh(
        compiler.jit(
            lambda v, batch: model.apply(
                v, models.inputs(model, batch), batch["where"], train=False
            )
        ),
        mesh,
    )


def _convert(config, quantizer, form, *, sparsifier, params, train_batches, evaluator):
    """The model converted to one served `form` of `quantizer` (None: float, no quantizer).

    Returns:
      `(tree to save (host arrays), the serving module)`.
    """
    mesh = evaluator.mesh
    if quantizer is not None:
        quantizer = forms.quantizer_for(quantizer, form)
    converts = quantizer is not None and forms.quantizes_layers(form)
    if quantizer is not None and not converts:  # bf16: float weights stored in 16 bits
        params = serving.cast_params({"params": jax.device_get(params)})["params"]

    def build(phase):
        return _build(config, quantizer, phase)

    serve_model, calibrate_model = build("serve"), build("calibrate")
    sample = models.sample_inputs(serve_model, evaluator.batches[0])
    # Global batches: every process gets the same static ranges from all shards' data.
    calibration = (
        (models.inputs(calibrate_model, b), b["where"])
        for b in (
            sharding.put_batch(train_batches(i), mesh, int(config.train.batch_size))
            for i in range(quantizer.calibration_batches if converts else 0)
        )
    )
    served = serve.convert(
        build,
        params,
        sample,
        quantizer=quantizer if converts else None,
        calibration_batches=calibration,
        embedding_bits=quantizer.embedding_bits if quantizer else 0,
        sparsifier=sparsifier,
    )
    return served, serve_model


@dataclasses.dataclass(frozen=True)
class _Final:
    """The final evaluation (`Run.finish`): the chosen parameters on every `evals` entry
    and split, the compressed model served when there is one, baselines,
    `compression.json` and the printed tables."""

    config: ml_collections.ConfigDict
    evaluators: dict[tuple[str, str], ranking.RankingEvaluator]
    model_scores: Any
    quantizer: quantization.Quantizer | None
    sparsifier: sparsity.Sparsifier | None
    train_batches: Any
    workdir: str

    def _evaluate(
        self, score_fn: ScoreFn, served: bool = False, test_only: bool = False
    ) -> dict[str, dict[str, float]]:
        """`{results key: metrics}` of `score_fn` under every evaluator, with
        `rmse_calibrated` on test where the entry asks (`calibrate_rmse`: fitted on
        valid)."""
        evals = self.config.evals
        fit_on = self.evaluators[section.selecting(evals), "valid"]
        out = {}
        for (name, split), ev in self.evaluators.items():
            if test_only and split != "test":
                continue
            got = ev.run(score_fn)
            label_range = tuple(evals[name].get("calibrate_rmse", ()))
            if label_range and split == "test":
                got["rmse_calibrated"] = ranking.calibrated_rmse(score_fn, fit_on, ev, label_range)
            out[section.result_key(evals, name, split, served)] = got
        return out

    def __call__(self, params: Any, params_from: str) -> dict[str, Any]:
        config, workdir, evals = self.config, self.workdir, self.config.evals
        results: dict[str, Any] = self._evaluate(self.model_scores(params))
        served = None
        reshapes = self.sparsifier is not None and isinstance(
            sparsity.parse_pattern(self.sparsifier.pattern), sparsity.NM | sparsity.Units
        )
        if self.quantizer is not None or reshapes:
            main = section.selecting(evals)
            served, served_scores, choice = _serve(
                config,
                self.quantizer,
                self.sparsifier,
                params,
                self.train_batches,
                self.evaluators[main, "test"],
                workdir,
            )
            results.update(self._evaluate(served_scores, served=True))
        compression = report.build(jax.device_get(params), jax.device_get(served))
        if served is not None:
            compression.update(choice)
            results.update(choice)
            results.setdefault("serving_form", "float")
        results["bytes"] = {k: compression[k] for k in ("float_bytes", "serving_bytes")}
        if jax.process_index() == 0:
            report.write(workdir, compression)
        compression_table = report.format_table(compression)
        wanted = dict.fromkeys(b for e in evals.values() for b in e.get("baselines", ()))
        baseline_scores = {
            "random": ranking.random_scores(int(config.seed)),
            **{name: ranking.extra_scores(f"baseline:{name}") for name in wanted},
            "oracle": ranking.oracle_scores,
        }
        results["baselines"] = {
            name: self._evaluate(fn, test_only=True) for name, fn in baseline_scores.items()
        }
        tables = "\n\n".join(_tables(config, results))
        # The tables are printed once (process 0), not logged as well: one copy on screen.
        logging.info("final evaluation of %s parameters done (results.json)", params_from)
        if jax.process_index() == 0:
            print(f"\nModel size (compression.json):\n{compression_table}", flush=True)
            print(
                f"\nTest metrics ({params_from} parameters), workdir {workdir}:\n{tables}",
                flush=True,
            )
        return results


def _tables(config: ml_collections.ConfigDict, results: dict[str, Any]) -> list[str]:
    """One table per `evals` entry on test (the one that runs on valid first): the model,
    the served model, the baselines; columns `section.report_columns`."""
    evals, main, model = config.evals, section.selecting(config.evals), config.model.name
    out = []
    for name in sorted(evals, key=lambda n: n != main):
        entry = evals[name]
        if "test" not in section.splits_of(entry):
            continue
        key = section.result_key(evals, name, "test")
        served = section.result_key(evals, name, "test", served=True)
        title = "" if name == main else f" {name}"
        rows = {f"{model} (test){title}": results[key]}
        if served in results:
            rows[f"{model} served (test){title}"] = results[served]
        rows.update({f"{b} (test)": r[key] for b, r in results["baselines"].items()})
        out.append(_format_table(rows, section.report_columns(entry)))
    return out


def _format_table(rows: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> str:
    head = f"| {'ranker':<26} | " + " | ".join(f"{m:>9}" for m in metrics) + " |"
    sep = "|" + "-" * 28 + "|" + "|".join("-" * 11 for _ in metrics) + "|"
    body = [
        f"| {name:<26} | " + " | ".join(f"{vals.get(m, float('nan')):9.4f}" for m in metrics) + " |"
        for name, vals in rows.items()
    ]
    return "\n".join([head, sep, *body])
