"""Next-item serving that updates with each event: a SASRec model keeps each user's
per-layer keys and values, so a new click costs one position's work, not a pass over the
whole history.

    scorer = IncrementalScorer(model, variables, top_k=10)   # model.positions == "oldest"
    state = scorer.start(num_users)
    state, (scores, items) = scorer.append(state, clicked)   # [users] -> top-k [users, k]

The top-K is taken over the whole catalog from the item table as served (float, or
int8/int4 rows). The outputs equal a full recomputation of the history while it fits the
model's `max_len` positions (`tests/incremental_test.py`); past that a server recomputes
the window (`append` refuses to go on).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class State:
    """Users' cached keys and values (per block) and how many events each has seen."""

    cache: Any
    length: jax.Array  # [users] int32
    # The longest history, kept on the host so that checking it against max_len costs no
    # device round trip per event.
    longest: int = 0


class IncrementalScorer:
    """Appends events to users' cached states and returns the catalog's top-K.

    Args:
      model: a `models.sequential.SASRec` with `positions="oldest"` (built with the
        serving seam when `variables` are a converted, quantized model).
      variables: its variables as served.
      top_k: items returned per user and event.
    """

    def __init__(self, model: nn.Module, variables: Any, top_k: int = 10):
        if getattr(model, "positions", None) != "oldest":
            raise ValueError(
                "incremental serving needs model.positions='oldest' (appending must keep "
                "the earlier events' positions)"
            )
        self.model, self.top_k = model, top_k
        self.variables = jax.device_put(variables)
        catalog = jnp.arange(model.num_items)
        self.table = jax.jit(lambda v: model.apply(v, catalog, method="items"))(self.variables)

        def step(variables, table, items, length, cache):
            vec, cache = model.apply(variables, items, length, cache, method="extend")
            return cache, length + 1, jax.lax.top_k(vec @ table.T, top_k), vec

        self._step = jax.jit(step)

    def start(self, users: int) -> State:
        """Empty states for `users` users."""
        cache = self.model.apply(self.variables, users, method="empty_cache")
        return State(cache, jnp.zeros([users], jnp.int32))

    def append(self, state: State, items: Any) -> tuple[State, tuple[jax.Array, jax.Array]]:
        """Adds one event per user (`items [users]` item indices).

        Returns:
          `(the new state, (scores [users, k], item indices [users, k]))`: the catalog's
          top-K after the event.

        Raises:
          ValueError: a user's history would pass the model's `max_len`.
        """
        state, top, _ = self.append_with_vectors(state, items)
        return state, top

    def append_with_vectors(self, state: State, items: Any):
        """`append`, also returning the users' vectors `[users, dim]`."""
        if state.longest >= self.model.max_len:
            raise ValueError(
                f"a history reached model.max_len={self.model.max_len}: recompute its window "
                "(the cache holds that many positions)"
            )
        # One compiled call per event: the cache update, the new lengths and the top-K.
        cache, length, top, vec = self._step(
            self.variables, self.table, jnp.asarray(items, jnp.int32), state.length, state.cache
        )
        return State(cache, length, state.longest + 1), top, vec
