"""`train_and_evaluate(config, workdir)`: the whole run, top to bottom.

data -> model -> loss -> optimizer -> state (restored or initialised) -> jitted, donated,
data-parallel train step -> periodic evaluation and checkpoints -> final evaluation of the
best parameters beside a random and an oracle ranker -> `results.json`.
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

from rankjax import (
    baselines,
    checkpoint,
    compiler,
    config_schema,
    distributed,
    losses,
    models,
    optim,
    preemption,
    serving,
    sharding,
)
from rankjax import data as data_lib
from rankjax.compression import distillation, quantization, report, sparsity
from rankjax.data import lists, tokens
from rankjax.evaluators import ranking
from rankjax.metric_writer import MetricWriter


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs. The data position is `step` itself: batch `s` is a
    pure function of `(seed, s)` (see `lists.TrainBatches`)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def make_train_step(
    model, objective: Callable[[jax.Array, dict], jax.Array], tx: optax.GradientTransformation
) -> Callable:
    """The pure step `(state, batch) -> (state, metrics)`.

    Args:
      model: the flax ranker.
      objective: `(scores, batch) -> loss` (the label loss, plus a distillation term).
      tx: the optimizer.

    Metrics are the loss and the global norms of gradients, parameters and updates.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_of(params):
            scores = model.apply(
                {"params": params},
                models.inputs(model, batch),
                batch["where"],
                train=True,
                rngs={"dropout": dropout_rng},
            )
            return objective(scores, batch)

        loss, grads = jax.value_and_grad(loss_of)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
            "update_norm": optax.global_norm(updates),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _prepare_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable: {e.strerror}") from None


def _format_table(rows: dict[str, dict[str, float]], metrics: tuple[str, ...]) -> str:
    head = f"| {'ranker':<26} | " + " | ".join(f"{m:>9}" for m in metrics) + " |"
    sep = "|" + "-" * 28 + "|" + "|".join("-" * 11 for _ in metrics) + "|"
    body = [
        f"| {name:<26} | " + " | ".join(f"{vals.get(m, float('nan')):9.4f}" for m in metrics) + " |"
        for name, vals in rows.items()
    ]
    return "\n".join([head, sep, *body])


class _StepMetrics:
    """Train-step metrics kept on device between syncs; checked for NaN step by step."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))

    def sync(self) -> None:
        """Fetches pending metrics; raises `TrainingDiverged` naming the first bad step."""
        fetched = jax.device_get(self.pending)
        self.pending = []
        for step, m in fetched:
            for name in ("loss", "grad_norm", "param_norm"):
                if not np.isfinite(m[name]):
                    raise TrainingDiverged(f"training {name} is {m[name]} at step {step}")
            for k, v in m.items():
                self.totals[k] = self.totals.get(k, 0.0) + float(v)
            self.count += 1

    def means(self) -> dict[str, float]:
        out = {k: v / max(self.count, 1) for k, v in self.totals.items()}
        self.totals, self.count = {}, 0
        return out


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the ranker described by `config`, evaluates it and writes `workdir`.

    Rerunning with the same workdir resumes from the newest checkpoint.

    Args:
      config: the experiment config (see `configs/`).
      workdir: output folder: `config.json`, `metrics.jsonl`, `tensorboard/`,
        `checkpoints/`, `best/`, `feature_transform.json`, `results.json`.

    Returns:
      The contents of `results.json`.
    """
    config_schema.validate(config)
    _prepare_workdir(workdir)
    if jax.process_index() == 0:
        checkpoint.write_json(
            os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
        )
    tcfg, ecfg = config.train, config.eval
    num_steps = int(tcfg.num_steps)

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
    mesh = sharding.make_mesh(int(config.mesh.num_devices))
    # Token axes are cut to each batch's longest sequence; with several processes every
    # one would need the same width, so they keep the full width there.
    text_cfg = config.data.get("text") or {}
    prepare = (
        functools.partial(tokens.trim_token_axes, multiple=int(text_cfg.get("pad_multiple", 16)))
        if jax.process_count() == 1
        else _identity
    )

    # Model, loss, optimizer; the teacher's scores on the training items.
    quantizer = quantization.from_config(config.get("quant"))
    model = models.get(config.model, **_seam(quantizer, "train"))
    loss_fn = losses.get(**config.loss)
    distiller = distillation.from_config(config.get("distill"))
    teacher_params = None
    if distiller is not None:
        splits, teacher_params = _with_teacher(distiller, splits, config, prepare)
    objective = (
        distillation.label_objective(loss_fn) if distiller is None else distiller.objective(loss_fn)
    )
    tx, lr_schedule = optim.make(config.optim, num_steps)
    sparsifier = sparsity.from_config(config.get("sparsity"))
    if sparsifier is not None:
        tx = sparsifier.wrap_optax(tx)  # masks live in the optimizer state

    if ecfg.get("baselines"):
        valid, test = baselines.add_baseline_scores(
            splits.train,
            [splits.valid, splits.test],
            tuple(ecfg.baselines),
            tuple(text_cfg.get("item_columns", ())),
        )
        splits = dataclasses.replace(splits, valid=valid, test=test)
    train_batches = lists.ShardedTrainBatches(
        splits.train_shards,
        shard_ids,
        num_shards,
        int(tcfg.batch_size),
        int(config.data.list_size),
        int(config.seed),
        lengths=[tokens.list_token_lengths(d) for d in splits.train_shards],
        bucket_batches=int(config.data.get("bucket_batches", 0)),
    )
    logging.info(
        "data: %s | train %d lists, valid %d, test %d%s | %d features | %d device(s)",
        config.data.source,
        splits.train.num_lists,
        splits.valid.num_lists,
        splits.test.num_lists,
        f" (this process's shards {list(shard_ids)} of {num_shards})" if num_shards > 1 else "",
        splits.train.num_features,
        mesh.size,
    )

    # State: restore the newest checkpoint, or initialise (from pretrained or teacher
    # weights where the config asks for them).
    sample = models.sample_inputs(model, train_batches(0))
    loaded = _initial_weights(model, distiller, teacher_params)

    def init(rng, loaded):
        params = model.init(rng, *sample)["params"]
        if loaded is not None:
            params = _overlay(params, loaded, distiller)
        return TrainState(
            step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), rng=rng
        )

    rng = jax.random.PRNGKey(int(config.seed))
    rules = [tuple(r) for r in config.mesh.get("rules", ())]
    state_shardings = sharding.tree_shardings(jax.eval_shape(init, rng, loaded), mesh, rules)
    state = jax.jit(init, out_shardings=state_shardings)(rng, loaded)
    del loaded, teacher_params
    ckpt = checkpoint.Checkpointer(
        workdir,
        every=int(config.ckpt.every),
        keep=int(config.ckpt.keep),
        best_metric=config.ckpt.best_metric,
        best_mode=config.ckpt.best_mode,
    )
    state, restored = ckpt.restore_or_init(state)
    if restored is not None:
        logging.info("resumed from %s/checkpoints at step %d", workdir, restored)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    logging.info("model %s: %d parameters", config.model.name, n_params)

    batch_sharding = sharding.batch_sharding(mesh)
    batch_size = int(tcfg.batch_size)
    sharding.check_divisible(batch_size, mesh)
    train_step = jax.jit(
        make_train_step(model, objective, tx),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    # Under the mesh as context the Pallas kernels of a data-parallel evaluation split
    # over the batch; without it XLA would gather the whole batch onto every device.
    predict = sharding.with_mesh(
        compiler.jit(
            lambda params, batch: model.apply(
                {"params": params}, models.inputs(model, batch), batch["where"], train=False
            ),
            in_shardings=(state_shardings.params, batch_sharding),
        ),
        mesh,
    )
    evaluators = {
        name: ranking.RankingEvaluator(
            splits[name],
            mesh=mesh,
            batch_size=int(ecfg.batch_size),
            metrics=tuple(ecfg.metrics),
            no_relevant=ecfg.no_relevant,
            gain=ecfg.gain,
            min_list_size=int(ecfg.get("min_list_size", 1)),
            prepare=prepare,
        )
        for name in ("valid", "test")
    }

    def model_scores(params):
        return lambda batch, i: predict(params, batch)

    writer = MetricWriter(workdir, resume_step=restored)
    step_metrics = _StepMetrics()
    first_step = int(state.step)
    multi_process = jax.process_count() > 1
    t_last, steps_since = time.perf_counter(), 0
    try:
        with preemption.SigtermFlag() as sigterm:
            for step in range(first_step, num_steps):
                batch = sharding.put_batch(prepare(train_batches(step)), mesh, batch_size)
                state, m = train_step(state, batch)
                done = step + 1  # steps completed; logs and checkpoints count this way
                step_metrics.add(done, m)
                steps_since += 1
                is_log = done % int(tcfg.log_every) == 0 or done == num_steps
                is_eval = done % int(tcfg.eval_every) == 0 or done == num_steps
                is_ckpt = done % ckpt.every == 0 or done == num_steps
                boundary = is_log or is_eval or is_ckpt
                # Processes must agree on stopping; a single process checks every step.
                stop = (
                    sigterm.anywhere()
                    if multi_process and boundary
                    else (not multi_process and sigterm.local)
                )
                if not (boundary or stop):
                    continue
                step_metrics.sync()  # nothing non-finite is ever logged as good or saved
                if is_log:
                    elapsed = time.perf_counter() - t_last
                    rate = steps_since * int(tcfg.batch_size) / elapsed
                    eta = (num_steps - done) * elapsed / steps_since
                    values = {
                        **step_metrics.means(),
                        "learning_rate": float(lr_schedule(done)),
                        "examples_per_sec": rate,
                    }
                    logging.info(
                        "step %d/%d | loss %.4f | grad_norm %.3f | lr %.2e | %.0f examples/s | "
                        "ETA %s",
                        done,
                        num_steps,
                        values["loss"],
                        values["grad_norm"],
                        values["learning_rate"],
                        rate,
                        time.strftime("%H:%M:%S", time.gmtime(eta)),
                    )
                    writer.write(done, "train", values)
                    t_last, steps_since = time.perf_counter(), 0
                if is_eval:
                    valid = evaluators["valid"].run(model_scores(state.params))
                    logging.info("step %d | valid %s", done, _fmt(valid))
                    writer.write(done, "valid", valid)
                    # A best checkpoint must already have its final sparsity pattern.
                    if sparsifier is None or done >= sparsifier.final_step:
                        ckpt.save_best(done, state.params, valid)
                if is_ckpt or stop:
                    ckpt.save(done, state, force=True)
                if stop:
                    ckpt.wait()
                    raise preemption.Preempted(done, os.path.join(workdir, "checkpoints"))
    except TrainingDiverged as e:
        ckpt.wait()
        last = ckpt.latest_step()
        where = os.path.join(workdir, "checkpoints")
        kept = (
            f"the last good checkpoint (step {last}) in {where} is intact"
            if last
            else ("no checkpoint had been saved yet")
        )
        raise TrainingDiverged(f"{e}; stopping: {kept}") from None
    finally:
        ckpt.wait()
        writer.close()

    return _final_evaluation(
        config, state, ckpt, evaluators, model_scores, quantizer, sparsifier, train_batches, workdir
    )


def _identity(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch


def _with_teacher(distiller, splits, config, prepare):
    """Loads the teacher run's best parameters and adds its scores on every training item
    (the `teacher` extra). Returns `(splits, teacher params)`."""
    teacher = serving.load(distiller.teacher, "best")
    score = compiler.jit(
        lambda v, batch: teacher.model.apply(
            v, models.inputs(teacher.model, batch), batch["where"], train=False
        )
    )
    list_size = lists.max_list_size(*splits.train_shards)
    t0 = time.perf_counter()
    shards = tuple(
        distillation.with_teacher_scores(
            d,
            distillation.score_items(
                lambda b: score(teacher.variables, b),
                d,
                batch_size=int(config.eval.batch_size),
                list_size=list_size,
                prepare=prepare,
            ),
        )
        for d in splits.train_shards
    )
    logging.info(
        "teacher %s (%s) scored %d training items in %.1f s",
        distiller.teacher,
        teacher.config.model.name,
        sum(d.num_items for d in shards),
        time.perf_counter() - t0,
    )
    splits = dataclasses.replace(splits, train=lists.concat(shards), train_shards=shards)
    return splits, teacher.variables["params"]


def _initial_weights(model, distiller, teacher_params):
    """What `init` loads over fresh parameters: the teacher's (distillation with
    `init_from_teacher`), else the model's pretrained encoders, else None."""
    if distiller is not None and distiller.init_from_teacher:
        return jax.device_get(teacher_params)
    pretrained = getattr(model, "pretrained_params", None)
    return pretrained() if pretrained is not None else None


def _overlay(params, loaded, distiller):
    if distiller is not None and distiller.init_from_teacher:
        return distillation.init_from_teacher(
            params, loaded, distiller.init_layers, distiller.init_embeddings
        )[0]
    return models.overlay(params, loaded)


def _seam(quantizer: quantization.Quantizer | None, phase: str) -> dict[str, Any]:
    """Model keyword arguments for the quantization seam in `phase` (none without quant)."""
    return {} if quantizer is None else quantizer.model_seam(phase)


def _serve(config, quantizer, sparsifier, params, train_batches, evaluators, workdir):
    """Builds the served model, saves it to `workdir/served/`, loads it back from there and
    evaluates it on valid and test.

    Quantized layers are converted to integer weights plus scales (their float kernels are
    dropped); N:M-sparse kernels are stored packed (kept values and bit-packed positions).

    Returns:
      `(the tree as saved, {"valid_served": ..., "test_served": ...}, its score function)`.
    """
    mesh = evaluators["test"].mesh
    serve_model = models.get(config.model, **_seam(quantizer, "serve"))
    sample = models.sample_inputs(serve_model, evaluators["test"].batches[0])
    if quantizer is not None:
        calibration = None
        if quantizer.static:
            # Global batches: every process gets the same ranges from all shards' data.
            batches = (
                sharding.put_batch(train_batches(i), mesh, int(config.train.batch_size))
                for i in range(quantizer.calibration_batches)
            )
            calibrate_model = models.get(config.model, **_seam(quantizer, "calibrate"))
            calibration = quantizer.calibrate(
                calibrate_model,
                params,
                ((models.inputs(calibrate_model, b), b["where"]) for b in batches),
            )
        convert_model = models.get(config.model, **_seam(quantizer, "convert"))
        served = jax.jit(lambda p, c: quantizer.convert(convert_model, p, sample, c))(
            params, calibration
        )
        served = quantizer.quantize_embeddings(jax.device_get(served))
    else:
        served = {"params": params}
    served = jax.device_get(served)
    if sparsifier is not None:
        served = sparsity.pack_tree(served, sparsifier, quantization.kernel_path)
    path = os.path.join(workdir, "served")
    checkpoint.save_tree(path, served)
    # Evaluate what a server would load: the saved (packed) tree, unpacked.
    loaded = sparsity.unpack_tree(checkpoint.load_tree(path), sparsifier)
    predict = sharding.with_mesh(
        compiler.jit(
            lambda v, batch: serve_model.apply(
                v, models.inputs(serve_model, batch), batch["where"], train=False
            )
        ),
        mesh,
    )

    def served_scores(batch, i):
        return predict(loaded, batch)

    out = {f"{name}_served": ev.run(served_scores) for name, ev in evaluators.items()}
    logging.info("served model saved in %s", path)
    return served, out, served_scores


def _final_evaluation(
    config, state, ckpt, evaluators, model_scores, quantizer, sparsifier, train_batches, workdir
) -> dict[str, Any]:
    """Evaluates the best (else the last) parameters, serves the compressed model when there
    is one, writes `results.json` and `compression.json`, and prints the table."""
    ecfg = config.eval
    label_range = tuple(ecfg.get("calibrate_rmse", ()))

    def with_calibration(test_results: dict[str, float], score_fn) -> dict[str, float]:
        """Adds `rmse_calibrated` (`eval.calibrate_rmse`: fitted on valid, taken on test)."""
        if label_range:
            test_results["rmse_calibrated"] = ranking.calibrated_rmse(
                score_fn, evaluators["valid"], evaluators["test"], label_range
            )
        return test_results

    # Final evaluation: the best parameters by validation metric (else the last).
    params, params_from = state.params, f"last (step {int(state.step)})"
    best = ckpt.restore_best(state.params) if ecfg.use_best else None
    if best is not None:
        params, params_from = best, f"best {ckpt.best_metric} (step {ckpt.best_step()})"
    ckpt.close()
    results: dict[str, Any] = {"step": int(state.step), "params": params_from}
    for name, ev in evaluators.items():
        results[name] = ev.run(model_scores(params))
    with_calibration(results["test"], model_scores(params))
    if sparsifier is not None:
        results["sparsity"] = sparsity.measured(params, sparsifier)
        logging.info("sparsity of the pruned kernels: %s", results["sparsity"])
    rows = {f"{config.model.name} (test)": results["test"]}
    served = None
    packs = sparsifier is not None and isinstance(
        sparsity.parse_pattern(sparsifier.pattern), sparsity.NM
    )
    if quantizer is not None or packs:
        served, served_results, served_scores = _serve(
            config, quantizer, sparsifier, params, train_batches, evaluators, workdir
        )
        with_calibration(served_results["test_served"], served_scores)
        results.update(served_results)
        rows[f"{config.model.name} served (test)"] = served_results["test_served"]
    compression = report.build(jax.device_get(params), jax.device_get(served))
    results["bytes"] = {k: compression[k] for k in ("float_bytes", "serving_bytes")}
    if jax.process_index() == 0:
        report.write(workdir, compression)
    compression_table = report.format_table(compression)
    logging.info("compression report (also in compression.json):\n%s", compression_table)
    baseline_scores = {
        "random": ranking.random_scores(int(config.seed)),
        **{name: ranking.extra_scores(f"baseline:{name}") for name in ecfg.get("baselines", ())},
        "oracle": ranking.oracle_scores,
    }
    results["baselines"] = {
        name: {"test": with_calibration(evaluators["test"].run(fn), fn)}
        for name, fn in baseline_scores.items()
    }
    if jax.process_index() == 0:
        checkpoint.write_json(os.path.join(workdir, "results.json"), results)
    table = _format_table(
        {
            **rows,
            **{f"{name} (test)": r["test"] for name, r in results["baselines"].items()},
        },
        tuple(ecfg.report) + (("rmse_calibrated",) if label_range else ()),
    )
    logging.info("final evaluation of %s parameters:\n%s", params_from, table)
    if jax.process_index() == 0:
        print(f"\nModel size (compression.json):\n{compression_table}", flush=True)
        print(f"\nTest metrics ({params_from} parameters), workdir {workdir}:\n{table}", flush=True)
    return results


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in values.items())
