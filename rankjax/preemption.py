"""SIGTERM-aware training: finish the step, write a checkpoint, then stop.

Cluster schedulers (SLURM, Kubernetes, preemptible cloud VMs) send SIGTERM some seconds
before they kill a job. `SigtermFlag` records the signal instead of dying, and the trainer
checks it between steps, saves the train state and raises `Preempted`; rerunning the same
command resumes from that checkpoint. SIGKILL cannot be caught: a rerun then resumes from
the last complete periodic checkpoint.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging


class Preempted(Exception):  # noqa: N818 - the name says what happened, like KeyboardInterrupt
    """Training stopped on SIGTERM after saving a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint_dir: str):
        super().__init__(
            f"stopped by SIGTERM after step {step}; the train state is saved in "
            f"{checkpoint_dir}: rerun the same command to resume"
        )
        self.step = step


class SigtermFlag:
    """Context manager that turns SIGTERM into a flag while it is active.

    Outside the main thread (where Python cannot install signal handlers) it is inert.
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def _handler(self, signum, frame):
        del signum, frame
        if not self._flag:
            logging.warning("SIGTERM received: checkpointing after this step, then stopping")
        self._flag = True

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    @property
    def local(self) -> bool:
        """Whether this process received SIGTERM."""
        return self._flag

    def anywhere(self) -> bool:
        """Whether any process received SIGTERM (a collective: every process must call it)."""
        if jax.process_count() == 1:
            return self._flag
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
        return bool(np.any(flags))
