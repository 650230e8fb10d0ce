"""Training batches built ahead of the step that needs them, by the threads of a `grain`
pipeline (the JAX ecosystem's input library), so the accelerator does not wait on the host.
The trainer's `batches(step)` also places each batch on the devices, so the copy to the
accelerator happens in those threads too and the training loop only dispatches steps.

A task's `batches(step)` is a pure function of the step: each epoch's order is a
permutation seeded by the run's seed and the epoch, and each batch is that order's slice
for the step. The pipeline is therefore a `grain.MapDataset` over step numbers, mapped by
`batches` and read by `num_threads` threads that keep `prefetch` batches ready, in step
order. Its whole iteration state is the step, which the train state already checkpoints:
a resumed run starts the dataset at the restored step and sees the same batches as an
uninterrupted one (exact resume), with no separate iterator checkpoint to keep in step.

`train.input_threads` (default 4; 0 builds each batch in the training loop) and
`train.prefetch` (default 8 calls' batches) set it. Threads suit this work: building a
batch is NumPy indexing and copying, which releases most of the GIL; nothing is pickled to
another process. With `train.steps_per_call = k` the pipeline's items are the stacked
batches of k steps, run by one call of the compiled program: the host's remaining work
per step (placing a batch, dispatching a step, Python) is what bounds a small model on an
accelerator, and k steps a call divide it by k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_THREADS = 4
DEFAULT_PREFETCH = 8
DEFAULT_STEPS_PER_CALL = 1
# The config.train keys that set how batches reach the step (`steps_per_call`: steps run
# by one call of the compiled program, `rankjax.trainer.compile_steps`).
TRAIN_KEYS = ("input_threads", "prefetch", "steps_per_call")


def batches_from(
    batches: Callable[[int], Any],
    start: int,
    stop: int,
    threads: int = DEFAULT_THREADS,
    prefetch: int = DEFAULT_PREFETCH,
) -> Iterator[Any]:
    """The batches of steps `start, ..., stop - 1`, in order.

    Args:
      batches: `step -> batch`, a pure function of the step (safe to call from several
        threads at once).
      start: the first step (the restored one when resuming).
      stop: one past the last step.
      threads: threads building batches ahead; 0 builds each when it is asked for.
      prefetch: batches kept ready ahead of the consumer (with `threads > 0`).

    Returns:
      An iterator of `stop - start` batches; an error raised by `batches` is raised when
      its step's batch is asked for.
    """
    if stop <= start:
        return iter(())
    if threads == 0:
        return (batches(step) for step in range(start, stop))
    import grain  # imported here: only training loops with threads need it

    dataset = grain.MapDataset.range(start, stop).map(batches)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(prefetch, 1))
    return _Batches(iter(dataset.to_iter_dataset(options)))


class _Batches:
    """Grain's iterator, with the note grain adds to errors (about its hidden frames)
    taken off: a batch's error reads as the task raised it."""

    def __init__(self, iterator):
        self._iterator = iterator

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._iterator)
        except Exception as e:
            notes = getattr(e, "__notes__", None)
            if notes:
                e.__notes__ = [n for n in notes if "Grain has removed" not in n]
            raise

    def close(self) -> None:
        """Stops the threads building batches ahead."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
