"""Writes training and evaluation events: `metrics.jsonl`, TensorBoard and the log.

Only process 0 writes, so a multi-process run leaves one copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
from absl import logging

from rankjax import config_args, files


class MetricWriter:
    """Appends one JSON object per event to `workdir/metrics.jsonl` and mirrors scalars to
    TensorBoard event files in `workdir/tensorboard/`."""

    def __init__(self, workdir: str, resume_step: int | None = None, purge: bool = True):
        """Opens the writers; `resume_step` drops events logged after that step by a run
        that was killed before its next checkpoint, so a resumed run logs them once
        (`purge=False`: TensorBoard keeps its events at `resume_step`, for a writer that
        adds to a finished run)."""
        self._enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if self._enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            # A finished run's final records go too: rerunning it writes them again.
            step = resume_step or 0
            _rewrite(path, lambda r: r.get("step", 0) <= step and not _is_final(r))
            self._jsonl = files.open_append(path)
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: metrics.jsonl has everything
                logging.warning("tensorboardX is not installed; no TensorBoard event files")
            else:
                self._tb = SummaryWriter(
                    os.path.join(workdir, "tensorboard"), purge_step=resume_step if purge else None
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

    def write_final(self, step: int, results: Mapping, hparams: Mapping | None = None) -> None:
        """Records a finished run's metrics (`results.json`'s valid, test, test_served, ...
        sections) as splits `final/<section>` at `step`, and in TensorBoard also the
        hyperparameters (`hparams`, e.g. the flattened config) beside them."""
        if not self._enabled:
            return
        sections = {
            name: {k: float(v) for k, v in values.items() if _is_number(v)}
            for name, values in results.items()
            if isinstance(values, Mapping) and any(_is_number(v) for v in values.values())
        }
        for name, values in sections.items():
            self.write(step, f"{FINAL}{name}", values)
        if self._tb is not None and hparams:
            scalars = {
                f"{FINAL}{name}/{k}".replace("@", "_at_"): v
                for name, values in sections.items()
                for k, v in values.items()
            }
            self._tb.add_hparams(dict(hparams), scalars, name="final", global_step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


FINAL = "final/"


def _is_final(record: Mapping) -> bool:
    return str(record.get("split", "")).startswith(FINAL)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flat_hparams(config: Mapping) -> dict[str, int | float | str | bool]:
    """A nested config as TensorBoard hyperparameters: `{"optim.learning_rate": 1e-3, ...}`,
    values that are not numbers, strings or booleans written as strings."""
    scalar = (int, float, str, bool)
    flat = config_args.flatten(config)
    return {k: v if isinstance(v, scalar) else str(v) for k, v in flat.items()}


def _rewrite(path: str, keep) -> None:
    """Rewrites `path` atomically with the records `keep(record)` accepts (torn lines go)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed run may be cut short
            if keep(record):
                kept.append(json.dumps(record) + "\n")
    files.write_atomic(path, "".join(kept))
