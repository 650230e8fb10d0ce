"""Top-K retrieval over a catalog of item vectors: exact or approximate, on one device or
with the catalog sharded across devices.

`top_k(queries, items, k)` scores `queries [n, d]` against `items [m, d]` by dot product and
returns the `k` best per query, with `jax.lax.top_k` (exact) or `jax.lax.approx_max_k`
(approximate: on TPU a bucketed partial reduction with a recall target; on CPU XLA
computes it exactly, as `tests/topk_test.py` checks).
`sharded_top_k` splits the catalog's rows over a mesh axis: each device scores its shard
and keeps its own top K (ids offset to the global numbering), and the shards' candidates
are merged by one more top K — the catalog never has to fit on one device, and only
`k` candidates per query and device cross the interconnect.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _select(scores: jax.Array, k: int, approximate: bool, recall_target: float):
    if approximate:
        return jax.lax.approx_max_k(scores, k, recall_target=recall_target)
    return jax.lax.top_k(scores, k)


@functools.partial(jax.jit, static_argnames=("k", "approximate", "recall_target"))
def top_k(
    queries: jax.Array,
    items: jax.Array,
    k: int,
    approximate: bool = False,
    recall_target: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """`(scores [n, k], item ids [n, k])`, best first, of `queries @ items.T`.

    Args:
      queries: `[n, d]` query (user) vectors.
      items: `[m, d]` item vectors, `m >= k`.
      k: results per query.
      approximate: use `jax.lax.approx_max_k` with `recall_target`.
      recall_target: expected recall of the approximate search.
    """
    return _select(queries @ items.T, k, approximate, recall_target)


def sharded_top_k(
    queries: jax.Array,
    items: jax.Array,
    k: int,
    mesh: Mesh,
    axis: str = "data",
    approximate: bool = False,
    recall_target: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """`top_k` with the catalog's rows split over `mesh` axis `axis`.

    Args:
      queries: `[n, d]`, replicated to every device.
      items: `[m, d]`; `m` must be a multiple of the axis size (pad with rows that can
        never win, e.g. zeros with a `-inf` bias, or drop them) and each shard must hold
        at least `k` rows.
      k, approximate, recall_target: as `top_k`.
      mesh: the device mesh.
      axis: the mesh axis the catalog is split along.

    Returns:
      `(scores [n, k], global item ids [n, k])`, best first; equal to `top_k` on one device
      (ties may order differently).
    """
    shards = mesh.shape[axis]
    m = items.shape[0]
    if m % shards:
        raise ValueError(f"catalog of {m} items does not split over {shards} devices")
    if m // shards < k:
        raise ValueError(f"each of {shards} shards holds {m // shards} items, fewer than k={k}")
    items = jax.device_put(items, NamedSharding(mesh, P(axis, None)))
    queries = jax.device_put(queries, NamedSharding(mesh, P()))

    def local(q, shard):
        scores, ids = _select(q @ shard.T, k, approximate, recall_target)
        ids = ids + jax.lax.axis_index(axis) * shard.shape[0]
        return scores[None], ids[None]  # [1, n, k] per device

    per_shard = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(axis, None)),
        out_specs=(P(axis), P(axis)),
    )
    return _merge(*jax.jit(per_shard)(queries, items), k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge(scores: jax.Array, ids: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Best `k` of every shard's candidates: `[shards, n, k]` -> `[n, k]`."""
    n = scores.shape[1]
    scores = jnp.moveaxis(scores, 0, 1).reshape(n, -1)
    ids = jnp.moveaxis(ids, 0, 1).reshape(n, -1)
    best, where = jax.lax.top_k(scores, k)
    return best, jnp.take_along_axis(ids, where, axis=1)
