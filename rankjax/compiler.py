"""How rankjax compiles its models: `jax.jit` plus XLA options chosen per backend.

On NVIDIA GPUs XLA's Triton GEMM emitter claims a matrix product together with the
elementwise work around it before cuBLAS's epilogue rewrite can see it; autotuning then
often runs the product on cuBLAS anyway, with the bias or activation left as a separate
pass over memory. With Triton GEMMs off, cuBLASLt takes bias and GELU into the GEMM
epilogue (`BIAS_GELU`). On an H200 the MiniLM-shaped cross-encoder's 1,024 × 64 scoring
call went from 4.85 to 4.00 ms of GPU time with that option alone (docs/performance.md).

Excess precision is off on GPUs: with it, XLA drops a convert pair such as
`f32 -> e4m3 -> f32` as a rounding it may skip, so a served fp8 product that does not
become an fp8 GEMM (a shape cuBLASLt refuses) would silently compute with unquantized
activations, and report better quality than the fp8 model has. Off, it cost nothing
measurable on the H200 (bf16 and fp8 scorers' docs/s and 64-pair latency within noise).

`jit` applies `OPTIONS[backend]` where rankjax compiles a model for inference (scoring,
evaluation, serving); other backends compile with XLA's defaults. Training steps keep
XLA's defaults: there Triton GEMMs pay, and the cross-encoder's fine-tuning step ran
44.2k pairs/s with them against 40.7k without (docs/performance.md). Only the BERT
cross-encoder was timed both ways; the retrieval models' scoring (two-tower, DCN,
SASRec) takes the option untimed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

OPTIONS: dict[str, dict[str, Any]] = {
    "gpu": {"xla_gpu_enable_triton_gemm": False, "xla_allow_excess_precision": False},
}


def options(backend: str | None = None) -> dict[str, Any] | None:
    """The XLA options for `backend` (default: JAX's default backend), or None."""
    chosen = OPTIONS.get(backend or jax.default_backend())
    return dict(chosen) if chosen else None


def jit(fn: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fn, **kwargs)` compiled with `options()` for the default backend: for
    inference (scoring, evaluation, serving), not training steps."""
    return jax.jit(fn, compiler_options=options(), **kwargs)
