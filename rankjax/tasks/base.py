"""The contract between the one training loop (`rankjax.trainer`) and a task.

A task (feature or text ranking, two-tower retrieval, DCN, sequential recommendation)
brings only what differs: its config schema, data, model, loss, batches, evaluation and
final evaluation with serving. The loop brings everything else: the train state, the
jitted and donated step, sharding, checkpoints (periodic, keep-best, resume), SIGTERM
preemption, the NaN stop, logs and `results.json`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

Params = Any
Batch = dict[str, np.ndarray]


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
    loss: Callable[[Params, dict, jax.Array], jax.Array]
    batches: Callable[[int], Batch]
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
