"""Writes training and evaluation events: `metrics.jsonl`, TensorBoard and the log.

Only process 0 writes, so a multi-process run leaves one copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
from absl import logging


class MetricWriter:
    """Appends one JSON object per event to `workdir/metrics.jsonl` and mirrors scalars to
    TensorBoard event files in `workdir/tensorboard/`."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        """Opens the writers; `resume_step` drops events logged after that step by a run
        that was killed before its next checkpoint, so a resumed run logs them once."""
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            _truncate_after(path, resume_step or 0)
            self._jsonl = open(path, "a", encoding="utf-8")
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl has everything
                logging.warning("tensorboardX is not installed; no TensorBoard event files")
            else:
                self._tb = SummaryWriter(
                    os.path.join(workdir, "tensorboard"), purge_step=resume_step
                )

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """Records `values` for `split` (e.g. "train", "valid") at `step`."""
        if not self._enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                # TensorBoard tags may not contain '@'.
                tag = f"{split}/{k}".replace("@", "_at_")
                self._tb.add_scalar(tag, float(v), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _truncate_after(path: str, step: int) -> None:
    """Rewrites `path` atomically without records of steps after `step` (and torn lines)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut short
            if record.get("step", 0) <= step:
                kept.append(json.dumps(record) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
