"""DCN-v2: a feature-crossing ranker (Wang et al., 2021, "DCN V2").

Each (user, item) pair is a row of features — categorical ids embedded (`embed_dim` each;
token sequences such as genres by the mean of their known tokens), float features as
they are — concatenated into `x0 [n, D]`. Cross layers build explicit feature crosses of
bounded degree,

    x_{l+1} = x0 * (W_l x_l + b_l) + x_l        (full rank: W_l is D x D)
    x_{l+1} = x0 * (U_l (V_l x_l) + b_l) + x_l  (low rank r: V_l is r x D, U_l is D x r)

and an MLP learns the implicit rest, stacked on the cross network's output or in
parallel with it; one logit per row. Every weight product goes through the `layers.Dense`
seam (quantization applies unchanged) and every table through `layers.Embed` (served
int8/int4 rows, row padding for sharding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import layers

STRUCTURES = ("stacked", "parallel")


class CrossLayer(nn.Module):
    """`(x0, x) [n, D] -> [n, D]`: one DCN-v2 cross layer."""

    low_rank: int = 0
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, x0: jax.Array, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = dict(dot_general_cls=self.dot_general_cls)
        if self.low_rank:
            x_low = layers.Dense(self.low_rank, use_bias=False, name="down", **dense)(x)
            h = layers.Dense(width, name="up", **dense)(x_low)
        else:
            h = layers.Dense(width, name="full", **dense)(x)
        return x0 * h + x


class DCN(nn.Module):
    """`{feature: [n] ids | [n, k] token ids | [n] or [n, d] floats}` -> `[n]` logits.

    Attributes:
      vocab_sizes: `{feature: vocabulary size}` of the categorical (and token-sequence)
        features; code 0 is unknown/padding. Features not named here are floats.
      embed_dim: width of every categorical embedding.
      num_cross: cross layers.
      low_rank: 0 for full-rank cross layers, else their rank.
      deep: MLP widths.
      structure: "stacked" (cross network, then MLP) or "parallel" (both on x0,
        concatenated).
      dot_general_cls: the quantization seam.
      embedding_bits: 0 (float tables) or 8/4 (served row-wise quantized tables).
      row_multiple: tables padded to a multiple of this many rows (sharding).
    """

    vocab_sizes: Mapping[str, int]
    embed_dim: int = 16
    num_cross: int = 3
    low_rank: int = 0
    deep: Sequence[int] = (256, 128)
    structure: str = "stacked"
    dot_general_cls: layers.DotGeneralFactory | None = None
    embedding_bits: int = 0
    row_multiple: int = 1

    @nn.compact
    def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
        if self.structure not in STRUCTURES:
            raise ValueError(f"model.structure={self.structure!r}; valid: {STRUCTURES}")
        missing = sorted(set(self.vocab_sizes) - set(features))
        if missing:
            raise ValueError(f"DCN input lacks the categorical features {missing}")
        parts, floats = [], []
        for name in sorted(features):
            x = features[name]
            if name not in self.vocab_sizes:
                floats.append(jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32))
                continue
            table = layers.Embed(
                self.vocab_sizes[name],
                self.embed_dim,
                bits=self.embedding_bits,
                row_multiple=self.row_multiple,
                name=f"{name}_embedding",
            )
            parts.append(layers.embed_pooled(table, x))
        x0 = jnp.concatenate(parts + floats, axis=-1)
        dense = dict(dot_general_cls=self.dot_general_cls)
        x = x0
        for i in range(self.num_cross):
            x = CrossLayer(self.low_rank, self.dot_general_cls, name=f"cross_{i}")(x0, x)
        h = x if self.structure == "stacked" else x0
        for i, width in enumerate(self.deep):
            h = nn.relu(layers.Dense(width, name=f"deep_{i}", **dense)(h))
        if self.structure == "parallel":
            h = jnp.concatenate([x, h], axis=-1)
        return layers.Dense(1, name="logit", **dense)(h)[:, 0]
