"""A listwise self-attention ranker: items of one list attend to each other.

As in DASALC (Qin et al., 2021) and allRank (Pobrotyn et al., 2020): each item is embedded
by a feed-forward layer, a stack of pre-LayerNorm transformer encoder blocks lets every item
see the others of its list (padding masked out, no positional encoding, so scores are
permutation-equivariant), and a head scores each item from its own embedding together with
its list context.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import layers


class SelfAttention(nn.Module):
    """Multi-head self-attention over the list axis, projections through `layers.Dense`."""

    num_heads: int
    dtype: jnp.dtype = jnp.float32
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, x: jax.Array, where: jax.Array) -> jax.Array:
        """`x [batch, list_size, d]`, `where [batch, list_size]` -> `[batch, list_size, d]`."""
        b, n, d = x.shape
        if d % self.num_heads:
            raise ValueError(f"model width {d} is not divisible by num_heads={self.num_heads}")
        dense = lambda name: layers.Dense(  # noqa: E731
            d, dtype=self.dtype, dot_general_cls=self.dot_general_cls, name=name
        )
        split = lambda t: t.reshape(b, n, self.num_heads, d // self.num_heads)  # noqa: E731
        q, k, v = (split(dense(name)(x)) for name in ("query", "key", "value"))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.num_heads).astype(
            self.dtype
        )
        # Padding items are never attended to. Fully padded lists get uniform weights, which
        # keeps them finite; their outputs are masked out downstream.
        mask = where[:, None, None, :]
        logits = jnp.where(mask, logits.astype(jnp.float32), -1e9)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
        return dense("out")(out)


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention then a feed-forward layer, both residual."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, x: jax.Array, where: jax.Array, *, train: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        h = SelfAttention(self.num_heads, self.dtype, self.dot_general_cls)(
            nn.LayerNorm(dtype=self.dtype)(x), where
        )
        x = x + drop(h)
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = layers.Dense(self.mlp_dim, dtype=self.dtype, dot_general_cls=self.dot_general_cls)(h)
        h = layers.Dense(x.shape[-1], dtype=self.dtype, dot_general_cls=self.dot_general_cls)(
            nn.gelu(h)
        )
        return x + drop(h)


class Model(nn.Module):
    """Listwise self-attention ranker.

    Attributes:
      d_model: item embedding width.
      num_layers: encoder blocks.
      num_heads: attention heads per block.
      mlp_dim: hidden width of each block's feed-forward layer.
      head_hidden: hidden width of the scoring head.
      dropout_rate: dropout in blocks and head while training.
      input_noise: std of Gaussian noise added to the features while training (DASALC).
      dtype: computation dtype name; parameters stay float32.
      dot_general_cls: the quantization seam passed to every `layers.Dense`.
    """

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    head_hidden: int = 64
    dropout_rate: float = 0.0
    input_noise: float = 0.0
    dtype: str = "float32"
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, features: jax.Array, where: jax.Array, *, train: bool = False) -> jax.Array:
        """Scores `features [batch, list_size, num_features]` -> `[batch, list_size]` float32."""
        dtype = layers.dtype_of(self.dtype)
        dense = lambda width: layers.Dense(  # noqa: E731
            width, dtype=dtype, dot_general_cls=self.dot_general_cls
        )
        where = jnp.asarray(where, bool)
        features = layers.add_noise(self, jnp.asarray(features, dtype), self.input_noise, train)
        x0 = nn.relu(dense(self.d_model)(features))
        x = x0
        for _ in range(self.num_layers):
            x = EncoderBlock(
                self.num_heads, self.mlp_dim, self.dropout_rate, dtype, self.dot_general_cls
            )(x, where, train=train)
        # Score each item from its own embedding and its list context (DASALC).
        h = jnp.concatenate([x0, nn.LayerNorm(dtype=dtype)(x)], axis=-1)
        h = nn.relu(dense(self.head_hidden)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return dense(1)(h)[..., 0].astype(jnp.float32)


def tiny(**overrides) -> Model:
    """A one-block variant for fast tests."""
    return Model(
        **{
            "d_model": 8,
            "num_layers": 1,
            "num_heads": 2,
            "mlp_dim": 16,
            "head_hidden": 8,
            **overrides,
        }
    )
