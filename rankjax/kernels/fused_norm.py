"""Layer normalization as one Pallas kernel: statistics and output in a single pass.

XLA computes a LayerNorm over `[tokens, 384]` as a reduction kernel for the statistics,
a small kernel for `rsqrt`, and an elementwise kernel that normalizes and casts, and a
BERT layer in bf16 with float32 LayerNorm outputs adds residual sums in float32 on top.
On an H200 scoring 1,024 pairs of 64 tokens, those passes took about 1 ms of a 4.0 ms
call (docs/performance.md). Here one program normalizes a block of rows: it reads each row
once, keeps it in registers for the mean, the variance (two-pass, in float32) and the
affine map, and writes the output in the input's dtype. The residual sum before it
fuses into the preceding matrix product's epilogue (cuBLASLt's `beta` add) when both
terms are bf16.

The kernel is Pallas's Triton backend (NVIDIA GPUs); elsewhere it runs in Pallas's
interpreter, which is how the CPU tests check it. Gradients come from the XLA
formulation (`reference`).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from rankjax import sharding
from rankjax.kernels import e4m3

# Rows per program (a power of two dividing the row count; fewer if it does not).
# 4 to 16 rows per program timed the same on an H200 at 384 features with 4 warps; with
# the e4m3 copy 32 rows cost more (docs/performance.md).
_ROWS = 16
# Warps per program. On an H200, 8 warps against 4 at 16 rows cut a [65536, 384]
# LayerNorm with its e4m3 copy from 37.9 to 33.9 us, and the scorer's kernel time per
# 1,024 x 64 call by 1.7% (bf16) and 2.4% (fp8) (docs/performance.md).
_WARPS = 8
# Features are read in chunks of the largest power of two dividing the width, at most
# this wide: Triton's tensors must have power-of-two sizes, and 384 = 3 x 128.
_MAX_CHUNK = 128


def reference(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm over the last axis in float32 (two-pass variance); `x`'s dtype out."""
    xf = x.astype(jnp.float32)
    centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(variance + epsilon) * scale + bias
    return y.astype(x.dtype)


def _kernel(x_ref, scale_ref, bias_ref, *refs, epsilon: float):
    # x_ref [rows, chunks, chunk]; scale_ref, bias_ref [chunks, chunk]. refs: (o_ref,), or
    # (divisor_ref [1], o_ref, q_ref) to also write the output divided by the divisor in
    # e4m3 (the input of an fp8 layer).
    divisor_ref, o_ref, q_ref = refs if len(refs) == 3 else (None, *refs, None)
    chunks = x_ref.shape[1]
    parts = [x_ref[:, j, :].astype(jnp.float32) for j in range(chunks)]
    width = chunks * x_ref.shape[2]
    mean = sum(jnp.sum(p, axis=1) for p in parts) / width
    centred = [p - mean[:, None] for p in parts]
    variance = sum(jnp.sum(p * p, axis=1) for p in centred) / width
    rstd = jax.lax.rsqrt(variance + epsilon)[:, None]
    for j, p in enumerate(centred):
        scale = scale_ref[j, :].astype(jnp.float32)[None, :]
        bias = bias_ref[j, :].astype(jnp.float32)[None, :]
        y = (p * rstd * scale + bias).astype(o_ref.dtype)
        o_ref[:, j, :] = y
        if q_ref is not None:
            # From the rounded output, as quantizing the output separately would.
            scaled = y.astype(jnp.float32) / divisor_ref[0]
            q_ref[:, j, :] = jnp.clip(scaled, -e4m3.E4M3_MAX, e4m3.E4M3_MAX).astype(q_ref.dtype)


def _chunk(width: int) -> int:
    return min(width & -width, _MAX_CHUNK)


def _rows(leading: tuple) -> int:
    """Rows per program: a power of two dividing the row count's static factor (under
    symbolic shapes only some axes are known; a Triton kernel still needs a static grid,
    so `export` does not use this kernel)."""
    static = math.prod(d for d in leading if isinstance(d, int))
    return min(_ROWS, static & -static)


def _forward(x, scale, bias, epsilon, num_warps, interpret, out_scale=None):
    """The kernel over `x`'s rows; under a mesh context each device normalizes its share
    of the batch (`sharding.per_batch_shard`)."""
    width = x.shape[-1]
    chunk = _chunk(width)
    x3 = x.reshape(-1, width // chunk, chunk)
    # Parameters keep their dtype (the kernel casts them): a separate cast would be two
    # more kernel launches per LayerNorm.
    args = [x3, *(p.reshape(width // chunk, chunk) for p in (scale, bias))]
    if out_scale is not None:
        args.append(e4m3.scale_as(out_scale, x.dtype).reshape(1))
    run = functools.partial(
        _call,
        epsilon=epsilon,
        rows=_rows(x.shape[:-1]),
        num_warps=num_warps,
        interpret=interpret,
    )
    batched = (True,) + (False,) * (len(args) - 1)
    outs = [y.reshape(x.shape) for y in sharding.per_batch_shard(run, *args, batched=batched)]
    return outs[0] if out_scale is None else tuple(outs)


def _call(x3, *args, epsilon: float, rows: int, num_warps: int, interpret: bool) -> list:
    """The kernel over `x3 [rows, chunks, chunk]`; `args`: scale and bias `[chunks,
    chunk]`, and the e4m3 copy's divisor `[1]` when it is written."""
    if isinstance(x3.shape[0], int):  # one device's share may hold fewer rows
        rows = min(rows, x3.shape[0] & -x3.shape[0])
    block = pl.BlockSpec((rows,) + x3.shape[1:], lambda i: (i, 0, 0))
    params = pl.BlockSpec(x3.shape[1:], lambda i: (0, 0))
    specs, out_shape = [block, params, params], [jax.ShapeDtypeStruct(x3.shape, x3.dtype)]
    if len(args) == 3:
        specs.append(pl.BlockSpec((1,), lambda i: (0,)))
        out_shape.append(jax.ShapeDtypeStruct(x3.shape, jnp.float8_e4m3fn))
    call = pl.pallas_call(
        functools.partial(_kernel, epsilon=epsilon),
        out_shape=out_shape,
        grid=(x3.shape[0] // rows,),
        in_specs=specs,
        out_specs=[block] * len(out_shape),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="layer_norm",
    )
    return call(x3, *args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _layer_norm(x, scale, bias, epsilon, num_warps, interpret):
    return _forward(x, scale, bias, epsilon, num_warps, interpret)


def _layer_norm_fwd(x, scale, bias, epsilon, num_warps, interpret):
    return _forward(x, scale, bias, epsilon, num_warps, interpret), (x, scale, bias)


def _layer_norm_bwd(epsilon, num_warps, interpret, residuals, grad):
    x, scale, bias = residuals
    _, vjp = jax.vjp(lambda *a: reference(*a, epsilon), x, scale, bias)
    return vjp(grad)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    epsilon: float,
    num_warps: int = _WARPS,
    interpret: bool | None = None,
    out_scale: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """LayerNorm of `x [..., F]` over its last axis by one fused kernel.

    Args:
      x: any float dtype; statistics are computed in float32.
      scale, bias: `[F]`.
      epsilon: added to the variance.
      num_warps: Triton warps per program.
      interpret: run Pallas's interpreter; None: on any backend but GPU.
      out_scale: None, or a float32 scalar: the kernel also writes the output divided by
        it, clipped to ±448, in e4m3 (the input of an fp8 layer, quantized in the same
        pass). Serving only: no gradient.

    Returns:
      `[..., F]` in `x`'s dtype; with `out_scale`, that and its e4m3 copy.
    """
    if scale.shape != x.shape[-1:] or bias.shape != x.shape[-1:]:
        raise ValueError(
            f"scale and bias must be [{x.shape[-1]}] for x {x.shape}; got {scale.shape}, "
            f"{bias.shape}"
        )
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if out_scale is not None:
        return _forward(x, scale, bias, float(epsilon), num_warps, interpret, out_scale)
    return _layer_norm(x, scale, bias, float(epsilon), num_warps, interpret)


class LayerNorm(nn.Module):
    """`nn.LayerNorm`'s parameters (`scale` ones, `bias` zeros, float32) computed by
    `layer_norm`: the output keeps the input's dtype (no float32 copy of the stream)."""

    epsilon: float = 1e-6

    @nn.compact
    def __call__(
        self, x: jax.Array, out_scale: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Maps `[..., F]` to `[..., F]` in `x`'s dtype (and its e4m3 copy divided by
        `out_scale`, when given; see `layer_norm`)."""
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        return layer_norm(x, scale, bias, self.epsilon, out_scale=out_scale)
