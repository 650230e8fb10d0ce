"""Multi-process (multi-host) start-up through JAX's own distributed runtime.

One process per host (or per GPU) runs the same command. `initialize` connects them:

* explicitly, from flags or `RANKJAX_COORDINATOR_ADDRESS`, `RANKJAX_NUM_PROCESSES`,
  `RANKJAX_PROCESS_ID`;
* or, under a cluster launcher JAX recognises (SLURM's `srun`, Open MPI's `mpirun`, Cloud TPU
  pod slices, GKE), from that launcher's environment, through
  `jax.distributed.initialize()`'s own detection;
* otherwise it does nothing: a single process.

After it, `jax.devices()` lists every process's devices; the trainer's mesh spans all of
them, each process reads only its shards of the data and builds its rows of each batch from
them (`trainer.data_shards`), metrics are reduced by the global computation and orbax
writes checkpoints cooperatively.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_LAUNCHER_ENV = {
    "SLURM_NTASKS": "SLURM",
    "OMPI_COMM_WORLD_SIZE": "Open MPI",
    "TPU_WORKER_HOSTNAMES": "Cloud TPU",
}


def _launcher() -> str | None:
    """The cluster launcher that started several processes, if any."""
    for var, name in _LAUNCHER_ENV.items():
        value = os.environ.get(var, "")
        count = len(value.split(",")) if var == "TPU_WORKER_HOSTNAMES" else int(value or 0)
        if count > 1:
            return name
    return None


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Connects this process to the others of a multi-process run (see module docstring).

    Args:
      coordinator_address: `host:port` of process 0; empty to read the environment.
      num_processes: total processes; 0 to read the environment.
      process_id: this process's index; -1 to read the environment.

    Raises:
      ValueError: an incomplete explicit setup (some of the three given, not all).
    """
    env = os.environ
    address = coordinator_address or env.get("RANKJAX_COORDINATOR_ADDRESS", "")
    count = num_processes or int(env.get("RANKJAX_NUM_PROCESSES", "0"))
    index = process_id if process_id >= 0 else int(env.get("RANKJAX_PROCESS_ID", "-1"))
    given = {
        "coordinator_address": bool(address),
        "num_processes": count > 0,
        "process_id": index >= 0,
    }
    if any(given.values()):
        if not all(given.values()):
            missing = [k for k, v in given.items() if not v]
            raise ValueError(
                f"multi-process setup needs coordinator_address, num_processes and process_id; "
                f"missing {missing} (flags --{missing[0]}=... or RANKJAX_{missing[0].upper()})"
            )
        jax.distributed.initialize(address, num_processes=count, process_id=index)
    elif (launcher := _launcher()) is not None:
        logging.info("%s launched several processes: initialising jax.distributed", launcher)
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def allgather(x: np.ndarray) -> np.ndarray:
    """Stacks a host array from every process: `[num_processes, *x.shape]`, in process order.

    Every process must pass the same shape and dtype. The bytes travel unchanged, so
    float64 statistics stay float64 (JAX would otherwise compute in float32).
    """
    x = np.ascontiguousarray(x)
    if jax.process_count() == 1:
        return x[None]
    raw = multihost_utils.process_allgather(x.reshape(-1).view(np.uint8))
    return np.asarray(raw).view(x.dtype).reshape((-1,) + x.shape)
