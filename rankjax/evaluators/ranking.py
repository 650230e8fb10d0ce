"""Ranking evaluation of a split (`evals` type `ranking`): every list, padded not
truncated, metrics summed exactly.

Options of an `evals` entry of this type: `metrics`, `batch_size` (lists per batch),
`no_relevant` and `gain` (conventions, `rankjax.metrics`), `min_list_size`, and for the
ranking task's report `report` (the printed columns), `calibrate_rmse` (`(low, high)`:
adds `rmse_calibrated`) and `baselines` (`rankjax.baselines` names, scored beside the
model).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rankjax import distributed, sharding
from rankjax import metrics as metrics_lib
from rankjax.data.batches import eval_batches, pad_batch_count, pad_list_axis, pad_lists
from rankjax.data.dataset import RankingDataset
from rankjax.types import ScoreFn


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
      min_list_size: ranking metrics (not RMSE or pairwise accuracy) count only lists of
        at least this many items (e.g. NDCG@5 on queries with >= 5 products).
      prepare: applied to each host batch once (e.g. `tokens.trim_token_axes`).
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
        min_list_size: int = 1,
        prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    ):
        for name in metrics:
            metrics_lib.parse_metric(name)
        self.dataset = dataset
        self.mesh = mesh
        self.batch_size = batch_size
        sharding.check_divisible(batch_size, mesh)
        local = batch_size * mesh.local_mesh.size // mesh.size
        batches = agree_across_processes(eval_batches(dataset, local), dataset, local)
        batches = [prepare(b) for b in batches] if prepare else batches
        self.batches = [
            {**b, "batch_index": np.full(len(b["where"]), i, np.int32)}
            for i, b in enumerate(batches)
        ]
        self.metrics = tuple(metrics)
        self._sums = functools.partial(
            _sums_and_nonfinite, no_relevant=no_relevant, gain=gain, min_list_size=min_list_size
        )

    def run(self, score_fn: ScoreFn, metrics: Sequence[str] | None = None) -> dict[str, float]:
        """Scores every batch with `score_fn` and returns `{metric: value}`.

        Args:
          score_fn: `device batch -> [batch, list_size]` scores.
          metrics: a subset to compute; None: the evaluator's metrics.

        Raises:
          FloatingPointError: if a score of a valid item is NaN or infinite.
        """
        acc = metrics_lib.MetricAccumulator()
        nonfinite = 0
        metrics = self.metrics if metrics is None else tuple(metrics)
        for host_batch in self.batches:
            batch = sharding.put_batch(host_batch, self.mesh, self.batch_size)
            sums, bad = self._sums(
                score_fn(batch), batch["labels"], batch["where"], metrics=metrics
            )
            acc.update(sums)
            nonfinite += int(bad)
        if nonfinite:
            raise FloatingPointError(
                f"{nonfinite} scores on {self.dataset.source} are NaN or infinite"
            )
        return acc.result()

    def linear_fit(self, score_fn: ScoreFn) -> tuple[float, float]:
        """Least-squares `(a, b)` with `a * score + b` closest to the labels over all items
        (the calibration behind `calibrated_rmse`); `(0, mean label)` for constant scores."""
        total = np.zeros(5, np.float64)  # n, sum s, sum y, sum s^2, sum s*y
        for host_batch in self.batches:
            batch = sharding.put_batch(host_batch, self.mesh, self.batch_size)
            total += np.asarray(_fit_sums(score_fn(batch), batch["labels"], batch["where"]))
        n, s, y, ss, sy = total
        if n == 0:
            raise ValueError(f"{self.dataset.source}: no items to calibrate scores on")
        var = ss / n - (s / n) ** 2
        if var <= 1e-12 * max(1.0, ss / n):
            return 0.0, float(y / n)
        a = (sy / n - (s / n) * (y / n)) / var
        return float(a), float(y / n - a * s / n)


@jax.jit
def _fit_sums(scores, labels, where):
    s = jnp.where(where, scores, 0.0).astype(jnp.float32)
    y = jnp.where(where, labels, 0.0).astype(jnp.float32)
    return jnp.stack([jnp.sum(where), s.sum(), y.sum(), (s * s).sum(), (s * y).sum()])


def calibrated_rmse(
    score_fn: ScoreFn,
    fit_on: RankingEvaluator,
    evaluate_on: RankingEvaluator,
    label_range: tuple[float, float],
) -> float:
    """RMSE of scores mapped to labels: `clip(a * score + b, *label_range)`, with `(a, b)`
    fitted by least squares on `fit_on` (validation) and the RMSE taken on `evaluate_on`.

    A ranker trained with a listwise loss has scores on no particular scale; this is the
    RMSE it reaches once mapped onto the label scale (e.g. Home Depot's [1, 3]).
    """
    a, b = fit_on.linear_fit(score_fn)
    low, high = label_range

    def mapped(batch):
        return jnp.clip(a * score_fn(batch) + b, low, high)

    return evaluate_on.run(mapped, metrics=("rmse",))["rmse"]


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


@functools.partial(jax.jit, static_argnames=("metrics", "no_relevant", "gain", "min_list_size"))
def _sums_and_nonfinite(scores, labels, where, **conventions):
    """`metrics.batch_sums` (metric names and conventions as keywords) and the number of
    non-finite scores on valid items."""
    sums = metrics_lib.batch_sums(scores, labels, where=where, **conventions)
    return sums, jnp.sum(where & ~jnp.isfinite(scores))


def random_scores(seed: int) -> ScoreFn:
    """A random ranker: uniform scores, the same for the same seed and batch."""

    @jax.jit
    def score(batch):
        # Inside jit the scores are one global array, the same in any number of processes.
        key = jax.random.fold_in(jax.random.PRNGKey(seed), batch["batch_index"][0])
        return jax.random.uniform(key, batch["labels"].shape)

    return score


def constant_scores(value: float) -> ScoreFn:
    """Every item scored `value` (ties keep the data's order in each list)."""

    def score(batch):
        return jnp.full(batch["labels"].shape, value, jnp.float32)

    return score


def extra_scores(key: str) -> ScoreFn:
    """Scores precomputed per item and carried by the batches as the extra `key`."""

    def score(batch):
        if key not in batch:
            raise KeyError(f"batch has no per-item extra {key!r} (it has {sorted(batch)})")
        return batch[key]

    return score


def oracle_scores(batch: dict[str, jax.Array]) -> jax.Array:
    """The data's oracle: its `oracle` scores where the data has them, else the labels."""
    return batch["oracle"] if "oracle" in batch else batch["labels"]
