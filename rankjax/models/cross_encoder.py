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

from rankjax.data.packing import PACKED_KEYS
from rankjax.models import bert, layers
from rankjax.models.text_ranker import TextRanker


class Model(TextRanker):
    """Cross-encoder ranker (attributes: see `TextRanker`).

    It reads padded pairs (`inputs`) or, when the batch was packed (`data.packing`,
    `data.text.pack_length`), pairs laid end to end in rows (`packed_inputs`): the
    same scores without computing padding or empty list slots.
    """

    inputs: ClassVar[tuple[str, ...]] = ("tokens", "token_types")
    packed_inputs: ClassVar[tuple[str, ...]] = PACKED_KEYS

    @nn.compact
    def __call__(
        self, x: Mapping[str, jax.Array], where: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Scores pairs.

        Args:
          x: `tokens [batch, list_size, T]` int pair ids (0: padding) and `token_types`
            of the same shape (0: query segment, 1: product segment); or the packed
            arrays of `data.packing.PACKED_KEYS`.
          where: `[batch, list_size]`, False on padding items (scored, then ignored;
            packed, they are not computed and score 0).
          train: enables dropout.

        Returns:
          `[batch, list_size]` float32 scores.
        """
        b, n = where.shape
        if "packed_tokens" in x:
            pooled = self._packed_pooled(x, b * n, train)
        else:
            ids = x["tokens"].reshape(b * n, -1).astype(jnp.int32)
            types = x["token_types"].reshape(b * n, -1).astype(jnp.int32)
            mask = ids != 0
            hidden = self.encoder("encoder")(ids, mask, types, train)
            pooled = bert.pool(hidden, mask, self.pooling)
        pooled = nn.Dropout(self.bert_config.hidden_dropout_prob)(pooled, deterministic=not train)
        score = layers.Dense(
            1, dtype=layers.dtype_of(self.dtype), dot_general_cls=self.dot_general_cls, name="score"
        )(pooled)
        score = score.reshape(b, n).astype(jnp.float32)
        return jnp.where(where, score, 0.0) if "packed_tokens" in x else score

    def _packed_pooled(self, x: Mapping[str, jax.Array], slots: int, train: bool) -> jax.Array:
        """`[slots, H]` pair vectors of a packed batch: the first token of each pair
        (`"cls"`) or the mean of its tokens (`"mean"`)."""
        ids = x["packed_tokens"].astype(jnp.int32)
        segments = x["packed_segments"].astype(jnp.int32)
        mask = segments >= 0
        hidden = self.encoder("encoder")(
            ids,
            mask,
            x["packed_types"].astype(jnp.int32),
            train,
            positions=x["packed_positions"].astype(jnp.int32),
            segments=segments,
        )
        width = hidden.shape[-1]
        if self.pooling == "cls":
            # Each group's pairs sit in its own rows (one group per data-parallel device),
            # so this gather stays on the device that holds them.
            at = x["packed_item_at"]
            rows = hidden.reshape(at.shape[0], -1, width)
            return jnp.take_along_axis(rows, at[..., None].astype(jnp.int32), axis=1).reshape(
                slots, width
            )
        if self.pooling == "mean":
            flat = hidden.reshape(-1, width).astype(jnp.float32)
            ids = segments.reshape(-1)
            ids = jnp.where(ids < 0, slots, ids)  # padding: out of range, dropped
            total = jax.ops.segment_sum(flat, ids, num_segments=slots)
            count = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=slots)
            return total / jnp.maximum(count, 1.0)[:, None]
        raise ValueError(f"pooling={self.pooling!r}; valid: 'mean', 'cls'")
