"""`train_and_evaluate(config, workdir)`: the one training loop of every task.

config -> task (`rankjax.tasks.get`) -> mesh -> the task's run (data, model, loss,
evaluation) -> optimizer (sparsity wraps it; masks live in its state) -> state, restored
or initialised -> jitted, donated, sharded train step -> periodic logs, validation with
keep-best, checkpoints; SIGTERM checkpoints and stops; a non-finite loss stops naming the
step -> the task's final evaluation of the chosen parameters -> `results.json`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from rankjax import checkpoint, optim, preemption, progress, provenance, sharding, tasks
from rankjax import workdir as workdir_lib
from rankjax.compression import quantization, sparsity
from rankjax.data import feed
from rankjax.metric_writer import MetricWriter, flat_hparams


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs. The data position is `step` itself: batch `s` is a
    pure function of `(seed, s)`, and so is the step's key, `fold_in(rng, s)`."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def make_train_step(
    loss_fn: Callable[[Any, dict, jax.Array], jax.Array], tx: optax.GradientTransformation
) -> Callable:
    """The pure step `(state, batch) -> (state, metrics)`.

    Args:
      loss_fn: `(params, batch, rng) -> scalar` (the task's loss).
      tx: the optimizer.

    Metrics are the loss and the global norms of gradients, parameters and updates.
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
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


def init_state(
    init_params: Callable[..., Any],
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    rules: Sequence[tuple[str, Any]],
    rng: jax.Array,
    step_rng: jax.Array,
    *args: Any,
    fsdp: bool = False,
) -> tuple[TrainState, Any]:
    """The first train state, initialised in place on `mesh` as `rules` lay it out.

    Args:
      init_params: `(rng, *args) -> params`.
      tx: the optimizer (its state is laid out like the parameters it follows).
      mesh, rules: the mesh and `(regex, PartitionSpec)` rules (`sharding.tree_shardings`).
      fsdp: also split every leaf over the `data` axis (`sharding.tree_shardings`).
      rng: initialises the parameters.
      step_rng: the state's `rng`, folded with the step number for every step's key.
      *args: passed to `init_params` as jit arguments (e.g. loaded weights), never baked
        into the program as constants.

    Returns:
      `(state, state_shardings)`.
    """

    def init(rng, *args):
        params = init_params(rng, *args)
        return TrainState(
            step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), rng=step_rng
        )

    shardings = sharding.tree_shardings(jax.eval_shape(init, rng, *args), mesh, rules, fsdp)
    return jax.jit(init, out_shardings=shardings)(rng, *args), shardings


def compile_step(
    loss_fn: Callable[[Any, dict, jax.Array], jax.Array],
    tx: optax.GradientTransformation,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Callable:
    """The loop's step: `make_train_step` jitted with the state donated and kept in
    `state_shardings`, the batch split over the mesh's `data` axis, metrics replicated.
    The speed benchmarks time this same function."""
    return jax.jit(
        make_train_step(loss_fn, tx),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def compile_steps(
    loss_fn: Callable[[Any, dict, jax.Array], jax.Array],
    tx: optax.GradientTransformation,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Callable:
    """Several steps in one call: `(state, batches) -> (state, metrics)`, a `lax.scan` of
    `make_train_step` over batches stacked on a leading step axis (`[steps, batch, ...]`,
    the batch axis split over `data`); metrics come back stacked, `[steps]` each.

    Keras's `steps_per_execution`: a small model's step takes the device less time than
    the host takes to dispatch it, so the host dispatches once for `steps` steps and
    copies their batches in one transfer per array."""
    step = make_train_step(loss_fn, tx)
    return jax.jit(
        lambda state, batches: jax.lax.scan(step, state, batches),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh, axis=1)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def call_starts(first: int, num_steps: int, steps_per_call: int, every: Sequence[int]):
    """Where each call of the training loop starts: `steps_per_call` steps a call, from
    `first` and again from every multiple of `every` (log, evaluation, checkpoint), with
    the call before such a multiple (or `num_steps`) cut short to end on it.

    Returns:
      `[calls + 1]` int64: call `i` runs steps `starts[i], ..., starts[i + 1] - 1`.
    """
    bounds = [np.arange((first // e + 1) * e, num_steps, e) for e in every]
    bounds = np.unique(np.concatenate([[first, num_steps], *bounds]))
    segments = [
        np.arange(a, b, steps_per_call) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return np.concatenate([*segments, [num_steps]]).astype(np.int64)


def make_mesh(mesh_config: ml_collections.ConfigDict | None) -> jax.sharding.Mesh:
    """The run's mesh from `config.mesh`: `num_devices` (-1 all, 0 or unset one) as
    `(data, model)` with `model` devices on the model axis (default 1: data only).

    Several processes share one mesh over every device of every process."""
    cfg = mesh_config or {}
    given = int(cfg.get("num_devices", 0))
    if jax.process_count() > 1:
        if given not in (0, -1, jax.device_count()):
            raise ValueError(
                f"mesh.num_devices={given}: a {jax.process_count()}-process run uses all "
                f"{jax.device_count()} devices (set -1 or leave it unset)"
            )
        given = jax.device_count()
    return sharding.make_mesh(given or 1, model=int(cfg.get("model", 1)))


class _StepMetrics:
    """Train-step metrics kept on device between syncs; checked for NaN step by step."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, first: int, metrics: dict) -> None:
        """Metrics of the step that completes `first` steps: scalars; or of the steps
        that complete `first, first + 1, ...`: `[steps]` arrays (`compile_steps`)."""
        self.pending.append((first, metrics))

    def sync(self) -> None:
        """Fetches pending metrics; raises `TrainingDiverged` naming the first bad step."""
        if not self.pending:
            return
        names = list(self.pending[0][1])
        stacked_steps = jnp.ndim(self.pending[0][1][names[0]]) == 1
        join = jnp.concatenate if stacked_steps else jnp.stack
        # One copy per metric: fetching every step's scalars one by one costs the host
        # more than the steps of a small model.
        values = jax.device_get({k: join([m[k] for _, m in self.pending]) for k in names})
        steps = [
            first + i
            for first, m in self.pending
            for i in range(len(m[names[0]]) if stacked_steps else 1)
        ]
        self.pending = []
        for i, step in enumerate(steps):
            m = {k: values[k][i] for k in names}
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


def _stack(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Host batches stacked on a new leading step axis."""
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _place(
    batch: dict[str, np.ndarray], mesh, global_size: int, is_global: bool, axis: int = 0
) -> dict:
    """The host batch on the mesh, split over `data` along `axis`: the global batch (each
    process places its devices' rows) or this process's rows of it."""
    if is_global:
        return sharding.put_global_batch(batch, mesh, axis)
    return sharding.put_batch(batch, mesh, global_size, axis)


def check(config: ml_collections.ConfigDict) -> tasks.Task:
    """The checks a config passes before anything runs or is written: its keys, value
    ranges and optional sections (quant, sparsity). Returns the config's task.

    Raises:
      ValueError: one line naming the first key that is unknown, missing or out of range.
    """
    task = tasks.get(config)
    task.validate(config)
    quantization.from_config(config.get("quant"))
    sparsity.from_config(config.get("sparsity"))
    return task


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> dict[str, Any]:
    """Trains the model described by `config`, evaluates it and writes `workdir`.

    Rerunning with the same workdir resumes from the newest checkpoint.

    Args:
      config: the experiment config (see `configs/`); `config.task` picks the task
        (default "ranking").
      workdir: output folder: `config.json`, `metrics.jsonl`, `tensorboard/`,
        `checkpoints/`, `best/`, `results.json` and the task's own files (e.g.
        `feature_transform.json`, `served/`, `compression.json`). It belongs to one run
        (`rankjax.workdir`): locked while the run lasts, and resumed only with the config
        that made it.
      allow_config_change: resume a workdir made by a different config.

    Returns:
      The contents of `results.json`.

    Raises:
      workdir.WorkdirError: another run holds `workdir`, or it was made by another config.
    """
    task = check(config)
    lead = jax.process_index() == 0
    plain = json.loads(config.to_json_best_effort())
    with workdir_lib.claim(workdir, plain, lead, allow_config_change):
        if lead:  # with the versions, device and commit that run it
            recorded = {**plain, "provenance": provenance.provenance()}
            checkpoint.write_json(os.path.join(workdir, "config.json"), recorded)
        return _train(task, config, workdir, lead)


def _train(task, config: ml_collections.ConfigDict, workdir: str, lead: bool) -> dict[str, Any]:
    """`train_and_evaluate`'s run, in a claimed workdir."""
    tcfg = config.train
    num_steps, batch_size = int(tcfg.num_steps), int(tcfg.batch_size)
    mesh = make_mesh(config.get("mesh"))
    sharding.check_divisible(batch_size, mesh)
    run = task.setup(config, mesh, workdir)
    logging.info("%s | %d device(s) %s", run.describe, mesh.size, dict(mesh.shape))

    tx, lr_schedule = optim.make(config.optim, num_steps)
    sparsifier = sparsity.from_config(config.get("sparsity"))
    if sparsifier is not None:
        tx = sparsifier.wrap_optax(tx)  # masks live in the optimizer state

    rng = jax.random.PRNGKey(int(config.seed))
    rules = [tuple(r) for r in (config.get("mesh") or {}).get("rules", ())] + list(run.rules)
    fsdp = bool((config.get("mesh") or {}).get("fsdp", False))
    state, state_shardings = init_state(
        run.init, tx, mesh, rules, rng, run.rng, run.loaded, fsdp=fsdp
    )
    memory = {
        "params_bytes_per_device": sharding.bytes_per_device(state.params),
        "opt_state_bytes_per_device": sharding.bytes_per_device(state.opt_state),
        "params_bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params)),
        "opt_state_bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state)),
    }
    logging.info(
        "train state per device: parameters %.2f MB, optimizer %.2f MB (of %.2f and %.2f MB)",
        *(memory[k] / 1e6 for k in memory),
    )
    quantizer = quantization.from_config(config.get("quant"))
    if quantizer is not None:
        quantizer.check_selects(state.params)
    ckpt = checkpoint.Checkpointer(
        workdir,
        every=int(config.ckpt.every),
        keep=int(config.ckpt.keep),
        best_metric=config.ckpt.get("best_metric", ""),
        best_mode=config.ckpt.get("best_mode", "max"),
    )
    state, restored = ckpt.restore_or_init(state)
    if restored is not None:
        logging.info("resumed from %s/checkpoints at step %d", workdir, restored)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    logging.info("model %s: %d parameters", config.model.name, n_params)

    steps_per_call = int(tcfg.get("steps_per_call", 1))
    if steps_per_call == 1:
        train_step = compile_step(run.loss, tx, state_shardings, mesh)
    else:
        train_step = compile_steps(run.loss, tx, state_shardings, mesh)
    writer = MetricWriter(workdir, resume_step=restored)
    step_metrics = _StepMetrics()
    multi_process = jax.process_count() > 1
    # XLA:CPU runs every device of a mesh on one shared thread pool. With several steps
    # in flight, independent collectives of a (data, model) program can take all its
    # threads and wait for a device that has none left (a rendezvous timeout abort, in
    # about one run in four on 2 cores), so CPU meshes dispatch one step at a time.
    one_in_flight = mesh.size > 1 and mesh.devices.flat[0].platform == "cpu"
    t_last, steps_since = time.perf_counter(), 0
    steps_bar = progress.bar(num_steps, int(state.step), lead)
    first = int(state.step)
    every = (int(tcfg.log_every), int(tcfg.eval_every), ckpt.every)
    starts = call_starts(first, num_steps, steps_per_call, every)

    def call_batches(i: int) -> dict:
        """The batches of call `i`, on the devices: one step's, or its steps' stacked."""
        steps = range(starts[i], starts[i + 1])
        if steps_per_call == 1:
            return _place(run.batches(steps[0]), mesh, batch_size, run.global_batches)
        stacked = _stack([run.batches(s) for s in steps])
        return _place(stacked, mesh, batch_size, run.global_batches, axis=1)

    # Batches are built and placed on the devices by the pipeline's threads (with
    # threads), so the loop below only dispatches steps: copying a batch to the devices
    # costs the host about as much as building it.
    batches_ahead = feed.batches_from(
        call_batches,
        0,
        len(starts) - 1,
        threads=int(tcfg.get("input_threads", feed.DEFAULT_THREADS)),
        prefetch=int(tcfg.get("prefetch", feed.DEFAULT_PREFETCH)),
    )
    try:
        with preemption.SigtermFlag() as sigterm:
            for step, done, batch in zip(starts[:-1], starts[1:], batches_ahead, strict=True):
                step, done = int(step), int(done)  # done: steps completed after this call
                state, m = train_step(state, batch)
                if one_in_flight:
                    jax.block_until_ready(m)
                step_metrics.add(step + 1, m)
                steps_since += done - step
                steps_bar.update(done - step)
                is_log = done % int(tcfg.log_every) == 0 or done == num_steps
                is_eval = done % int(tcfg.eval_every) == 0 or done == num_steps
                is_ckpt = done % ckpt.every == 0 or done == num_steps
                boundary = is_log or is_eval or is_ckpt
                # Processes must agree on stopping; a single process checks every call.
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
                    values = {
                        **step_metrics.means(),
                        "learning_rate": float(lr_schedule(done)),
                        "examples_per_sec": steps_since * batch_size / elapsed,
                    }
                    _log_step(done, num_steps, values, elapsed / steps_since)
                    steps_bar.set_postfix(loss=f"{values['loss']:.4f}")
                    writer.write(done, "train", values)
                    t_last, steps_since = time.perf_counter(), 0
                if is_eval:
                    valid = run.evaluate(state.params, "valid")
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
        steps_bar.close()
        close = getattr(batches_ahead, "close", None)
        if close is not None:  # stops the input threads of a run that ends early
            close()
        ckpt.wait()
        writer.close()

    # The best parameters by validation metric (else the last).
    params, params_from = state.params, f"last (step {int(state.step)})"
    best = None
    try:
        best = ckpt.restore_best(state.params) if config.ckpt.get("use_best", True) else None
    except checkpoint.CheckpointError as e:  # a bit flip must not change the reported model
        logging.warning("%s; evaluating the last parameters instead", e)
        params_from += f"; the best checkpoint failed its checksums: {e}"
    if best is not None:
        params, params_from = best, f"best {ckpt.best_metric} (step {ckpt.best_step()})"
    ckpt.close()
    results: dict[str, Any] = {
        "step": int(state.step),
        "params": params_from,
        "mesh": dict(mesh.shape),
        "sharded": sorted(
            sharding.path_str(path)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)
            if any(getattr(leaf.sharding, "spec", ()))
        ),
    }
    if sparsifier is not None:
        results["sparsity"] = sparsity.measured(params, sparsifier)
        logging.info("sparsity of the pruned kernels: %s", results["sparsity"])
    results.update(run.finish(params, params_from))
    results["memory"] = memory  # parameter and optimizer bytes, per device and in all
    results["provenance"] = provenance.provenance()  # versions, device, git commit
    if lead:
        checkpoint.write_json(os.path.join(workdir, "results.json"), results)
        final = MetricWriter(workdir, resume_step=int(state.step), purge=False)
        try:  # the final metrics and the config, for TensorBoard's scalars and HParams
            final.write_final(int(state.step), results, flat_hparams(config.to_dict()))
        finally:
            final.close()
    return results


def _log_step(done: int, num_steps: int, values: dict[str, float], per_step: float) -> None:
    eta = (num_steps - done) * per_step
    logging.info(
        "step %d/%d | loss %.4f | grad_norm %.3f | lr %.2e | %.0f examples/s | ETA %s",
        done,
        num_steps,
        values["loss"],
        values["grad_norm"],
        values["learning_rate"],
        values["examples_per_sec"],
        time.strftime("%H:%M:%S", time.gmtime(eta)),
    )


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in values.items())
