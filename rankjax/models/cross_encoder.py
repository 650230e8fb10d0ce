"""A BERT cross-encoder: `[CLS] query [SEP] product text [SEP]` -> one relevance score.

The query and the product are read together, so every layer's attention relates query
words to product words: the most accurate and the most expensive text ranker (one full
BERT pass per scored product). As in Nogueira & Cho (2019) and the MS MARCO MiniLM
cross-encoders, the pooled first-token vector feeds a linear scoring layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import bert, layers
from rankjax.models.text_ranker import TextRanker


class Model(TextRanker):
    """Cross-encoder ranker (attributes: see `TextRanker`)."""

    inputs: ClassVar[tuple[str, ...]] = ("tokens", "token_types")

    @nn.compact
    def __call__(
        self, x: Mapping[str, jax.Array], where: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Scores pairs.

        Args:
          x: `tokens [batch, list_size, T]` int pair ids (0: padding) and `token_types`
            of the same shape (0: query segment, 1: product segment).
          where: `[batch, list_size]`, False on padding items (scored, then ignored).
          train: enables dropout.

        Returns:
          `[batch, list_size]` float32 scores.
        """
        del where
        ids = x["tokens"]
        b, n, t = ids.shape
        ids = ids.reshape(b * n, t).astype(jnp.int32)
        types = x["token_types"].reshape(b * n, t).astype(jnp.int32)
        mask = ids != 0
        hidden = self.encoder("encoder")(ids, mask, types, train)
        pooled = bert.pool(hidden, mask, self.pooling)
        pooled = nn.Dropout(self.bert_config.hidden_dropout_prob)(pooled, deterministic=not train)
        score = layers.Dense(
            1, dtype=layers.dtype_of(self.dtype), dot_general_cls=self.dot_general_cls, name="score"
        )(pooled)
        return score.reshape(b, n).astype(jnp.float32)
