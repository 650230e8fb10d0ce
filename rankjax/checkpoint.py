"""Checkpoints with orbax's CheckpointManager: periodic, keep-N, keep-best, restore-or-init.

Two managers live under the workdir:

* `checkpoints/`: the full train state every `every` steps, the newest `keep` kept; a rerun
  of the same command restores the newest and continues.
* `best/`: the parameters with the best validation metric so far (one kept).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed while saving never leaves a half-written checkpoint that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from rankjax import files, integrity


class _DropOrbaxInfo(logging.Filter):
    """Orbax logs several INFO lines per save and restore; keep its warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logs() -> None:
    """Drops orbax's INFO records from the absl logger (idempotent)."""
    logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _DropOrbaxInfo) for f in logger.filters):
        logger.addFilter(_DropOrbaxInfo())


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into its layout."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be restored, or one failed its checksum."""


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
    return os.path.join(str(manager.directory), str(step))


def _seal_finished(manager: ocp.CheckpointManager) -> None:
    """Seals (`rankjax.integrity`) every finished step of `manager` not sealed yet; call
    after its saves have finished. Process 0 writes the manifests."""
    if jax.process_index() != 0:
        return
    for step in manager.all_steps():
        folder = _step_dir(manager, step)
        if os.path.isdir(folder) and not integrity.is_sealed(folder):
            integrity.seal(folder)


def set_aside_unfinished(folder: str) -> None:
    """Renames step folders of `folder` that orbax never finished (`<step>` without its
    `_CHECKPOINT_METADATA`: made by hand, or left by a copy cut short) to
    `<step>.unfinished`, with a warning naming each: a manager that lists such a step
    fails to restore every step. Orbax's own interrupted saves are `*.orbax-checkpoint-tmp*`
    folders, which it ignores.

    Raises:
      CheckpointError: `folder` exists and is not a folder.
    """
    if not os.path.lexists(folder):
        return
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder} is not a folder (checkpoints go there); move it away")
    if jax.process_index() != 0:
        return
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.isdigit() or not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
            continue
        aside = f"{path}.unfinished"
        while os.path.lexists(aside):
            aside += "_"
        os.rename(path, aside)
        absl_logging.warning(
            "checkpoint folder %s was never finished (no _CHECKPOINT_METADATA); moved to %s",
            path,
            aside,
        )


def verify_step(folder: str, step: int) -> None:
    """Raises `CheckpointError` naming the file when step `step` of the manager folder
    `folder` fails its checksums."""
    path = os.path.join(folder, str(step))
    problem = integrity.verify(path)
    if problem:
        raise CheckpointError(f"checkpoint step {step} is corrupted: {problem}")
    if not integrity.is_sealed(path):
        # Sealed after the next save or at the end: a run killed in between leaves the
        # newest step without checksums. Orbax's own checks still apply.
        absl_logging.warning("checkpoint %s has no checksums to verify; restoring it as is", path)


class Checkpointer:
    """Saves and restores the train state and the best parameters of a run.

    Args:
      workdir: the run's folder.
      every: save the train state every this many steps (and at the end).
      keep: how many train-state checkpoints to keep.
      best_metric: validation metric that selects `best/`; empty disables it.
      best_mode: `"max"` or `"min"`.
    """

    def __init__(
        self,
        workdir: str,
        *,
        every: int,
        keep: int = 2,
        best_metric: str = "",
        best_mode: str = "max",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"ckpt.best_mode={best_mode!r}; valid: ['max', 'min']")
        quiet_orbax_logs()
        self.every = every
        self.best_metric = best_metric
        for sub in ("checkpoints", "best"):
            set_aside_unfinished(os.path.join(os.path.abspath(workdir), sub))
        if jax.process_count() > 1:  # every process sees the folders process 0 renamed
            multihost_utils.sync_global_devices("rankjax_checkpoint_folders")
        self._latest = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), "checkpoints"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="latest"
                ),
            ),
        )
        self._best = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                os.path.join(os.path.abspath(workdir), "best"),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1,
                    best_fn=lambda m: m[best_metric],
                    best_mode=best_mode,
                    keep_checkpoints_without_metrics=False,
                    create=True,
                    # Two managers may save the same step at once: in a multi-process run
                    # their cross-process barriers must not share names.
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix="best"
                    ),
                ),
            )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def restore_or_init(self, init_state: Any) -> tuple[Any, int | None]:
        """Restores the newest readable train state into `init_state`'s structure and layout.

        A checkpoint that cannot be read (a file deleted or truncated after it was written)
        or fails its checksums (`rankjax.integrity`) is skipped with a warning naming the
        file, and the one before it is tried.

        Args:
          init_state: a freshly initialised state (returned as is if nothing is saved).

        Returns:
          `(state, restored_step)`, `restored_step` None when starting fresh.

        Raises:
          CheckpointError: checkpoints exist but none of them can be read.
        """
        steps = sorted(self._latest.all_steps(), reverse=True)
        errors = []
        for step in steps:
            try:
                verify_step(str(self._latest.directory), step)
                state = self._latest.restore(
                    step, args=ocp.args.StandardRestore(_abstract(init_state))
                )
            except Exception as e:  # noqa: BLE001 - any failure means "unreadable"
                errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
                absl_logging.warning(
                    "checkpoint at step %d in %s is unreadable (%s); trying an older one",
                    step,
                    self._latest.directory,
                    errors[-1],
                )
                continue
            return state, step
        if steps:
            raise CheckpointError(
                f"no checkpoint in {self._latest.directory} can be read: {'; '.join(errors)}. "
                "Move the folder away to start afresh."
            )
        return init_state, None

    def save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Saves the train state if `step` is a multiple of `every` (or `force`)."""
        if not force and step % self.every:
            return False
        if step in self._latest.all_steps():
            return False
        # The previous save (asynchronous) has long finished by now: checksum it.
        self._latest.wait_until_finished()
        _seal_finished(self._latest)
        return self._latest.save(step, args=ocp.args.StandardSave(state), force=True)

    def save_best(self, step: int, params: Any, metrics: dict[str, float]) -> None:
        """Offers `params` evaluated at `step`; kept only if `best_metric` improved."""
        if self._best is None:
            return
        if self.best_metric not in metrics:
            raise KeyError(
                f"ckpt.best_metric={self.best_metric!r} is not among the evaluated metrics "
                f"{sorted(metrics)}"
            )
        if step in self._best.all_steps():
            return  # a resumed run re-evaluating a step it already offered
        self._best.wait_until_finished()
        _seal_finished(self._best)
        self._best.save(
            step,
            args=ocp.args.StandardSave(params),
            metrics={k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def best_step(self) -> int | None:
        return None if self._best is None else self._best.best_step()

    def restore_best(self, params_like: Any) -> Any | None:
        """The best parameters (in `params_like`'s layout), or None if none were saved.

        Raises:
          CheckpointError: the best checkpoint fails its checksums (the file named).
        """
        step = self.best_step()
        if step is None:
            return None
        verify_step(str(self._best.directory), step)
        return self._best.restore(step, args=ocp.args.StandardRestore(_abstract(params_like)))

    def wait(self) -> None:
        """Blocks until asynchronous saves have finished, and checksums them."""
        for manager in (self._latest, self._best):
            if manager is not None:
                manager.wait_until_finished()
                _seal_finished(manager)

    def close(self) -> None:
        self._latest.close()
        if self._best is not None:
            self._best.close()


def save_tree(path: str, tree: Any) -> None:
    """Saves one pytree to `path` atomically (orbax writes a temporary folder, then renames).

    An existing folder is replaced, so re-running a finished experiment rewrites it.
    """
    quiet_orbax_logs()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), tree, force=True)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        integrity.seal(path)


def restore_here(folder: str, step: int) -> Any:
    """Checkpoint `step` of the manager folder `folder`, every array placed on this
    process's first device whatever devices saved it (a run trained on 8 GPUs loads on a
    laptop; restoring without a target would ask for the saving topology)."""
    quiet_orbax_logs()
    verify_step(folder, step)
    manager = ocp.CheckpointManager(folder, item_handlers=ocp.StandardCheckpointHandler())
    try:
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
            manager.item_metadata(step),
        )
        return manager.restore(step, args=ocp.args.StandardRestore(target))
    finally:
        manager.close()


def load_tree(path: str) -> Any:
    """Restores a pytree saved by `save_tree`, with the dtypes it was saved with.

    Raises:
      CheckpointError: the folder fails its checksums (the file named).
    """
    problem = integrity.verify(path)
    if problem:
        raise CheckpointError(f"{path} is corrupted: {problem}")
    quiet_orbax_logs()
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path))


def write_json(path: str, obj: Any) -> None:
    """Writes JSON atomically, not through a link: a reader never sees a half-written
    file (`rankjax.files`)."""
    files.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))
