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

    def __init__(self, workdir: str):
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._enabled:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl has everything
                logging.warning("tensorboardX is not installed; no TensorBoard event files")
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
