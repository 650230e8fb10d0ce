"""Fused softmax attention for short sequences, as one Pallas kernel per layer.

A cross-encoder scores (query, product) pairs of ~64 tokens with 32-wide heads. At that
shape XLA's attention is a chain of small kernels: head transposes of q, k and v, a
batched product, the masked softmax over a materialised `[B, heads, T, T]` tensor, a
second batched product and a transpose back. On an H200 those took about 1.5 ms of a
5.4 ms 1,024-pair call, more than a quarter of the model (docs/performance.md), and cuDNN's
flash attention, built for long sequences, was no faster.

Here one program of the grid `(heads, batch)` reads its head's `q, k, v [T, D]` straight
from the projections' `[B, T, heads, D]` layout (strided loads, no transposes), computes
the scores, the masked softmax and the weighted sum in registers, and writes its `[T, D]`
slice of the output in the same layout. The whole key sequence fits one block, so there
is no online-softmax loop. Gradients come from the XLA formulation (`reference`), so the
kernel also serves training without attention dropout.

The kernel is Pallas's Triton backend (NVIDIA GPUs); on other backends it runs in
Pallas's interpreter, which is how the CPU tests check it against `reference`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from rankjax import sharding
from rankjax.kernels import e4m3

# Triton's matrix products need every block dimension >= 16 and a power of two.
_MIN_BLOCK = 16
# The longest sequence `model.attention="auto"` sends here: the whole `[T, T]` score
# block lives in one program's registers, which spill beyond (at T = 256 on an H100 the
# kernel is 14× slower than cuDNN's flash attention, docs/performance.md).
AUTO_MAX_LENGTH = 128
# Up to this length "auto" prefers this kernel to cuDNN's (H100: 1.34× at 64 tokens, cuDNN
# 1.33× at 96); longer rows go to cuDNN unless they are packed (cuDNN takes no segments) or
# served in fp8 (this kernel writes e4m3 for the next product).
AUTO_PALLAS_LENGTH = 64
# Added to masked keys' logits: finite, so a row with no real key averages its `T` keys
# (as XLA's `finfo.min` masking does) instead of dividing 0 by 0. Keys added to round `T`
# up to a block get -inf: they never count.
_MASKED = -1e30


def allowed(mask: jax.Array, segments: jax.Array | None = None) -> jax.Array:
    """Which keys each query may attend to: `[B, 1, 1, T]` real keys (`mask [B, T]`), or
    with `segments [B, T]` (several sequences packed in a row) `[B, 1, T, T]` real keys
    of the query's own segment."""
    keys = mask[:, None, None, :]
    if segments is None:
        return keys
    return keys & (segments[:, None, :, None] == segments[:, None, None, :])


def probabilities(
    q: jax.Array,
    k: jax.Array,
    mask: jax.Array,
    segments: jax.Array | None = None,
    bias: jax.Array | None = None,
) -> jax.Array:
    """XLA's softmax attention weights `[B, heads, T, T]` (float32) of `q, k [B, T, heads,
    D]` over real keys (`mask [B, T]`) of the query's segment (`segments [B, T]`, or
    None: one sequence a row), with `bias` (broadcast to `[B, heads, T, T]`) added to the
    scaled logits; a row with no allowed key weights all keys equally."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(allowed(mask, segments), logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    segments: jax.Array | None = None,
) -> jax.Array:
    """XLA attention: `q, k, v [B, T, heads, D]`, `mask [B, T]` True for real keys,
    `segments [B, T]` (or None) the packed sequence of each token.

    Logits and softmax in float32, the weighted sum in `v`'s dtype; returns
    `[B, T, heads, D]` in `q`'s dtype.
    """
    probs = probabilities(q, k, mask, segments).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v).astype(q.dtype)


def _kernel(q_ref, k_ref, v_ref, bias_ref, *refs, scale: float, segmented: bool, scaled: bool):
    # refs: ([seg_ref,] [coef_ref,] o_ref). With `segmented`, a query sees only keys of
    # its own segment (packed sequences). With `scaled` (fp8 serving) the logits are
    # multiplied by coef[0] and the output by coef[1]; an e4m3 output is clipped to its
    # range first (a larger value would become NaN).
    seg_ref = refs[0] if segmented else None
    coef_ref = refs[int(segmented)] if scaled else None
    o_ref = refs[-1]
    q, k, v = q_ref[...], k_ref[...], v_ref[...]  # [T, D] each
    dims = (((1,), (1,)), ((), ()))
    logits = jax.lax.dot_general(q, k, dims, preferred_element_type=jnp.float32)
    logits = logits * (scale * coef_ref[0] if scaled else scale)
    logits = logits + bias_ref[...][None, :]  # [T, T]
    if segmented:
        seg = seg_ref[...]
        logits = jnp.where(seg[:, None] == seg[None, :], logits, logits + _MASKED)
    top = jnp.max(logits, axis=-1)
    weights = jnp.exp(logits - top[:, None])
    total = jnp.sum(weights, axis=-1)
    out = jnp.dot(weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / (total[:, None] / coef_ref[1] if scaled else total[:, None])
    if o_ref.dtype == jnp.float8_e4m3fn:
        out = jnp.clip(out, -e4m3.E4M3_MAX, e4m3.E4M3_MAX)
    o_ref[...] = out.astype(o_ref.dtype)


def _block(n: int) -> int:
    return max(_MIN_BLOCK, pl.next_power_of_2(n))


def _pad(x: jax.Array, axis: int, size: int) -> jax.Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _slot(j: int):
    """Index map of slot `j` (q, k or v) of a packed `[B, T, 3, heads, D]` array."""
    return lambda h, b: (b, 0, j, h, 0)


def _forward(arrays, mask, segments, num_warps: int, interpret: bool, coef=None, out_dtype=None):
    """`arrays`: `(q, k, v)`, each `[B, T, heads, D]`, or `(qkv,)` packed `[B, T, 3,
    heads, D]` (read in place, three times). `segments`: None or int `[B, T]`. `coef`:
    None, or float32 `[2]` (logit and output multipliers). Returns `[B, T, heads, D]` in
    `out_dtype` (default: the inputs'). Under a mesh context each device runs the kernel on
    its share of the batch (`sharding.per_batch_shard`)."""
    length, width = arrays[0].shape[1], arrays[0].shape[-1]
    t, d = _block(length), _block(width)
    arrays = [_pad(_pad(x, 1, t), x.ndim - 1, d) for x in arrays]
    bias = jnp.where(mask, 0.0, _MASKED).astype(jnp.float32)
    bias = jnp.pad(bias, ((0, 0), (0, t - length)), constant_values=-jnp.inf)
    extra = [] if segments is None else [_pad(segments.astype(jnp.int32), 1, t)]
    batched = (True,) * (len(arrays) + 1 + len(extra))
    if coef is not None:
        extra.append(jnp.asarray(coef, jnp.float32))
        batched += (False,)
    run = functools.partial(
        _call,
        packed=len(arrays) == 1,
        segmented=segments is not None,
        scaled=coef is not None,
        scale=1.0 / float(np.sqrt(width)),
        num_warps=num_warps,
        interpret=interpret,
        out_dtype=out_dtype or arrays[0].dtype,
    )
    out = sharding.per_batch_shard(run, *arrays, bias, *extra, batched=batched)
    return out[:, :length, :, :width]


def _call(
    *args,
    packed: bool,
    segmented: bool,
    scaled: bool,
    scale: float,
    num_warps: int,
    interpret: bool,
    out_dtype,
):
    """The kernel over the sequences `args` hold (padded to blocks): `(qkv, bias[,
    segments][, coef])` when `packed`, else `(q, k, v, bias[, segments][, coef])`."""
    arrays = args[:1] * 3 if packed else args[:3]
    bias, *extra = args[1:] if packed else args[3:]
    batch, t = arrays[0].shape[:2]
    heads, d = arrays[0].shape[-2:]
    head = pl.BlockSpec((None, t, None, d), lambda h, b: (b, 0, h, 0))
    if packed:
        specs = [pl.BlockSpec((None, t, None, None, d), _slot(j)) for j in range(3)]
    else:
        specs = [head] * 3
    row = pl.BlockSpec((None, t), lambda h, b: (b, 0))
    specs += [row] * (1 + segmented)
    if scaled:
        specs.append(pl.BlockSpec((2,), lambda h, b: (0,)))
    call = pl.pallas_call(
        functools.partial(_kernel, scale=scale, segmented=segmented, scaled=scaled),
        out_shape=jax.ShapeDtypeStruct((batch, t, heads, d), out_dtype),
        # Heads outer: a 1,024 x 64 call took 92 us a layer against 105 us with the
        # batch outer (H200, docs/performance.md).
        grid=(heads, batch),
        in_specs=specs,
        out_specs=head,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="short_attention",
    )
    return call(*arrays, bias, *extra)


def _split(arrays: tuple) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(q, k, v)` of `arrays`: the three arrays, or the slots of one packed array."""
    if len(arrays) == 3:
        return arrays
    (qkv,) = arrays
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


# `arrays` as `_forward` takes them; gradients through XLA's formulation (`reference`).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fused(arrays, mask, segments, num_warps, interpret):
    return _forward(arrays, mask, segments, num_warps, interpret)


def _fused_fwd(arrays, mask, segments, num_warps, interpret):
    out = _forward(arrays, mask, segments, num_warps, interpret)
    return out, (arrays, mask, segments)


def _fused_bwd(num_warps, interpret, residuals, grad):
    arrays, mask, segments = residuals
    _, vjp = jax.vjp(lambda a: reference(*_split(a), mask, segments), arrays)
    return (*vjp(grad), None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _interpret(interpret: bool | None) -> bool:
    return jax.default_backend() != "gpu" if interpret is None else interpret


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    num_warps: int = 4,
    interpret: bool | None = None,
    segments: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention of every query over the real keys, fused into one kernel.

    Args:
      q, k, v: `[B, T, heads, D]` in one float dtype (bf16 or f16 for speed).
      mask: `[B, T]`, True for real keys. A row with no real key averages all keys.
      segments: None, or int `[B, T]`: several sequences packed in a row, each token
        attending only to keys of its own segment (`data.packing`).
      num_warps: Triton warps per program (one program per sequence and head).
      interpret: run Pallas's interpreter; None: on any backend but GPU.

    Returns:
      `[B, T, heads, D]` in `q`'s dtype. Sequences longer than a few hundred tokens
      exceed one block's registers: use a flash-attention kernel for those.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must share a [B, T, heads, D] shape; got {q.shape}, {k.shape}, {v.shape}"
        )
    _check_rows(q.shape[:2], mask, segments)
    return _fused((q, k, v), mask.astype(bool), segments, num_warps, _interpret(interpret))


def _check_rows(shape: tuple[int, int], mask: jax.Array, segments: jax.Array | None) -> None:
    for name, a in (("mask", mask), ("segments", segments)):
        if a is not None and a.shape != shape:
            raise ValueError(f"{name} must be [B, T] = {shape}; got {a.shape}")


def packed_attention(
    qkv: jax.Array,
    mask: jax.Array,
    num_warps: int = 2,
    interpret: bool | None = None,
    slot_scales: jax.Array | None = None,
    out_scale: jax.Array | None = None,
    segments: jax.Array | None = None,
) -> jax.Array:
    """`attention` of q, k and v packed in one array, as one projection with
    `[in, 3 * heads * D]` weights writes them: the kernel reads each slot in place, so
    no slice is copied out.

    Args:
      qkv: `[B, T, 3, heads, D]`: q, k, v along axis 2.
      mask: `[B, T]`, True for real keys.
      num_warps: Triton warps per program. At `[1024, 64, 3, 12, 32]` bf16 on an H200
        the kernel took 123, 92, 97 and 128 us with 1, 2, 4 and 8 warps (no less with 2
        or 4 heads per program, or 16 or 32 queries per program; docs/performance.md).
      interpret: as for `attention`.
      slot_scales: None, or float32 `[3]`: q, k and v are `qkv`'s slots times these
        (fp8 serving: one product of three layers' e4m3 weights leaves each layer's
        weight scale to apply, and the kernel applies it for free).
      out_scale: None, or a float32 scalar: the output is written in e4m3, divided by
        it and clipped to ±448 (the next fp8 layer's input, quantized in the kernel).
      segments: as for `attention`.

    Returns:
      `[B, T, heads, D]` in `qkv`'s dtype, or e4m3 with `out_scale`. With either scale
      argument the call serves only (no gradient).
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [B, T, 3, heads, D]; got {qkv.shape}")
    _check_rows(qkv.shape[:2], mask, segments)
    mask = mask.astype(bool)
    if slot_scales is None and out_scale is None:
        return _fused((qkv,), mask, segments, num_warps, _interpret(interpret))
    q_scale, k_scale, v_scale = (
        jnp.ones(3, jnp.float32) if slot_scales is None else jnp.asarray(slot_scales, jnp.float32)
    )
    output = v_scale if out_scale is None else v_scale / e4m3.scale_as(out_scale, qkv.dtype)
    coef = jnp.stack([q_scale * k_scale, output])
    out_dtype = None if out_scale is None else jnp.float8_e4m3fn
    return _forward((qkv,), mask, segments, num_warps, _interpret(interpret), coef, out_dtype)
