"""The contracts between rankjax's rooms: the trainer, tasks, models, seams and evaluators.

* `Batch` / `HostBatch`: a batch as named arrays, list axis last but one for rankers
  (`features [batch, list_size, F]`, `labels` and `where [batch, list_size]`), per example
  for recommenders (`users`, `items`, histories).
* `LossFn`: `(params, batch, rng) -> scalar`, what a task gives the one training loop.
* `Seam`: how low precision reaches a model: called once per layer with the layer's path,
  it returns a `lax.dot_general`-compatible callable (a function or a flax module such as
  AQT's) or None to stay in float. Models learn about quantization only through it.
* `ScoreFn`: `batch -> scores`, the one scorer signature every evaluator calls.
* `Evaluator`: `run(score_fn) -> {metric: value}` on the data it was built for.
* `Task` and `Run`: a kind of training and one run of it, set up on its mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

Params = Any
Batch = Mapping[str, jax.Array]
HostBatch = dict[str, np.ndarray]


class LossFn(Protocol):
    """A task's training loss, traceable."""

    def __call__(self, params: Params, batch: Batch, rng: jax.Array) -> jax.Array:
        """Scalar loss of `batch`; `rng` is the step's key (dropout, sampled negatives)."""


class Seam(Protocol):
    """The dense-layer seam (`models.layers.Dense` calls it once per layer).

    A seam may also carry, read with `getattr` by models that fuse around it:
    `served(module, *path) -> dict | None` (a served fp8 layer's frozen e4m3 kernel and
    scales) and `flat_tokens: bool` (products may run on `[tokens, features]`).
    """

    def __call__(self, path: str) -> Callable[..., jax.Array] | None:
        """The `dot_general` of the layer at `path` (e.g. "Encoder_0/query"), or None."""


class ScoreFn(Protocol):
    """Scores a batch's candidates; what every evaluator calls.

    The batch says what to score:

    * lists (`RankingEvaluator`): `features` or `tokens`, `labels`, `where` `[batch,
      list_size]` and `batch_index` `[batch]` (the batch's position in the split, so a
      random scorer can draw the same numbers for the same batch) -> `[batch, list_size]`;
    * a user's chosen items: `users [n]`, `items [n, K]` -> `[n, K]`;
    * the whole catalog: `users [n]` and no `items` -> `[n, num_items]`.
    """

    def __call__(self, batch: Batch) -> jax.Array:
        """Scores, higher is better."""


class Evaluator(Protocol):
    """Metrics of a scorer on the data the evaluator was built for (one split).

    Attributes:
      metrics: the names `run` returns (`rankjax.metrics` names).
    """

    metrics: tuple[str, ...]

    def run(self, score_fn: ScoreFn) -> dict[str, float]:
        """Scores every batch of the split with `score_fn` and aggregates exactly."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a task, set up on its mesh: what the loop calls.

    Attributes:
      init: `(rng, loaded) -> params`, traceable: fresh parameters with `loaded` (host
        arrays: pretrained or teacher weights, or None) put in place.
      loaded: the weights `init` overlays, or None.
      loss: `(params, batch, rng) -> scalar`, traceable; `rng` is the step's key (dropout,
        sampled negatives): `fold_in(rng, step)` of the state's key.
      batches: `step -> batch`, a pure function of (seed, step), as host arrays.
      global_batches: whether `batches` gives the whole global batch on every process
        (each places its devices' rows), or only this process's rows.
      evaluate: `(params, split) -> {metric: value}` on "valid" (during training) or "test".
      finish: `(params, params_from) -> results` once training ends, with the chosen
        parameters (best or last, on the mesh; `params_from` says which): final metrics,
        the served model saved and evaluated as loaded, baselines; it prints the run's
        table. The loop adds `step`, `params`, `mesh` and `sparsity` and writes
        `results.json`.
      rng: the root of the per-step keys (kept in the train state).
      rules: `[(regex, PartitionSpec axes)]` laid over the mesh for the train state, after
        the config's `mesh.rules`.
      describe: one log line about the data and model.
    """

    init: Callable[[jax.Array, Any], Params]
    loss: LossFn
    batches: Callable[[int], HostBatch]
    evaluate: Callable[[Params, str], dict[str, float]]
    finish: Callable[[Params, str], dict[str, Any]]
    rng: jax.Array
    loaded: Any = None
    global_batches: bool = False
    rules: Sequence[tuple[str, Sequence]] = ()
    describe: str = ""


class Task(Protocol):
    """A kind of training, chosen by `config.task` (see `rankjax.tasks.get`)."""

    name: str

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """Raises ValueError naming the first unknown, missing or inconsistent key."""

    def setup(self, config: ml_collections.ConfigDict, mesh: Mesh, workdir: str) -> Run:
        """Loads the data, builds the model and returns the run's parts."""
