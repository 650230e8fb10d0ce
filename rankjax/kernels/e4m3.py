"""fp8 e4m3 numerics shared by the kernels, the models and the served fp8 layers.

`quantize` rounds activations to e4m3 with a static scale, in the form XLA's GPU compiler
folds into a cuBLASLt fp8 GEMM; `fp8_dot` is the product of e4m3 operands that XLA rewrites
into one fp8 GEMM. Which layers use them, with which scales, is the compression seam's
business (`rankjax.compression.fp8`); this module holds only the arithmetic.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = 448.0


def quantize(x: jax.Array, scale: jax.Array) -> jax.Array:
    """`x / scale` clipped to ±448 and rounded to e4m3 (out-of-range values would be NaN).

    Computed in `x`'s own dtype with `lax.clamp`: that is the form XLA's GPU compiler folds
    into a cuBLASLt fp8 GEMM that produced `x` in that dtype (the GEMM then writes e4m3
    itself). A float32 detour or `jnp.clip` kept it a separate pass over the activations
    (`benchmarks/fp8_output_probe.py`, docs/performance.md).
    """
    limit = jnp.asarray(E4M3_MAX, x.dtype)
    return jax.lax.clamp(-limit, x / jnp.asarray(scale, x.dtype), limit).astype(E4M3)


def scale_as(scale: jax.Array, dtype: Any) -> jax.Array:
    """`scale` rounded to `dtype`, as float32. `quantize` and `fp8_dot` compute with the
    scale in the activations' dtype, so a kernel that writes a 16-bit layer's e4m3 input
    divides by this value to match them."""
    return jnp.asarray(scale, dtype).astype(jnp.float32)


def fp8_dot(
    x: jax.Array,
    kernel_t: jax.Array,
    input_scale: jax.Array,
    kernel_scale: jax.Array,
    out_dtype: Any,
) -> jax.Array:
    """`x [..., in] @ kernel [in, out]` from e4m3 operands.

    Args:
      x: float activations `[..., in]`, quantized here with the static `input_scale`; or
        e4m3 values a kernel already quantized with that scale.
      kernel_t: e4m3 weights `[out, in]`.
      input_scale, kernel_scale: float32 scalars.
      out_dtype: dtype of the result (the GEMM accumulates in float32).

    Returns:
      `[..., out]` in `out_dtype`.
    """
    # Written as dequantize-then-dot, the pattern XLA's GPU compiler rewrites into one
    # cuBLASLt fp8 GEMM that applies both scales (and a following bias add) itself;
    # elsewhere it is a plain product of the dequantized values.
    xq = x if x.dtype == E4M3 else quantize(x, input_scale)
    dims = (((x.ndim - 1,), (1,)), ((), ()))
    # With the weights compiled into the program (a served artifact), XLA would fold their
    # dequantize into a 16-bit constant and run a 16-bit GEMM; the barrier keeps them e4m3.
    kernel_t = jax.lax.optimization_barrier(kernel_t)
    lhs = xq.astype(out_dtype) * jnp.asarray(input_scale, out_dtype)
    rhs = kernel_t.astype(out_dtype) * jnp.asarray(kernel_scale, out_dtype)
    return jax.lax.dot_general(lhs, rhs, dims, preferred_element_type=out_dtype)
