"""The one dense-layer seam of rankjax's models.

Every matrix product with a learned weight goes through `Dense`, so quantization (a
`dot_general` module factory from `rankjax.compression.quantization`) and, later, sparsity
reach every model without touching model code. Parameters are stored in `param_dtype`
(float32); the product runs in `dtype` (e.g. bfloat16 for mixed precision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.types import Seam

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# The quantization seam (`rankjax.types.Seam`), called once per layer inside its scope.
DotGeneralFactory = Seam


def flat_tokens(seam: DotGeneralFactory | None) -> bool:
    """Whether a model may run products of this seam on `[tokens, features]` rather than
    `[batch, tokens, features]`: always in float, and where the seam says so (fp8). AQT's
    static ranges are stored with the input's rank, so AQT seams keep the shapes."""
    return seam is None or getattr(seam, "flat_tokens", False)


def dtype_of(name: str) -> Any:
    """Maps a config string such as `"bfloat16"` to a JAX dtype, listing valid names."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {list(DTYPES)}")
    return DTYPES[name]


class Dense(nn.Module):
    """`y = x @ kernel + bias` over the last axis of `x`.

    Attributes:
      features: output width.
      use_bias: add a bias.
      dtype: computation dtype; inputs and kernel are cast to it.
      param_dtype: storage dtype of parameters.
      kernel_init: kernel initializer.
      dot_general_cls: the quantization seam; None means `jax.lax.dot_general`. A
        dot_general with `reads_frozen_weights` (a served quantized layer) brings its own
        integer weights, and the layer then declares no float kernel.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    dot_general_cls: DotGeneralFactory | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps `[..., in_features]` to `[..., features]`."""
        shape = (x.shape[-1], self.features)
        dot_general = self.dot_general_cls("/".join(self.path)) if self.dot_general_cls else None
        if getattr(dot_general, "reads_frozen_weights", False):
            # Served quantized layer: a placeholder the dot_general ignores (XLA drops it).
            kernel = jnp.zeros(shape, self.param_dtype)
        else:
            kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        if x.dtype == jnp.float8_e4m3fn:
            # Quantized by the producer with this layer's input scale (fp8 serving).
            if not getattr(dot_general, "takes_e4m3", False):
                raise ValueError(f"{'/'.join(self.path)}: e4m3 input to a float layer")
        else:
            x = jnp.asarray(x, self.dtype)
        dot_general = dot_general or jax.lax.dot_general
        dims = (((x.ndim - 1,), (0,)), ((), ()))
        y = dot_general(x, jnp.asarray(kernel, self.dtype), dims, precision=None)
        if self.use_bias:
            y = y + jnp.asarray(_bias(self, self.features), self.dtype)
        return y


def _bias(module: nn.Module, features: int) -> jax.Array:
    return module.param("bias", nn.initializers.zeros, (features,), module.param_dtype)


class DenseParams(nn.Module):
    """The parameters `Dense(features)` declares (same names, shapes and initialisers),
    without the product: for a fused projection that concatenates several layers' weights
    and computes them in one matrix product.
    """

    features: int
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        """Returns `kernel [in_features, features]` and `bias [features]`."""
        shape = (in_features, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        return kernel, _bias(self, self.features)


class Embed(nn.Module):
    """A lookup table `[num_embeddings, features]`, float or served quantized.

    Attributes:
      num_embeddings: rows (vocabulary size).
      features: width.
      bits: 0 reads the float parameter `embedding`; 8 or 4 reads a served row-wise
        quantized table (`values`, `scales`; see `compression.embeddings`).
      row_multiple: the table's rows are padded with zero rows to a multiple of this, so
        it splits evenly over a mesh axis; the real rows are initialised exactly as
        without padding (the padded table trains like the unpadded one).
    """

    num_embeddings: int
    features: int
    bits: int = 0
    row_multiple: int = 1

    @property
    def rows(self) -> int:
        return -(-self.num_embeddings // self.row_multiple) * self.row_multiple

    def _init(self, key: jax.Array, shape: tuple[int, int], dtype) -> jax.Array:
        real = nn.initializers.normal(stddev=0.02)(key, (self.num_embeddings, shape[1]), dtype)
        return jnp.pad(real, ((0, shape[0] - self.num_embeddings), (0, 0)))

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        """Maps int `ids [...]` to `[..., features]` float32."""
        if not self.bits:
            table = self.param("embedding", self._init, (self.rows, self.features), jnp.float32)
            return jnp.take(table, ids, axis=0)
        width = self.features // 2 if self.bits == 4 else self.features
        dtype = jnp.uint8 if self.bits == 4 else jnp.int8
        values = self.param("values", nn.initializers.zeros, (self.rows, width), dtype)
        scales = self.param(
            "scales",
            nn.initializers.zeros,
            (self.rows, self.features // group_size(self.features)),
            jnp.float32,
        )
        return lookup(values, scales, ids, self.bits)


# Served embedding tables (`rankjax.compression.embeddings` writes them): int8 rows, or
# int4 packed two to a byte, with one float scale per group of `group_size` columns.
MAX_GROUP = 128


def group_size(width: int) -> int:
    """Columns per scale: 128, or the whole row if narrower (or not a multiple of 128)."""
    return MAX_GROUP if width % MAX_GROUP == 0 else width


def lookup(values: jnp.ndarray, scales: jnp.ndarray, ids: jnp.ndarray, bits: int) -> jnp.ndarray:
    """Dequantized rows `ids [...]` -> `[..., H]` float32 of a quantized table."""
    rows = jnp.take(values, ids, axis=0)
    if bits == 4:
        low = (rows & 0x0F).astype(jnp.int8)
        high = (rows >> 4).astype(jnp.int8)
        # Sign-extend the 4-bit two's complement nibbles.
        low = jnp.where(low > 7, low - 16, low)
        high = jnp.where(high > 7, high - 16, high)
        rows = jnp.stack([low, high], axis=-1).reshape(rows.shape[:-1] + (-1,))
    s = jnp.take(scales, ids, axis=0)
    group = rows.shape[-1] // s.shape[-1]
    x = rows.astype(jnp.float32).reshape(rows.shape[:-1] + (s.shape[-1], group))
    return (x * s[..., None]).reshape(rows.shape)


def embed_pooled(table: Embed, ids: jax.Array) -> jax.Array:
    """`ids [n]` -> `[n, features]`; a token sequence `ids [n, k]` -> the mean of its known
    tokens' rows (id 0 is padding/unknown and does not move the mean)."""
    if ids.ndim == 1:
        return table(ids)
    known = (ids > 0)[..., None]
    summed = jnp.sum(jnp.where(known, table(ids), 0.0), axis=-2)
    return summed / jnp.maximum(known.sum(-2), 1)


def add_noise(module: nn.Module, x: jax.Array, std: float, train: bool) -> jax.Array:
    """`x + N(0, std^2)` while training (drawn from the module's `dropout` RNG stream)."""
    if not train or std <= 0:
        return x
    noise = jax.random.normal(module.make_rng("dropout"), x.shape, jnp.float32) * std
    return x + noise.astype(x.dtype)
