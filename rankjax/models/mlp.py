"""A feed-forward scorer: each item scored from its own features (a pointwise ranker)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.models import layers


class Model(nn.Module):
    """MLP ranker.

    Attributes:
      hidden_sizes: width of each hidden layer.
      dropout_rate: dropout after each hidden layer while training.
      input_noise: std of Gaussian noise added to the (standardised) features while
        training, a data augmentation that DASALC found to help neural rankers.
      layer_norm: normalise each hidden layer's input (stabilises wide, deep scorers).
      dtype: computation dtype name (`"float32"` or `"bfloat16"`); parameters stay float32.
      dot_general_cls: the quantization seam passed to every `layers.Dense`.
    """

    hidden_sizes: Sequence[int] = (256, 128)
    dropout_rate: float = 0.0
    input_noise: float = 0.0
    layer_norm: bool = True
    dtype: str = "float32"
    dot_general_cls: layers.DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, features: jax.Array, where: jax.Array, *, train: bool = False) -> jax.Array:
        """Scores `features [batch, list_size, num_features]` -> `[batch, list_size]` float32."""
        del where  # items are scored independently
        dtype = layers.dtype_of(self.dtype)
        x = layers.add_noise(self, jnp.asarray(features, dtype), self.input_noise, train)
        for width in self.hidden_sizes:
            if self.layer_norm:
                x = nn.LayerNorm(dtype=dtype)(x)
            x = layers.Dense(width, dtype=dtype, dot_general_cls=self.dot_general_cls)(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        score = layers.Dense(1, dtype=dtype, dot_general_cls=self.dot_general_cls)(x)
        return score[..., 0].astype(jnp.float32)


def tiny(**overrides) -> Model:
    """A two-layer variant for fast tests."""
    return Model(**{"hidden_sizes": (8, 8), **overrides})
