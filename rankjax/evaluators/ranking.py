"""Ranking evaluation of a split: every list, padded not truncated, metrics summed exactly."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rankjax import distributed, sharding
from rankjax import metrics as metrics_lib
from rankjax.data.lists import (
    RankingDataset,
    eval_batches,
    pad_batch_count,
    pad_list_axis,
    pad_lists,
)

# (device batch, batch index) -> scores [batch, list_size]
ScoreFn = Callable[[dict[str, jax.Array], int], jax.Array]


class RankingEvaluator:
    """Evaluates scoring functions on one dataset.

    The dataset is padded once into fixed-shape batches (one compilation per list length);
    the last batch is filled with empty lists, which no metric counts. In a multi-process run
    each process holds its own shard of the lists and builds its rows of every global batch
    from them; the processes first agree on the number of batches and their list lengths.

    Args:
      dataset: the lists to evaluate (this process's shard of them).
      mesh: devices to run on; batches are split over its `data` axis.
      batch_size: lists per batch (a multiple of the mesh size).
      metrics: metric names (see `rankjax.metrics`).
      no_relevant: convention for lists without a relevant item.
      gain: NDCG gain, `"exp2"` or `"linear"`.
    """

    def __init__(
        self,
        dataset: RankingDataset,
        *,
        mesh: Mesh,
        batch_size: int,
        metrics: Sequence[str],
        no_relevant: str = "zero",
        gain: str = "exp2",
    ):
        for name in metrics:
            metrics_lib.parse_metric(name)
        self.dataset = dataset
        self.mesh = mesh
        self.batch_size = batch_size
        sharding.check_divisible(batch_size, mesh)
        local = batch_size * mesh.local_mesh.size // mesh.size
        self.batches = agree_across_processes(eval_batches(dataset, local), dataset, local)
        self._sums = jax.jit(
            functools.partial(
                _sums_and_nonfinite,
                metrics=tuple(metrics),
                no_relevant=no_relevant,
                gain=gain,
            )
        )

    def run(self, score_fn: ScoreFn) -> dict[str, float]:
        """Scores every batch with `score_fn` and returns `{metric: value}`.

        Raises:
          FloatingPointError: if a score of a valid item is NaN or infinite.
        """
        acc = metrics_lib.MetricAccumulator()
        nonfinite = 0
        for i, host_batch in enumerate(self.batches):
            batch = sharding.put_batch(host_batch, self.mesh, self.batch_size)
            sums, bad = self._sums(score_fn(batch, i), batch["labels"], batch["where"])
            acc.update(sums)
            nonfinite += int(bad)
        if nonfinite:
            raise FloatingPointError(
                f"{nonfinite} scores on {self.dataset.source} are NaN or infinite"
            )
        return acc.result()


def agree_across_processes(
    batches: list[dict[str, np.ndarray]], dataset: RankingDataset, rows: int
) -> list[dict[str, np.ndarray]]:
    """Gives every process the same number of batches with the same list lengths: the
    shapes of one global batch must agree. Shorter shards get batches of empty lists."""
    if jax.process_count() == 1:
        return batches
    count = int(distributed.allgather(np.array([len(batches)], np.int64)).max())
    lengths = np.zeros(count, np.int64)
    lengths[: len(batches)] = [b["where"].shape[1] for b in batches]
    lengths = distributed.allgather(lengths).max(axis=0)
    out = [pad_list_axis(b, int(n)) for b, n in zip(batches, lengths, strict=False)]
    for n in lengths[len(batches) :]:
        empty = pad_lists(dataset.select(np.zeros([0], np.int64)), int(n))
        out.append(pad_batch_count(empty, rows))
    return out


def _sums_and_nonfinite(scores, labels, where, *, metrics, no_relevant, gain):
    sums = metrics_lib.batch_sums(
        scores, labels, where=where, metrics=metrics, no_relevant=no_relevant, gain=gain
    )
    return sums, jnp.sum(where & ~jnp.isfinite(scores))


def random_scores(seed: int) -> ScoreFn:
    """A random ranker: uniform scores, the same for the same seed and batch."""

    @jax.jit
    def uniform(i, labels):
        # Inside jit the scores are one global array, the same in any number of processes.
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        return jax.random.uniform(key, labels.shape)

    def score(batch, i):
        return uniform(i, batch["labels"])

    return score


def oracle_scores(batch: dict[str, jax.Array], i: int) -> jax.Array:
    """The data's oracle: its `oracle` scores where the data has them, else the labels."""
    del i
    return batch["oracle"] if "oracle" in batch else batch["labels"]
