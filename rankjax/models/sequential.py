"""A SASRec-style sequential recommender (Kang & McAuley, 2018).

A causal transformer reads a user's items in time order and, at every position, predicts
the next item by a dot product with the item table (the input table, tied): the hidden
state at the last position is the user's vector, so the model is a retrieval tower whose
item side is one embedding table — searched over the whole catalog like a two-tower
model's. Pre-layer-norm blocks (more stable than the paper's post-norm ones), learned
positions, padding id 0 (item `i` is token `i + 1`); sequences are left-padded so the
newest item sits at the last position.

Every weight product goes through the `layers.Dense` seam and both tables through
`layers.Embed`, so quantization applies unchanged; the item table (most of the model's
bytes on a real catalog) can be served as int8/int4 rows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import layers


class Block(nn.Module):
    """One pre-norm transformer block with causal, padding-masked self-attention."""

    dim: int
    num_heads: int
    dropout: float
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        """`x [B, L, dim]`, `mask [B, 1, L, L]` (True: may attend) -> `[B, L, dim]`."""
        dense = lambda width, name: layers.Dense(  # noqa: E731
            width, dot_general_cls=self.dot_general_cls, name=name
        )
        drop = nn.Dropout(self.dropout, deterministic=not train)
        b, length, _ = x.shape
        heads, width = self.num_heads, self.dim // self.num_heads
        h = nn.LayerNorm(name="attention_norm")(x)
        q, k, v = (
            dense(self.dim, name)(h).reshape(b, length, heads, width)
            for name in ("query", "key", "value")
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(width).astype(q.dtype)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = drop(jax.nn.softmax(logits, axis=-1))
        a = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, self.dim)
        x = x + drop(dense(self.dim, "attention_output")(a))
        h = nn.LayerNorm(name="ffn_norm")(x)
        h = dense(self.dim, "ffn_output")(nn.gelu(dense(4 * self.dim, "ffn_hidden")(h)))
        return x + drop(h)


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

    def setup(self):
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} is not divisible by num_heads")
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
        x = x + self.position_embedding(jnp.arange(self.max_len - length, self.max_len))
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
