"""Device mesh and shardings from the config: data parallelism with `jax.jit`.

The batch is split over the mesh's `data` axis; parameters and optimizer state follow
`[(regex, PartitionSpec)]` rules matched against their path (the first match wins, the
default replicates), so model parallel layouts are a config change, not a code change.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(num_devices: int = -1, model: int = 1) -> Mesh:
    """A mesh over the first `num_devices` devices (-1: all): 1-D with axis `data`, or,
    when `model > 1`, 2-D `(data, model)` with `model` devices along `model` (e.g. rows
    of embedding tables split over it, the batch over `data`)."""
    devices = jax.devices()
    if num_devices == -1:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"mesh.num_devices={num_devices}, but {len(devices)} device(s) are available"
        )
    if model < 1 or num_devices % model:
        raise ValueError(f"mesh.model={model} must be >= 1 and divide num_devices={num_devices}")
    if model == 1:
        return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))
    grid = np.asarray(devices[:num_devices]).reshape(num_devices // model, model)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Batch axis `axis` (the leading one; 1 for batches stacked step by step) split over
    `data`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(*[None] * axis, DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def path_str(path: tuple) -> str:
    """`('params', 'Dense_0', 'kernel')`-style key path as `params/Dense_0/kernel`."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tree_shardings(
    tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence]] = (), fsdp: bool = False
) -> Any:
    """A `NamedSharding` for every leaf of `tree` (arrays or ShapeDtypeStructs).

    Args:
      tree: the pytree, e.g. the train state.
      mesh: the device mesh.
      rules: `(regex, spec)` pairs; `spec` is a tuple of mesh axis names or None per array
        axis; the first regex that `re.search`es the leaf's path wins; unmatched leaves are
        replicated.
      fsdp: fully sharded data parallelism: every leaf is also split over the `data`
        axis, along its largest axis that no rule splits and that divides evenly (leaves
        with none stay as the rules lay them out). Parameters and optimizer moments then
        take 1/data of their bytes on each device; XLA gathers each layer's weights where
        they are used.
    """
    compiled = [(re.compile(r), tuple(spec)) for r, spec in rules]
    data = mesh.shape[DATA_AXIS]

    def one(path, leaf):
        name = path_str(path)
        spec: tuple = ()
        for regex, rule in compiled:
            if regex.search(name):
                if len(rule) > np.ndim(leaf):
                    raise ValueError(
                        f"sharding rule {regex.pattern!r} has {len(rule)} axes, "
                        f"but {name} has shape {np.shape(leaf)}"
                    )
                spec = rule
                break
        # An axis a mesh axis does not divide stays whole (e.g. a vocabulary of 30,527 rows
        # over 4 devices): XLA would pad it, and orbax could not restore it.
        spec = tuple(
            a if a is None or np.shape(leaf)[i] % _size(mesh, a) == 0 else None
            for i, a in enumerate(spec)
        )
        if fsdp and data > 1:
            spec = _with_data_axis(spec, np.shape(leaf), data)
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree_util.tree_map_with_path(one, tree)


def _size(mesh: Mesh, axes: str | tuple[str, ...]) -> int:
    names = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([mesh.shape[n] for n in names]))


def _with_data_axis(spec: tuple, shape: tuple[int, ...], data: int) -> tuple:
    """`spec` with `data` added on the largest free axis of `shape` that it divides."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    if any(DATA_AXIS == a or (isinstance(a, tuple) and DATA_AXIS in a) for a in spec):
        return spec
    free = [i for i, a in enumerate(spec) if a is None and shape[i] % data == 0]
    if not free:
        return spec
    axis = max(free, key=lambda i: shape[i])
    return spec[:axis] + (DATA_AXIS,) + spec[axis + 1 :]


def bytes_per_device(tree: Any) -> int:
    """Bytes of `tree`'s arrays held by the first device (its shards only)."""
    device = jax.devices()[0]
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            if shard.device == device:
                total += shard.data.nbytes
    return total


def check_divisible(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(
            f"batch of {batch_size} cannot be split evenly over the {n} devices of the "
            f"data axis; use a batch size divisible by {n}"
        )


def put_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, global_size: int | None = None, axis: int = 0
) -> dict[str, jax.Array]:
    """Places a batch on the mesh, split along the batch axis.

    Args:
      batch: this process's rows of the global batch (its devices' share, built from its
        data shards); all of it in a single process.
      mesh: the device mesh.
      global_size: lists in the global batch; defaults to this batch's size (one process).
      axis: the batch axis (1 for batches stacked step by step on axis 0).
    """
    n = next(iter(batch.values())).shape[axis]
    global_size = global_size or n
    check_divisible(global_size, mesh)
    sharding = batch_sharding(mesh, axis)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        k: jax.make_array_from_process_local_data(
            sharding, v, v.shape[:axis] + (global_size,) + v.shape[axis + 1 :]
        )
        for k, v in batch.items()
    }


def put_global_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, axis: int = 0
) -> dict[str, jax.Array]:
    """Places the global batch (the same on every process) on the mesh, split along the
    batch axis `axis`; each process places only its own devices' rows."""
    sharding = batch_sharding(mesh, axis)
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
        for k, v in batch.items()
    }


def per_batch_shard(fn: Any, *args: Any, batched: Sequence[bool]) -> Any:
    """`fn(*args)`, run on each device's share of the batch when traced under a context
    mesh (`jax.set_mesh`) whose `data` axis splits the batch; else as it is.

    For functions XLA cannot partition itself, such as Pallas kernels (Triton custom
    calls on GPUs, loops in the interpreter): left alone in a data-parallel `jit`, XLA
    gathers their whole batch onto every device, which then computes all of it. The
    trainer's evaluation runs under its mesh (`with_mesh`), so its kernels split. Outside a
    mesh context (one device, `rankjax.export`) this is `fn(*args)`.

    Args:
      fn: maps `args` to an array or a tuple of arrays, each with the batch leading.
      *args: arrays; those marked in `batched` have the batch as their leading axis, the
        others are used whole on every device.
      batched: one flag per argument.

    Returns:
      `fn(*args)`, its outputs split over `data` like the batch under a mesh.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or DATA_AXIS not in mesh.axis_names:
        return fn(*args)
    n = mesh.shape[DATA_AXIS]
    sizes = {a.shape[0] for a, b in zip(args, batched, strict=True) if b}
    if n == 1 or any(size % n for size in sizes):
        return fn(*args)  # unsplittable: XLA's placement, correct if wasteful
    specs = tuple(PartitionSpec(DATA_AXIS) if b else PartitionSpec() for b in batched)
    return jax.shard_map(
        fn,
        in_specs=specs,
        out_specs=PartitionSpec(DATA_AXIS),
        axis_names={DATA_AXIS},
        check_vma=False,
    )(*args)


def with_mesh(fn: Any, mesh: Mesh) -> Any:
    """`fn` called with `mesh` as JAX's context mesh (`jax.set_mesh`): the Pallas kernels
    a jitted `fn` traces then split over the batch (`per_batch_shard`). Only for functions
    whose arguments live on the mesh's devices, or are not yet placed: under a context
    mesh, jit refuses arrays committed to other devices."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call
