"""A SASRec-style sequential recommender (Kang & McAuley, 2018).

A causal transformer reads a user's items in time order and, at every position, predicts
the next item by a dot product with the item table (the input table, tied): the hidden
state at the last position is the user's vector, so the model is a retrieval tower whose
item side is one embedding table — searched over the whole catalog like a two-tower
model's. Pre-layer-norm blocks (more stable than the paper's post-norm ones), learned
positions, padding id 0 (item `i` is token `i + 1`); sequences are left-padded so the
newest item sits at the last position.

Positions count back from the newest item (`positions="newest"`, SASRec's) or forward
from the oldest one in the window (`"oldest"`). With `"oldest"` an appended event leaves
every earlier position as it was, so a server can keep each user's per-layer keys and
values and add one event at one position's cost (`extend`, `IncrementalScorer` in
`rankjax.incremental`); its outputs equal a full recomputation while the history fits
`max_len`.

Every weight product goes through the `layers.Dense` seam and both tables through
`layers.Embed`, so quantization applies unchanged; the item table (most of the model's
bytes on a real catalog) can be served as int8/int4 rows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import layers

POSITIONS = ("newest", "oldest")


class Block(nn.Module):
    """One pre-norm transformer block with causal, padding-masked self-attention."""

    dim: int
    num_heads: int
    dropout: float
    dot_general_cls: layers.DotGeneralFactory | None = None

    def setup(self):
        def dense(width):
            return layers.Dense(width, dot_general_cls=self.dot_general_cls)

        self.attention_norm, self.ffn_norm = nn.LayerNorm(), nn.LayerNorm()
        self.query, self.key, self.value = dense(self.dim), dense(self.dim), dense(self.dim)
        self.attention_output = dense(self.dim)
        self.ffn_hidden, self.ffn_output = dense(4 * self.dim), dense(self.dim)
        # The name inline Dropout had: the same dropout masks as before setup().
        self.drop = nn.Dropout(self.dropout, name="Dropout_0")

    def _split(self, y: jax.Array) -> jax.Array:
        return y.reshape(y.shape[:-1] + (self.num_heads, self.dim // self.num_heads))

    def _ffn(self, x: jax.Array, attended: jax.Array, train: bool) -> jax.Array:
        # Reshaped back: a quantized layer may hand a [B, dim] input back with a leading axis.
        a = self.attention_output(attended).reshape(x.shape)
        x = x + self.drop(a, deterministic=not train)
        h = self.ffn_output(nn.gelu(self.ffn_hidden(self.ffn_norm(x)))).reshape(x.shape)
        return x + self.drop(h, deterministic=not train)

    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        """`x [B, L, dim]`, `mask [B, 1, L, L]` (True: may attend) -> `[B, L, dim]`."""
        b, length, _ = x.shape
        h = self.attention_norm(x)
        q, k, v = (self._split(layer(h)) for layer in (self.query, self.key, self.value))
        width = q.shape[-1]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(width).astype(q.dtype)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = self.drop(jax.nn.softmax(logits, axis=-1), deterministic=not train)
        a = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, self.dim)
        return self._ffn(x, a, train)

    def step(
        self, x: jax.Array, cache: tuple[jax.Array, jax.Array], position: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One new token per sequence against the cached keys and values of the earlier
        ones (serving, no dropout).

        Args:
          x: `[B, dim]` the new token's input.
          cache: `(keys, values)`, each `[B, max_len, heads, width]`; slots after
            `position` are ignored.
          position: `[B]` int, the new token's slot.

        Returns:
          `([B, dim] output, the cache with the token's key and value in its slot)`.
        """
        h = self.attention_norm(x)
        b = x.shape[0]
        q, k, v = (
            self._split(layer(h).reshape(b, self.dim))
            for layer in (self.query, self.key, self.value)
        )
        put = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u[None], (i, 0, 0)))
        keys, values = put(cache[0], k, position), put(cache[1], v, position)
        logits = jnp.einsum("bhd,bkhd->bhk", q, keys) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        seen = jnp.arange(keys.shape[1])[None, :] <= position[:, None]
        logits = jnp.where(seen[:, None, :], logits, jnp.finfo(logits.dtype).min)
        a = jnp.einsum("bhk,bkhd->bhd", jax.nn.softmax(logits, axis=-1), values)
        return self._ffn(x, a.reshape(x.shape), False), (keys, values)


class SASRec(nn.Module):
    """`sequences [B, L]` (item index + 1, 0 = padding, left-padded) -> `[B, L, dim]`.

    Attributes:
      num_items: catalog size (the item table has `num_items + 1` rows, row 0 padding).
      max_len: longest history read (positions).
      dim: hidden width.
      num_layers: transformer blocks.
      num_heads: attention heads (`dim` divisible by it).
      dropout: on embeddings, attention weights and residual branches while training.
      dot_general_cls: the quantization seam.
      embedding_bits: 0 (float tables) or 8/4 (served row-wise quantized tables).
      row_multiple: tables padded to a multiple of this many rows, to shard them evenly
        over a mesh axis (`layers.Embed`).
      positions: `"newest"` (the newest item at position `max_len - 1`) or `"oldest"`
        (the window's oldest item at position 0: appending keeps earlier positions).
    """

    num_items: int
    max_len: int = 50
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    dot_general_cls: layers.DotGeneralFactory | None = None
    embedding_bits: int = 0
    row_multiple: int = 1
    positions: str = "newest"

    def setup(self):
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by num_heads")
        if self.positions not in POSITIONS:
            raise ValueError(f"model.positions={self.positions!r}; valid: {list(POSITIONS)}")
        bits = self.embedding_bits
        self.item_embedding = layers.Embed(
            self.num_items + 1, self.dim, bits=bits, row_multiple=self.row_multiple
        )
        self.position_embedding = layers.Embed(
            self.max_len, self.dim, bits=bits, row_multiple=self.row_multiple
        )
        self.blocks = [
            Block(self.dim, self.num_heads, self.dropout, self.dot_general_cls, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.final_norm = nn.LayerNorm()
        self.embed_dropout = nn.Dropout(self.dropout)

    def __call__(self, sequences: jax.Array, train: bool = False) -> jax.Array:
        b, length = sequences.shape
        if length > self.max_len:
            raise ValueError(f"sequences of length {length} exceed model.max_len={self.max_len}")
        present = sequences > 0
        # Scaled as in SASRec (and Transformer) so positions do not swamp items.
        x = self.item_embedding(sequences) * jnp.sqrt(float(self.dim))
        if self.positions == "newest":
            where = jnp.arange(self.max_len - length, self.max_len)[None, :]
        else:  # the i-th item present is at position i
            where = jnp.maximum(jnp.cumsum(present, axis=1) - 1, 0)
        x = x + self.position_embedding(where)
        x = self.embed_dropout(x, deterministic=not train) * present[..., None]
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = causal[None, None] & present[:, None, None, :]
        # A padding query attends to itself only, so no row of the softmax is empty.
        mask = mask | jnp.eye(length, dtype=bool)[None, None]
        for block in self.blocks:
            x = block(x, mask, train) * present[..., None]
        return self.final_norm(x)

    def users(self, sequences: jax.Array) -> jax.Array:
        """`[B, L]` histories -> `[B, dim]`: the state after the newest item."""
        return self(sequences)[:, -1]

    def items(self, ids: jax.Array) -> jax.Array:
        """`[n]` item indices -> `[n, dim]` output vectors (the tied item table)."""
        return self.item_embedding(ids + 1)

    def empty_cache(self, batch: int) -> list[tuple[jax.Array, jax.Array]]:
        """Per block `(keys, values)`, each `[batch, max_len, heads, width]` zeros."""
        shape = (batch, self.max_len, self.num_heads, self.dim // self.num_heads)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(self.num_layers)]

    def extend(
        self, items: jax.Array, position: jax.Array, cache: list[tuple[jax.Array, jax.Array]]
    ) -> tuple[jax.Array, list[tuple[jax.Array, jax.Array]]]:
        """Appends one event per user (`positions="oldest"` only; serving, no dropout).

        Args:
          items: `[B]` item indices of the new events.
          position: `[B]` their positions (the number of events before them, < max_len).
          cache: per block `(keys, values)` of the earlier events (`empty_cache`).

        Returns:
          `([B, dim] user vectors after the events, the cache with them added)`.
        """
        if self.positions != "oldest":
            raise ValueError(
                "extend needs model.positions='oldest': with 'newest' every appended event "
                "moves the earlier ones' positions, so cached keys and values go stale"
            )
        x = self.item_embedding(items + 1) * jnp.sqrt(float(self.dim))
        x = x + self.position_embedding(position)
        out = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block.step(x, layer_cache, position)
            out.append(layer_cache)
        return self.final_norm(x), out
