"""Padded batches of lists: training streams that resume exactly, evaluation batches.

Batches are dicts of NumPy arrays with the list axis last but one:

  features [batch, list_size, num_features] float32
  labels   [batch, list_size] float32
  where    [batch, list_size] bool   (False on padding)

plus any per-item extras (e.g. `oracle`) padded the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rankjax.data.dataset import RankingDataset


def pad_lists(
    dataset: RankingDataset,
    list_size: int,
    *,
    item_keys: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Pads (or truncates) every list of `dataset` to `list_size` items.

    Args:
      dataset: the lists.
      list_size: items per padded list.
      item_keys: `[num_items]` random numbers; if given, items are ordered by them within
        each list, so lists longer than `list_size` keep a uniformly random subset
        (training). If None, items keep their order and longer lists keep their first
        `list_size` items (for evaluation use a `list_size` of at least the longest list,
        see `max_list_size`).

    Returns:
      A batch dict: `features [n, list_size, F]`, `labels [n, list_size]`,
      `where [n, list_size]` and each numeric extra `[n, list_size, ...]`; padding is zero.
    """
    sizes = dataset.list_sizes
    if item_keys is None:
        order = np.arange(dataset.num_items)
    else:
        # Sort items by (list, random key): a random permutation within every list.
        order = np.lexsort((item_keys, dataset.item_list_index()))
    pos = np.arange(list_size)
    where = pos[None, :] < np.minimum(sizes, list_size)[:, None]
    flat = dataset.list_offsets[:-1, None] + pos[None, :]
    index = order[np.where(where, flat, 0)] if dataset.num_items else np.zeros_like(flat)
    return _gather(dataset, index, where)


def _gather(dataset: RankingDataset, index: np.ndarray, where: np.ndarray) -> dict:
    """The batch dict of `dataset`'s items at `index [lists, list_size]`: features,
    labels, `where` and each numeric extra, zero where `where` is False."""
    padding = ~where

    def take(a: np.ndarray) -> np.ndarray:
        if a.shape[0] == 0:
            return np.zeros(where.shape + a.shape[1:], a.dtype)
        out = a[index]
        out[padding] = 0  # writes only the padding slots
        return out

    batch = {"features": take(dataset.features), "labels": take(dataset.labels), "where": where}
    for key, value in dataset.extras.items():
        if value.dtype.kind in "biuf":
            batch[key] = take(value)
    return batch


def max_list_size(*datasets: RankingDataset, multiple: int = 8) -> int:
    """The longest list over `datasets`, rounded up to `multiple` (fewer recompilations)."""
    longest = max((int(d.list_sizes.max()) for d in datasets if d.num_lists), default=1)
    return int(-(-longest // multiple) * multiple)


def pad_batch_count(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Appends empty lists (`where` all False) so the leading axis is `batch_size`."""
    n = batch["where"].shape[0]
    if n > batch_size:
        raise ValueError(f"batch has {n} lists, more than batch_size={batch_size}")
    return {
        k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
        for k, v in batch.items()
    }


class TrainBatches:
    """Deterministic, resumable training batches: batch `step` is a pure function of
    `(seed, stream, step)`, so a resumed run sees exactly the data an uninterrupted run sees.

    Each epoch visits every list once in a fresh random order; the last partial batch of an
    epoch is dropped. Items are shuffled within lists and long lists are subsampled.

    Args:
      dataset: the training lists.
      batch_size: lists per batch.
      list_size: items per padded list.
      seed: the training seed.
      stream: tells apart the batch streams of data shards (None: the only stream).
      lengths: `[num_lists]` a length per list (e.g. its longest token sequence); with
        `bucket_batches > 1`, each run of that many batches of the epoch's random order is
        re-sorted by it before being cut into batches (whose order is then shuffled), so a
        batch holds lists of similar length and pads less.
      bucket_batches: batches per sorted run (0 or 1: no bucketing).
    """

    def __init__(
        self,
        dataset: RankingDataset,
        batch_size: int,
        list_size: int,
        seed: int,
        stream: int | None = None,
        lengths: np.ndarray | None = None,
        bucket_batches: int = 0,
    ):
        if dataset.num_lists == 0:
            raise ValueError(f"{dataset.source}: the training split has no lists")
        if dataset.num_lists < batch_size:
            raise ValueError(
                f"{dataset.source}: training split has {dataset.num_lists} lists, fewer than "
                f"{batch_size} per batch; lower train.batch_size"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.list_size = list_size
        self.key = [seed] if stream is None else [seed, 1 << 20, stream]
        self.steps_per_epoch = dataset.num_lists // batch_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        if self.lengths is not None and self.lengths.shape != (dataset.num_lists,):
            raise ValueError(
                f"lengths has shape {self.lengths.shape}, expected ({dataset.num_lists},)"
            )
        self.bucket_batches = bucket_batches
        # (epoch, its order), replaced as one: input threads (`rankjax.data.feed`) build
        # batches of two epochs at once around an epoch's end.
        self._order: tuple[int, np.ndarray] = (-1, np.zeros([0], np.int64))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([*self.key, epoch])
        perm = rng.permutation(self.dataset.num_lists)
        if self.lengths is None or self.bucket_batches <= 1:
            return perm
        run = self.bucket_batches * self.batch_size
        batches = []
        for start in range(0, len(perm), run):
            chunk = perm[start : start + run]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        # Full batches in a random order; a short leftover batch goes last and is dropped.
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) < self.batch_size]
        order = rng.permutation(len(full))
        return np.concatenate([full[i] for i in order] + rest)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """Returns the batch for global training step `step`."""
        epoch, index = divmod(step, self.steps_per_epoch)
        cached_epoch, perm = self._order
        if cached_epoch != epoch:
            perm = self._epoch_order(epoch)
            self._order = (epoch, perm)
        lists = perm[index * self.batch_size : (index + 1) * self.batch_size]
        sizes = self.dataset.list_sizes[lists]
        keys = np.random.default_rng([*self.key, epoch, index, 1]).random(int(sizes.sum()))
        return _padded_shuffled(self.dataset, lists, sizes, keys, self.list_size)


def _padded_shuffled(
    dataset: RankingDataset,
    lists: np.ndarray,
    sizes: np.ndarray,
    keys: np.ndarray,
    list_size: int,
) -> dict[str, np.ndarray]:
    """`pad_lists(dataset.select(lists), list_size, item_keys=keys)`, computed on a
    `[lists, longest]` grid of the selected lists' slots instead: one sort per row and
    one gather per array from the whole dataset. It builds the same batch (keys fill the
    grid in the order `select` concatenates the items) in a fraction of the host time,
    which bounds the training loop of a small model on an accelerator."""
    width = max(int(sizes.max(initial=0)), 1)
    pos = np.arange(width)
    real = pos[None, :] < sizes[:, None]
    grid = np.full(real.shape, np.inf)
    grid[real] = keys
    # Each list's items by their random key (stable, as `lexsort`), padding slots last.
    order = np.argsort(grid, axis=1, kind="stable")
    if width < list_size:
        order = np.pad(order, ((0, 0), (0, list_size - width)))
    order = order[:, :list_size]
    where = np.arange(list_size)[None, :] < np.minimum(sizes, list_size)[:, None]
    index = np.where(where, dataset.list_offsets[lists][:, None] + order, 0)
    return _gather(dataset, index, where)


class ShardedTrainBatches:
    """This process's rows of each global training batch when the data is sharded.

    The global batch holds `batch_size / num_shards` lists from every data shard, drawn by
    that shard's own `TrainBatches` stream; a process builds the rows of the shards it
    read, in shard order. The global batch is therefore the same whichever processes hold
    the shards: one process reading all shards builds exactly what N processes build
    together.

    Args:
      shards: the training lists of this process's shards.
      shard_ids: their indices among all `num_shards` shards.
      num_shards: shards in all processes.
      batch_size: lists per global batch (a multiple of `num_shards`).
      list_size: items per padded list.
      seed: the training seed.
      lengths: per shard, `[num_lists]` lengths for bucketing (see `TrainBatches`).
      bucket_batches: batches per length-sorted run (0: no bucketing).
    """

    def __init__(
        self,
        shards: Sequence[RankingDataset],
        shard_ids: Sequence[int],
        num_shards: int,
        batch_size: int,
        list_size: int,
        seed: int,
        lengths: Sequence[np.ndarray] | None = None,
        bucket_batches: int = 0,
    ):
        if batch_size % num_shards:
            raise ValueError(
                f"train.batch_size={batch_size} must be a multiple of the {num_shards} data "
                "shards (data.shards, by default one per process)"
            )
        self.streams = [
            TrainBatches(
                d,
                batch_size // num_shards,
                list_size,
                seed,
                None if num_shards == 1 else i,
                lengths=None if lengths is None else lengths[k],
                bucket_batches=bucket_batches,
            )
            for k, (d, i) in enumerate(zip(shards, shard_ids, strict=True))
        ]

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        if len(self.streams) == 1:  # no copy of the only shard's batch
            return self.streams[0](step)
        parts = [stream(step) for stream in self.streams]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_batches(dataset: RankingDataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Pads every list of `dataset` into full batches for evaluation, never truncating.

    Lists are grouped by length (shortest first) and each batch is padded to its longest
    list rounded up to a power of two (at least 8): long-tailed list lengths (MSLR's reach
    1,251) cost neither a full-length pad for every list nor a compilation per length.
    Aggregated metrics do not depend on the order of lists.

    Args:
      dataset: the lists to evaluate (this process's, when the data is sharded).
      batch_size: lists per batch; the last batch is filled with empty lists, which every
        metric ignores.
    """
    order = np.argsort(dataset.list_sizes, kind="stable")
    batches = []
    for start in range(0, dataset.num_lists, batch_size):
        chunk = order[start : start + batch_size]
        longest = int(dataset.list_sizes[chunk].max(initial=1))
        list_size = max(8, 1 << (longest - 1).bit_length())
        batch = pad_lists(dataset.select(chunk), list_size)
        batches.append(pad_batch_count(batch, batch_size))
    return batches


def pad_list_axis(batch: dict[str, np.ndarray], list_size: int) -> dict[str, np.ndarray]:
    """Pads the list axis (axis 1) of a padded batch to `list_size` items."""
    out = {}
    for k, v in batch.items():
        pad = [(0, 0), (0, list_size - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
        out[k] = np.pad(v, pad)
    return out
