"""Quantization through Qwix (`qwix`), the second backend (`quant.backend="qwix"`).

AQT reaches a model through the `dot_general` seam of `models.layers.Dense`; Qwix instead
intercepts the JAX products (`jax.lax.dot_general`, `jnp.einsum`, `jnp.dot`) that a Flax
module makes while it runs, so it quantizes any Flax module, `flax.linen.Dense` included.
`wrap(quantizer, module, phase)` returns the module quantized for `phase`:

* `"train"`: quantized training (Qwix's QT: weights per output channel, activations per
  row, dynamic ranges, straight-through gradients in float unless `backward_bits`);
  unchanged under PTQ.
* `"convert"`: Qwix's PTQ module, whose parameters are quantized arrays; `convert`
  quantizes trained float parameters for it (`qwix.quantize_params`).
* `"serve"`: the PTQ module reading the stored integer (or e4m3) weights.

Only products with a learned weight are quantized, as under AQT: a product of two
activations (attention's `q k^T` and `p v`) stays float, and the layers are chosen by the
same `quant.layers` / `quant.exclude` regexes over module paths.

The served tree stores each quantized kernel in Qwix's pre-quantized layout,
`params/<layer>/kernel/{qvalue, scale}` (int8, int4 or e4m3 values, float32 scales of
shape `[1, out]`), which `serve` reads back without a template. Activation ranges are
dynamic: `calibration="static"` is AQT's (`Quantizer` refuses it with Qwix).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import qwix

# Qwix keeps the wrapper of a quantized parameter, its parameter finder and the
# quantization recipe below its public API; they are needed to read a stored served tree
# without running the model, and are pinned by the version floor in setup.py.
from qwix._src.core.qarray import HowToQuantize
from qwix._src.providers.ptq import WithAux
from qwix._src.utils.flax_util import find_param

if TYPE_CHECKING:
    import flax.linen as nn

    from rankjax.compression.quantization import Quantizer

QVALUE, SCALE = "qvalue", "scale"
_INT = {8: jnp.int8, 4: jnp.int4}


def seam(path: str) -> None:
    """The model seam under Qwix: every `Dense` multiplies with `jax.lax.dot_general`,
    which Qwix intercepts. It is not None, so models take their quantizable paths (e.g.
    the text encoder's three separate q, k and v products rather than one product of
    concatenated kernels, which would not be a parameter Qwix recognises)."""
    del path
    return None


def _qtypes(q: Quantizer) -> tuple[Any, Any, Any]:
    """(weight, activation, gradient) qtypes of `q`; None leaves that side float."""
    if q.fp8:
        weights = jnp.float8_e4m3fn
        activations = jnp.float8_e4m3fn if q.activation_bits else None
        grads = jnp.float8_e5m2 if q.backward_bits else None
    else:
        weights = _INT[q.weight_bits]
        activations = _INT[q.activation_bits] if q.activation_bits else None
        grads = _INT[q.backward_bits] if q.backward_bits else None
    return weights, activations, grads


def _calibration(qtype: Any) -> str:
    """Qwix's calibration method for `qtype`: the absolute maximum, widened for integers
    so that it maps to 127 (7 for int4), as AQT's does.

    Qwix maps it to 127.5 (7.5) and leaves the rounded 128 (8) to the float-to-integer
    conversion to saturate, which XLA does not promise: the same quantized model on one
    and on eight CPU devices gave different scores. Widening by 127.5 / 127 keeps every
    value within [-127, 127]; floats (e4m3) are clipped by Qwix itself.
    """
    if qtype is None or jnp.issubdtype(qtype, jnp.floating):
        return "absmax"
    top = int(jnp.iinfo(qtype).max)
    return f"absmax,{(top + 0.5) / top!r}"


def rules(q: Quantizer, training: bool) -> list[qwix.QuantizationRule]:
    """Qwix rules for `q`: excluded paths first (float), then the selected ones.

    Qwix matches `module_path` with `re.fullmatch`; `.*(?:R).*` does so exactly where
    `re.search(R)` finds `R`, which is how `Quantizer.quantizes` reads the regexes.
    """
    weights, activations, grads = _qtypes(q)
    out: list[qwix.QuantizationRule] = []
    if q.exclude:
        out.append(qwix.QuantizationRule(module_path=f".*(?:{q.exclude}).*"))
    kwargs: dict[str, Any] = dict(
        module_path=f".*(?:{q.layers}).*",
        weight_qtype=weights,
        act_qtype=activations,
        weight_calibration_method=_calibration(weights),
        act_calibration_method=_calibration(activations),
    )
    if training:
        out.append(qwix.QtRule(bwd_qtype=grads, **kwargs))
    else:
        out.append(qwix.QuantizationRule(**kwargs))
    return out


def _has_weight(*operands: Any) -> bool:
    """Whether one operand is a parameter of the current module (or a quantized one).

    Qwix would otherwise quantize products of two activations in a matched module too.
    """
    return any(isinstance(o, WithAux) or find_param(o) is not None for o in operands)


class _WeightProducts:
    """Provider methods that pass products without a learned weight to JAX unquantized."""

    def dot_general(self, lhs, rhs, *args, **kwargs):
        if not _has_weight(lhs, rhs):
            return jax.lax.dot_general(lhs, rhs, *args, **kwargs)
        return super().dot_general(lhs, rhs, *args, **kwargs)

    def einsum(self, subscripts, *operands, **kwargs):
        if not _has_weight(*operands):
            return jnp.einsum(subscripts, *operands, **kwargs)
        return super().einsum(subscripts, *operands, **kwargs)


class _Training(_WeightProducts, qwix.QtProvider):
    """Qwix's quantized training, restricted to products with a learned weight."""


class _Serving(_WeightProducts, qwix.PtqProvider):
    """Qwix's PTQ, restricted to products with a learned weight, reading stored kernels.

    A kernel stored as `{qvalue, scale}` (the served tree) is handed to the layer as the
    quantized array Qwix's PTQ multiplies; its recipe (`how`) is only needed to quantize
    float weights, which serving never does.
    """

    def nn_param(self, module, name, *args, **kwargs):
        stored = module.get_variable("params", name)
        if isinstance(stored, Mapping) and QVALUE in stored:
            array = qwix.QArray(stored[QVALUE], stored[SCALE])
            return WithAux(array, HowToQuantize(qtype=array.qtype))
        return super().nn_param(module, name, *args, **kwargs)

    def dot(self, a, b, *args, **kwargs):
        if not _has_weight(a, b):
            return jnp.dot(a, b, *args, **kwargs)
        return super().dot(a, b, *args, **kwargs)


def wrap(q: Quantizer, module: nn.Module, phase: str) -> nn.Module:
    """`module` quantized by Qwix for `phase` ("train", "convert" or "serve"; "calibrate"
    gives `module` itself: Qwix's activation ranges are dynamic, nothing to collect).

    Under PTQ the training module is `module` itself (float training)."""
    if phase == "calibrate":
        return module
    if phase == "train":
        if q.mode == "ptq":
            return module
        return qwix.quantize_model(module, _Training(rules(q, training=True)))
    if phase in ("convert", "serve"):
        return qwix.quantize_model(module, _Serving(rules(q, training=False)))
    raise ValueError(f"phase={phase!r} under quant.backend='qwix'; valid: train, convert, serve")


def convert(convert_model: nn.Module, params: Any, sample: tuple[Any, ...]) -> dict[str, Any]:
    """Quantizes trained float `params` for the served module: `{"params": tree}` with
    every quantized kernel as `{qvalue, scale}` and every other parameter unchanged.

    Args:
      convert_model: `wrap(q, module, "convert")`.
      params: the trained float parameters.
      sample: the module's `apply` arguments after the variables (shapes only matter).
    """
    init = lambda *args: convert_model.init(jax.random.PRNGKey(0), *args)  # noqa: E731
    abstract = jax.eval_shape(init, *sample)["params"]
    params = jax.tree_util.tree_map(jnp.asarray, flax.core.unfreeze(params))
    quantized = qwix.quantize_params(params, abstract)
    return {"params": stored(quantized)}


def stored(tree: Any) -> Any:
    """`tree` with each quantized parameter as `{qvalue, scale}` (Qwix's pre-quantized
    layout), so the served tree holds plain arrays only."""
    if isinstance(tree, WithAux):
        array = tree.array
        if array.zero_point is not None:  # symmetric rules only; never expected
            raise ValueError("an asymmetric Qwix quantization has no stored layout here")
        return {QVALUE: array.qvalue, SCALE: array.scale}
    if isinstance(tree, Mapping):
        return {k: stored(v) for k, v in tree.items()}
    return tree
