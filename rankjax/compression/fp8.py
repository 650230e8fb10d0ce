"""Served fp8 layers that XLA runs as native fp8 GEMMs (Hopper and later GPUs).

AQT's served layers compute each call's activation ranges and dequantize in separate
steps; on an H200 that makes int8 serving slower than bf16 (`../shared/PERF_NOTES.md`).
What is faster there is fp8 e4m3 with every scale fixed before serving:

* weights: e4m3 values with one scale per tensor, stored `[out, in]` (the "TN" layout the
  fp8 GEMM wants, so no transpose runs per call);
* activations: one static scale per layer input, calibrated as the mean over a few
  training batches of the batch's absolute maximum (AQT's `MeanOfAbsMax`); larger values
  are clipped to the e4m3 range;
* the product: `dot(x_e4m3, w_e4m3)` accumulated by the GEMM in float32, scaled by the
  two scales and returned in the layer's dtype.

A layer quantizes its own input unless the input arrives in e4m3 already: served fp8
is faster than bf16 only when no quantize runs as a pass of its own. `Seam` tells a model
the scales its kernels need to write e4m3 (the BERT encoder's LayerNorm and attention
kernels do, and the feed-forward GEMM writes e4m3 when XLA folds the quantize into it;
docs/performance.md has the H200 figures).

`Fp8DotGeneral` plugs into the dense-layer seam (`models.layers.Dense`) in three phases:
`calibrate` (float product, ranges collected), `convert` (float product, fp8 weights and
scales written) and `serve` (the fp8 product; the layer then holds no float kernel).
`compression.quantization.Quantizer(serving="fp8")` builds a `Seam` of these for the
trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rankjax.kernels.e4m3 import E4M3, E4M3_MAX, fp8_dot, quantize, scale_as  # noqa: F401

PHASES = ("calibrate", "convert", "serve")


def weight_scale(kernel: jax.Array) -> jax.Array:
    """One scale for the whole kernel: its absolute maximum maps to 448 (1 if all zero)."""
    amax = jnp.max(jnp.abs(kernel.astype(jnp.float32)))
    return jnp.where(amax > 0, amax / E4M3_MAX, 1.0)


class Fp8DotGeneral(nn.Module):
    """A `lax.dot_general` stand-in for one dense layer, in one of `PHASES`.

    Attributes:
      phase: `"calibrate"`, `"convert"` or `"serve"`.
      frozen_collection: variable collection of the served weights and scales.
      calibration_collection: collection of the activation range statistics.
    """

    phase: str
    frozen_collection: str = "aqt"
    calibration_collection: str = "aqt_calibration"

    @property
    def reads_frozen_weights(self) -> bool:
        """Serving reads its own fp8 kernel; the layer then declares no float kernel."""
        return self.phase == "serve"

    @property
    def takes_e4m3(self) -> bool:
        """Serving also takes inputs already quantized with its `input_scale` (by a kernel
        that wrote its output in e4m3: `Seam.served` tells producers the scale)."""
        return self.phase == "serve"

    @nn.compact
    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: Any,
        precision: Any = None,
        preferred_element_type: Any = None,
    ) -> jax.Array:
        """The dense layer's product `lhs [..., in] @ rhs [in, out]`."""
        if self.phase not in PHASES:
            raise ValueError(f"phase={self.phase!r}; valid: {list(PHASES)}")
        (contract, _), (batch, _) = dimension_numbers
        if rhs.ndim != 2 or tuple(contract) != (lhs.ndim - 1,) or tuple(batch):
            raise ValueError(
                f"fp8 layers serve dense products x[..., in] @ kernel[in, out]; got lhs "
                f"{lhs.shape}, rhs {rhs.shape}, dimension_numbers {dimension_numbers}"
            )
        if lhs.dtype == E4M3 and not self.takes_e4m3:
            raise ValueError(f"phase={self.phase!r} takes float inputs; got e4m3 {lhs.shape}")
        # An e4m3 input leaves the result in the layer's dtype (the placeholder kernel's).
        out_dtype = preferred_element_type or (rhs.dtype if lhs.dtype == E4M3 else lhs.dtype)
        if self.phase != "serve":
            calibration = self.calibration_collection
            amax_sum = self.variable(calibration, "input_amax_sum", jnp.zeros, (), jnp.float32)
            count = self.variable(calibration, "count", jnp.zeros, (), jnp.float32)
        if self.phase == "calibrate":
            if not self.is_initializing():
                amax_sum.value += jnp.max(jnp.abs(lhs.astype(jnp.float32)))
                count.value += 1.0
            return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, out_dtype)
        frozen = self.frozen_collection
        shape_t = (rhs.shape[1], rhs.shape[0])
        kernel = self.variable(frozen, "kernel", jnp.zeros, shape_t, E4M3)
        kernel_scale = self.variable(frozen, "kernel_scale", jnp.ones, (), jnp.float32)
        input_scale = self.variable(frozen, "input_scale", jnp.ones, (), jnp.float32)
        if self.phase == "convert":
            mean_amax = amax_sum.value / jnp.maximum(count.value, 1.0)
            input_scale.value = jnp.where(mean_amax > 0, mean_amax / E4M3_MAX, 1.0)
            kernel_scale.value = weight_scale(rhs)
            kernel.value = quantize(rhs.T, kernel_scale.value)
            return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, out_dtype)
        return fp8_dot(lhs, kernel.value, input_scale.value, kernel_scale.value, out_dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class Seam:
    """The fp8 model seam of one phase (a `models.layers.DotGeneralFactory`): `seam(path)`
    is an `Fp8DotGeneral` for the layers `quantizes(path)` selects, None for the others.

    It also tells a model what fp8 serving lets it fuse:

    * `flat_tokens`: ranges are per-tensor scalars whatever the input's rank, so a model
      may run products on `[tokens, features]`. XLA folds the next layer's input quantize
      into a GEMM's output only on 2D products (docs/performance.md).
    * `served(module, *path)`: the frozen fp8 variables of the layer at `path` below
      `module`, so a kernel can write its output already quantized with that layer's input
      scale, or one product can compute several layers that read the same input.
    """

    phase: str
    quantizes: Callable[[str], bool]
    frozen_collection: str = "aqt"
    calibration_collection: str = "aqt_calibration"
    name: str = "quant_dot_general"

    flat_tokens = True

    def __call__(self, path: str) -> Fp8DotGeneral | None:
        if not self.quantizes(path):
            return None
        collections = dict(
            frozen_collection=self.frozen_collection,
            calibration_collection=self.calibration_collection,
        )
        return Fp8DotGeneral(self.phase, name=self.name, **collections)

    def served(self, module: nn.Module, *path: str) -> dict[str, jax.Array] | None:
        """`{"kernel": e4m3 [out, in], "kernel_scale": (), "input_scale": ()}` of the layer
        at `path` (submodule names below `module`), from the variables `module` is applied
        with; None unless serving a quantized layer there (or while initialising)."""
        if self.phase != "serve":
            return None
        node = module.variables.get(self.frozen_collection)
        for key in (*path, self.name):
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return dict(node)
