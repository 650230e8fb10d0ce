"""A two-tower retrieval model: users (or queries) and items embedded apart, scored by a
dot product, so the whole catalog can be embedded once and searched by top-K.

Each tower embeds its entity's id and side features — token features (e.g. occupation,
a movie's year) by an embedding each, token-sequence features (genres, title words) by the
mean of their tokens' embeddings, float features (price) through a dense layer, and
optionally an item text (a title) through a BERT encoder fine-tuned with the tower — and
maps their concatenation through an MLP to a `dim`-wide vector (L2-normalised when
`normalize`, so scores are cosines divided by `temperature`). Trained with the in-batch
sampled softmax of `losses.in_batch_softmax_loss` (Yi et al., 2019: logQ correction,
accidental hits removed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import bert, layers

TEXT_TOKENS = "text_tokens"  # the feature a tower's BERT encoder reads


def hash_ids(ids: jax.Array, buckets: int) -> jax.Array:
    """`ids` mapped to `[0, buckets)` by Knuth's multiplicative hash (uint32 arithmetic,
    the high bits mixed down so consecutive ids spread over the buckets)."""
    h = jnp.asarray(ids).astype(jnp.uint32) * jnp.uint32(2654435761)
    h = h ^ (h >> 16)
    return (h % jnp.uint32(buckets)).astype(jnp.int32)


class Tower(nn.Module):
    """One tower: `ids [n]` (+ features `{name: [n, ...]}`) -> `[n, dim]`.

    Attributes:
      num_ids: rows of the id embedding (one per user or item).
      vocab_sizes: `{feature: vocabulary size}` for token and token-sequence features
        (code 0 means unknown/padding and embeds to zero in sequences); float features
        are the others present in the input.
      dim: output width.
      hidden: MLP widths before the output layer (empty: a linear projection).
      normalize: L2-normalise the output.
      dot_general_cls: the quantization seam.
      embedding_bits: 0 (float tables) or 8/4: read served row-wise quantized tables
        (`compression.embeddings`).
      hash_buckets: when > 0 and below `num_ids`, the id table has this many rows and an
        id reads row `hash(id) % hash_buckets` (the hashing trick: colliding ids share a
        row, and the side features tell them apart).
      row_multiple: tables padded to a multiple of this many rows (`layers.Embed`), to
        shard them evenly over a mesh axis.
      text_config: a BERT architecture: the feature `text_tokens [n, T]` (WordPiece ids,
        0 padding) is encoded by a BERT encoder (`text_encoder`, fine-tuned with the
        tower), mean-pooled and projected; None: no text encoder.
      text_layers: the encoder's layers (0: all of `text_config`'s).
    """

    num_ids: int
    vocab_sizes: Mapping[str, int]
    dim: int = 64
    hidden: Sequence[int] = ()
    normalize: bool = True
    dot_general_cls: layers.DotGeneralFactory | None = None
    embedding_bits: int = 0
    hash_buckets: int = 0
    row_multiple: int = 1
    text_config: bert.BertConfig | None = None
    text_layers: int = 0

    @nn.compact
    def __call__(self, ids: jax.Array, features: Mapping[str, jax.Array]) -> jax.Array:
        bits = self.embedding_bits
        rows = self.num_ids
        if 0 < self.hash_buckets < self.num_ids:
            rows, ids = self.hash_buckets, hash_ids(ids, self.hash_buckets)
        table = layers.Embed(
            rows, self.dim, bits=bits, row_multiple=self.row_multiple, name="id_embedding"
        )
        parts = [table(ids)]
        features = dict(features)
        if self.text_config is not None:
            if TEXT_TOKENS not in features:
                raise ValueError(f"a tower with a text encoder needs the {TEXT_TOKENS} feature")
            tokens = features.pop(TEXT_TOKENS).astype(jnp.int32)
            encoder = bert.Encoder(
                self.text_config,
                self.text_layers or None,
                dot_general_cls=self.dot_general_cls,
                embedding_bits=bits,
                name="text_encoder",
            )
            pooled = bert.pool(encoder(tokens, tokens != 0), tokens != 0, "mean")
            dense = layers.Dense(self.dim, dot_general_cls=self.dot_general_cls, name="text")
            parts.append(dense(pooled))
        floats = []
        for name in sorted(features):
            x = features[name]
            if name in self.vocab_sizes:
                table = layers.Embed(
                    self.vocab_sizes[name],
                    self.dim,
                    bits=bits,
                    row_multiple=self.row_multiple,
                    name=f"{name}_embedding",
                )
                parts.append(layers.embed_pooled(table, x))
            else:
                floats.append(jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32))
        if floats:
            dense = layers.Dense(self.dim, dot_general_cls=self.dot_general_cls, name="floats")
            parts.append(dense(jnp.concatenate(floats, axis=-1)))
        h = jnp.concatenate(parts, axis=-1)
        for i, width in enumerate(self.hidden):
            h = layers.Dense(width, dot_general_cls=self.dot_general_cls, name=f"hidden_{i}")(h)
            h = nn.relu(h)
        out = layers.Dense(self.dim, dot_general_cls=self.dot_general_cls, name="output")(h)
        if self.normalize:
            out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-6)
        return out


class Model(nn.Module):
    """User tower and item tower.

    Attributes:
      num_users, num_items: id counts.
      user_vocab_sizes, item_vocab_sizes: token-feature vocabularies per tower.
      dim, hidden, normalize: tower shape (see `Tower`).
      temperature: scores are `user . item / temperature`.
      embedding_bits: served row-wise quantized embedding tables (0: float).
      hash_buckets: rows of each id table under the hashing trick (0: one row per id).
      row_multiple: id tables padded to a multiple of this many rows (sharding).
      item_text_config, item_text_layers: the item tower's BERT encoder over its
        `text_tokens` feature (see `Tower`); None: none.
    """

    num_users: int
    num_items: int
    user_vocab_sizes: Mapping[str, int]
    item_vocab_sizes: Mapping[str, int]
    dim: int = 64
    hidden: Sequence[int] = ()
    normalize: bool = True
    temperature: float = 0.05
    dot_general_cls: layers.DotGeneralFactory | None = None
    embedding_bits: int = 0
    hash_buckets: int = 0
    row_multiple: int = 1
    item_text_config: bert.BertConfig | None = None
    item_text_layers: int = 0

    def setup(self):
        shape = dict(
            dim=self.dim,
            hidden=tuple(self.hidden),
            normalize=self.normalize,
            dot_general_cls=self.dot_general_cls,
            embedding_bits=self.embedding_bits,
            hash_buckets=self.hash_buckets,
            row_multiple=self.row_multiple,
        )
        self.user_tower = Tower(self.num_users, dict(self.user_vocab_sizes), **shape)
        self.item_tower = Tower(
            self.num_items,
            dict(self.item_vocab_sizes),
            text_config=self.item_text_config,
            text_layers=self.item_text_layers,
            **shape,
        )

    def users(self, ids: jax.Array, features: Mapping[str, jax.Array]) -> jax.Array:
        """`[n, dim]` user vectors, already divided by `sqrt(temperature)`."""
        return self.user_tower(ids, features) / jnp.sqrt(self.temperature)

    def items(self, ids: jax.Array, features: Mapping[str, jax.Array]) -> jax.Array:
        """`[n, dim]` item vectors, already divided by `sqrt(temperature)`."""
        return self.item_tower(ids, features) / jnp.sqrt(self.temperature)

    def __call__(self, user_ids, user_features, item_ids, item_features) -> jax.Array:
        """In-batch scores `[n_users, n_items]`: every user against every item."""
        return self.users(user_ids, user_features) @ self.items(item_ids, item_features).T
