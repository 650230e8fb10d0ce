"""A workdir belongs to one run: one process at a time, one config.

`claim(workdir, config)` is held for the whole of a run:

* **lock**: an exclusive `flock` on `workdir/.rankjax.lock`, which records the holder's
  process id, host and start time; a second run into the same folder fails at once with a
  one-line `WorkdirError` naming the holder (the lock goes with the process, so a killed run
  leaves nothing to clean up);
* **one config**: the folder's `config.json` is the config that made it. A rerun resumes only
  with the same config, up to the keys that may change when a run is extended
  (`RESUMABLE`, e.g. `train.num_steps`); a different config is refused, naming the first
  differences, before anything in the folder is written. `allow_config_change=True`
  (`--allow_config_change`) accepts a deliberate change. A workdir whose run stopped
  before saving a step or a result (a data or config error) is taken over by a rerun with
  a corrected config;
* **no writes through links**: the write probe and every file a run writes use
  `rankjax.files`, which neither follows nor writes through a symbolic link.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator, Mapping

from absl import logging

from rankjax import config_args, files

LOCK = ".rankjax.lock"
# Keys that may differ between a workdir's config and a rerun that resumes it: training
# longer, logging, evaluating and checkpointing at another rhythm, another device count.
RESUMABLE = (
    "provenance",  # the versions and commit config.json records: a record, not a setting
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.input_threads",  # how batches are built, not which
    "train.prefetch",
    "train.steps_per_call",
    "ckpt.every",
    "ckpt.keep",
    "mesh.num_devices",
)


# No space left on the device, or the user's disk quota is spent.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(e: OSError, workdir: str) -> str:
    """One line for a write that found the disk full: what was saved before stays whole
    (every file is written to a temporary name and renamed), so the run resumes once there
    is room."""
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"no space left writing in workdir {workdir}{where}: {e.strerror}. Files saved "
        "before are intact; free space and rerun the same command to resume"
    )


class WorkdirError(RuntimeError):
    """The workdir is in use by another run, or was made by another config."""


def differences(old: Mapping, new: Mapping) -> list[str]:
    """`["optim.learning_rate: 0.001 -> 0.0005", ...]`: keys whose values differ (a key
    present on one side only included), `RESUMABLE` keys left out."""
    a, b = config_args.flatten(old), config_args.flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        resumable = any(key == r or key.startswith(r + ".") for r in RESUMABLE)
        if resumable or a.get(key, "<absent>") == b.get(key, "<absent>"):
            continue
        out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return out


def holds_results(workdir: str) -> bool:
    """Whether `workdir` holds anything a run made that depends on its config: a saved
    step (`checkpoints/<step>`, `best/<step>`), `results.json` or a served model."""
    for sub in ("checkpoints", "best"):
        folder = os.path.join(workdir, sub)
        if os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder)):
            return True
    return any(os.path.lexists(os.path.join(workdir, n)) for n in ("results.json", "served"))


def check_config(workdir: str, config: Mapping, allow_config_change: bool = False) -> None:
    """Raises `WorkdirError` when `workdir/config.json` holds another config.

    Raises:
      WorkdirError: the configs differ beyond `RESUMABLE` keys (the first 5 differences are
        named) and `allow_config_change` is False, or `config.json` cannot be read.
    """
    path = os.path.join(workdir, "config.json")
    if allow_config_change or not os.path.exists(path):
        return
    if not holds_results(workdir):
        # A run that stopped before saving anything (a data or config error): nothing of
        # it can be resumed or served, so a corrected config may take the workdir over.
        logging.info("workdir %s holds no checkpoint or result; its config is replaced", workdir)
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{path} cannot be read ({e}): this workdir's config is unknown; use a new workdir, "
            "or allow_config_change=True (--allow_config_change) to overwrite it"
        ) from None
    diff = differences(old, config)
    if diff:
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise WorkdirError(
            f"workdir {workdir} was made by another config ({'; '.join(diff[:5])}{more}); "
            "nothing was written. Use a new workdir, or allow_config_change=True "
            "(--allow_config_change) to resume it with this config"
        )


def _probe_writable(workdir: str, name: str) -> None:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir} is a file, not a folder; name a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, name)
        files.write_atomic(probe, "ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable: {e.strerror}") from None


@contextlib.contextmanager
def claim(
    workdir: str, config: Mapping, lead: bool = True, allow_config_change: bool = False
) -> Iterator[None]:
    """Holds `workdir` for one run (module docstring).

    Args:
      workdir: the run's folder (created if absent).
      config: the run's config as plain JSON values.
      lead: whether this process writes the workdir (process 0); the others only check
        that it is writable.
      allow_config_change: resume a workdir made by a different config.

    Raises:
      WorkdirError: another process holds the workdir, or it holds another config.
      PermissionError: the workdir cannot be written.
    """
    import jax  # the process index names the probe of each process

    _probe_writable(workdir, f".write_test.{jax.process_index()}")
    if not lead:
        yield
        return
    path = os.path.join(workdir, LOCK)
    if os.path.islink(path):
        os.unlink(path)  # a planted link: never lock (or write) the file it points to
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            raise WorkdirError(
                f"workdir {workdir} is in use by another run ({holder}); wait for it to end "
                "or use another workdir"
            ) from None
        check_config(workdir, config, allow_config_change)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
