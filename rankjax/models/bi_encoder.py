"""A BERT bi-encoder: query and product encoded apart, scored by a dot or cosine product.

Products can be encoded once, offline, and a query costs one short BERT pass plus a dot
product per product: the model a retrieval stage serves (Reimers & Gurevych, 2019). The
towers share weights by default (one encoder, as sentence-transformers' models do) or are
separate (`shared=False`, two encoders initialised alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import bert
from rankjax.models.text_ranker import TextRanker

SCORES = ("cosine", "dot")


class Model(TextRanker):
    """Bi-encoder ranker.

    Attributes (besides `TextRanker`'s; pooling defaults to `"mean"` here):
      shared: one encoder for queries and products; False: two.
      score: `"cosine"` (divided by `temperature`) or `"dot"`.
      temperature: cosine scores are `cos / temperature`, the scale a softmax loss needs.
    """

    pooling: str = "mean"
    shared: bool = True
    score: str = "cosine"
    temperature: float = 0.05
    inputs: ClassVar[tuple[str, ...]] = ("query_tokens", "item_tokens")

    def encoder_names(self) -> tuple[str, ...]:
        return ("encoder",) if self.shared else ("query_encoder", "item_encoder")

    @nn.compact
    def __call__(
        self, x: Mapping[str, jax.Array], where: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Scores products for their list's query.

        Args:
          x: `query_tokens [batch, list_size, Tq]` (every item of a list carries its
            query; the first item's copy is encoded) and `item_tokens [batch, list_size,
            Ti]`, int ids with 0 as padding.
          where: `[batch, list_size]`, False on padding items.
          train: enables dropout.

        Returns:
          `[batch, list_size]` float32 scores.
        """
        del where
        if self.score not in SCORES:
            raise ValueError(f"model.score={self.score!r}; valid: {list(SCORES)}")
        names = self.encoder_names()
        query_encoder = self.encoder(names[0])
        item_encoder = query_encoder if self.shared else self.encoder(names[1])
        q = x["query_tokens"][:, 0].astype(jnp.int32)
        b, n, t = x["item_tokens"].shape
        items = x["item_tokens"].reshape(b * n, t).astype(jnp.int32)
        qv = bert.pool(query_encoder(q, q != 0, None, train), q != 0, self.pooling)
        iv = bert.pool(item_encoder(items, items != 0, None, train), items != 0, self.pooling)
        iv = iv.reshape(b, n, -1)
        if self.score == "cosine":
            qv = qv / jnp.maximum(jnp.linalg.norm(qv, axis=-1, keepdims=True), 1e-6)
            iv = iv / jnp.maximum(jnp.linalg.norm(iv, axis=-1, keepdims=True), 1e-6)
            return jnp.einsum("bh,bnh->bn", qv, iv) / self.temperature
        return jnp.einsum("bh,bnh->bn", qv, iv)
