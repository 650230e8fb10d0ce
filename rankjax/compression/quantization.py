"""Quantization through AQT (`aqtp`, `aqt.jax.v2`); AQT is imported nowhere else.

The `quant` config section turns it on for any model built on `models/layers.py`:

* `mode="qat"`: train with quantized forward products (weights per output channel,
  activations per row, dynamic ranges, straight-through gradients in float).
* `mode="ptq"`: train in float, then quantize the trained weights for serving (post-training
  quantization with dynamic activation ranges: no training, no calibration data needed).
* Either way the run ends with **conversion**: each quantized layer's weights are stored as
  integers plus float scales (AQT's freezer), the float kernels are dropped, the result is
  saved to `WORKDIR/served/` and evaluated as `valid_served` / `test_served`.

Activation ranges are dynamic (per call) by default; `calibration="static"` collects them
on a few training batches after training and freezes them with the weights.

The interface the rest of rankjax sees is small: `from_config(cfg)` -> `Quantizer` or None,
`Quantizer.dot_general_factory(phase)` for the model seam, `Quantizer.calibrate(...)`,
`Quantizer.convert(...)` and `array_bytes(...)`. `quant.backend="qwix"` routes the same
interface through Qwix (`compression.qwix_backend`), which also quantizes plain Flax
modules (`Quantizer.wrap`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from aqt.jax.v2 import aqt_dot_general
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2 import utils as aqt_utils
from aqt.jax.v2.flax import aqt_flax, aqt_flax_calibration

from rankjax import config_args
from rankjax.compression import embeddings, fp8

MODES = ("qat", "ptq")
BACKENDS = ("aqt", "qwix")
PHASES = ("train", "calibrate", "convert", "serve")
CALIBRATIONS = ("dynamic", "static")
SERVINGS = ("auto", "int8", "fp8", "bf16", "aqt")  # see compression.forms
_QUANT_MODE = {
    "train": aqt_utils.QuantMode.TRAIN,
    "calibrate": aqt_utils.QuantMode.CALIBRATE,
    "convert": aqt_utils.QuantMode.CONVERT,
    "serve": aqt_utils.QuantMode.SERVE,
}
FROZEN_COLLECTION = "aqt"
CALIBRATION_COLLECTION = "aqt_calibration"
_DG_NAME = "quant_dot_general"


class ServedAqtDotGeneral(aqt_flax.AqtDotGeneral):
    """AQT's dot_general in serving mode: it reads the frozen integer weights, so the layer
    passes no float kernel (see `models.layers.Dense`)."""

    reads_frozen_weights = True


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """Quantization settings and the factories that apply them.

    Attributes:
      backend: `"aqt"` (AQT, `aqt.jax.v2`, through `models.layers.Dense`'s seam) or
        `"qwix"` (Qwix, intercepting the products of any Flax module:
        `compression.qwix_backend`). Qwix takes dynamic activation ranges only and
        serves the forms `int8`, `fp8` (e4m3 weights and activations, per-row ranges)
        and `bf16`.
      mode: `"qat"` or `"ptq"`.
      weight_bits: 8 or 4 (integers, symmetric, one scale per output channel).
      activation_bits: 8 or 4, or 0 to leave activations in float (weight-only).
      backward_bits: 0 keeps the backward pass in float (straight-through estimator); 8
        quantizes the gradient products too.
      fp8: use the fp8 e4m3 format instead of integers for weights (and for activations
        unless `activation_bits` is 0); `weight_bits` and `activation_bits` then only say
        which sides are quantized.
      calibration: `"dynamic"` computes activation ranges per call; `"static"` fixes them
        from `calibration_batches` training batches after training (mean of per-batch
        absolute maxima, one range per tensor), so serving computes no ranges.
      calibration_batches: batches used by static calibration.
      layers: regex over layer paths (`Dense_0`, `EncoderBlock_0/SelfAttention_0/query`);
        matching layers are quantized.
      exclude: regex of layer paths left in float (e.g. the final scoring layer `Dense_1`).
      embedding_bits: 8 or 4 stores the served model's embedding tables row-wise
        quantized (`compression.embeddings`, post-training); 0 keeps them float.
      serving: the served form (`compression.forms`): `"auto"` (the fastest this device
        offers: int8 on CPU and TPU, fp8 or bf16 on GPUs, measured where both run),
        `"int8"` (AQT integer layers), `"fp8"` (e4m3 weights and activations with
        per-tensor scales all fixed at conversion, computed as native fp8 GEMMs:
        `compression.fp8`), `"bf16"` (no quantized products) or `"aqt"` (AQT's layers in
        the trained format: integers, or e4m3 with `fp8=True`). A form other than the
        trained one is converted from the trained float weights (post-training). Methods
        that build served layers take a quantizer of one form (`forms.quantizer_for`).
    """

    backend: str = "aqt"
    mode: str = "qat"
    weight_bits: int = 8
    activation_bits: int = 8
    backward_bits: int = 0
    fp8: bool = False
    calibration: str = "dynamic"
    calibration_batches: int = 16
    layers: str = ".*"
    exclude: str = ""
    embedding_bits: int = 0
    serving: str = "auto"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"quant.backend={self.backend!r}; valid: {list(BACKENDS)}")
        if self.mode not in MODES:
            raise ValueError(f"quant.mode={self.mode!r}; valid: {list(MODES)}")
        for key in ("weight_bits", "activation_bits", "backward_bits"):
            value = getattr(self, key)
            allowed = (4, 8) if key == "weight_bits" else (0, 4, 8)
            if value not in allowed:
                raise ValueError(f"quant.{key}={value}; valid: {list(allowed)}")
        if self.embedding_bits not in embeddings.BITS:
            raise ValueError(
                f"quant.embedding_bits={self.embedding_bits}; valid: {list(embeddings.BITS)}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"quant.calibration={self.calibration!r}; valid: {list(CALIBRATIONS)}")
        if self.serving not in SERVINGS:
            raise ValueError(f"quant.serving={self.serving!r}; valid: {list(SERVINGS)}")
        if self.calibration_batches < 1:
            raise ValueError(f"quant.calibration_batches={self.calibration_batches}; need >= 1")
        if self.backend == "qwix":
            if self.calibration == "static":
                raise ValueError(
                    "quant.calibration='static' is AQT's; quant.backend='qwix' computes "
                    "activation ranges per call ('dynamic')"
                )
            if self.serving == "aqt":
                raise ValueError(
                    "quant.serving='aqt' serves AQT's layers; with quant.backend='qwix' "
                    "choose 'auto', 'int8', 'fp8' or 'bf16'"
                )
        for key in ("layers", "exclude"):
            try:
                re.compile(getattr(self, key))
            except re.error as e:
                raise ValueError(
                    f"quant.{key}={getattr(self, key)!r} is not a regex: {e}"
                ) from None

    def quantizes(self, path: str) -> bool:
        """Whether the layer at `path` is quantized."""
        return bool(re.search(self.layers, path)) and not (
            self.exclude and re.search(self.exclude, path)
        )

    def check_selects(self, params: Any) -> None:
        """Raises ValueError when `layers`/`exclude` select none of the dense layers (the
        `.../kernel` parameters) of `params`: a run that quantizes nothing must not
        report itself as quantized."""
        layers = sorted(p[: -len("/kernel")] for p in _paths(params) if p.endswith("/kernel"))
        if layers and not any(self.quantizes(layer) for layer in layers):
            raise ValueError(
                f"quant.layers={self.layers!r} (exclude {self.exclude!r}) selects none of the "
                f"model's dense layers, e.g. {layers[:4]}"
            )

    @property
    def static(self) -> bool:
        """Whether activation ranges are calibrated once (static) rather than per call."""
        return self.calibration == "static" and self.activation_bits > 0

    def _aqt_config(self, static: bool) -> aqt_dot_general.DotGeneral:
        weights = "e4m3" if self.fp8 else self.weight_bits
        activations = (
            ("e4m3" if self.fp8 else self.activation_bits) if self.activation_bits else None
        )
        cfg = aqt_dot_general.dot_general_make(
            lhs_bits=activations,
            rhs_bits=weights,
            bwd_bits=self.backward_bits or None,
            use_fwd_quant=False,
        )
        if static:
            # Mean over calibration batches of each batch's absolute maximum; one range per
            # tensor for activations (their shapes differ between calibration and serving).
            aqt_config.set_fwd_calibration(
                cfg,
                functools.partial(
                    aqt_flax_calibration.MeanOfAbsMaxCalibration,
                    quant_collection=CALIBRATION_COLLECTION,
                ),
            )
            cfg.fwd.dg_quantizer.lhs.calib_shared_axes = "per_tensor"
        return cfg

    def dot_general_factory(self, phase: str) -> Callable[[str], Any]:
        """The model seam for `phase`: `"train"`, `"calibrate"`, `"convert"` or `"serve"`.

        Training always uses dynamic ranges; with `calibration="static"` the later phases
        collect activation ranges (calibrate), freeze them (convert) and use them (serve).

        Returns:
          `factory(layer_path) -> dot_general or None` (None: the layer stays float). In
          training under PTQ every layer stays float.
        """
        if phase not in PHASES:
            raise ValueError(f"phase={phase!r}; valid: {list(PHASES)}")
        if self.backend == "qwix":  # Qwix wraps the module instead (`wrap`)
            from rankjax.compression import qwix_backend

            return qwix_backend.seam
        if phase == "train" and self.mode == "ptq":
            return lambda path: None
        if self.serving == "fp8" and phase != "train":
            collections = dict(
                frozen_collection=FROZEN_COLLECTION, calibration_collection=CALIBRATION_COLLECTION
            )
            return fp8.Seam(phase, self.quantizes, name=_DG_NAME, **collections)
        static = self.static and phase != "train"
        cls = ServedAqtDotGeneral if phase == "serve" else aqt_flax.AqtDotGeneral
        lhs = {}
        if static:
            lhs = dict(
                lhs_quant_mode=_QUANT_MODE[phase],
                lhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION,
            )
        make = functools.partial(
            cls,
            self._aqt_config(static),
            prng_name=None,  # no stochastic rounding: deterministic, no RNG plumbing
            rhs_quant_mode=_QUANT_MODE[phase],
            rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
            quant_collection=FROZEN_COLLECTION,
            **lhs,
        )
        # A fixed name, so the serving module finds what the converting module froze.
        return lambda path: make(name=_DG_NAME) if self.quantizes(path) else None

    def model_seam(self, phase: str) -> dict[str, Any]:
        """Model keyword arguments for `phase`: the dot_general factory, and when serving
        with `embedding_bits`, that too (it reaches only models with embedding tables)."""
        seam: dict[str, Any] = {"dot_general_cls": self.dot_general_factory(phase)}
        if phase == "serve" and self.embedding_bits:
            seam["embedding_bits"] = self.embedding_bits
        return seam

    def wrap(self, module: nn.Module, phase: str) -> nn.Module:
        """`module` quantized for `phase`, once built with `model_seam(phase)`.

        Under Qwix this applies the quantization to `module`, which may be any Flax
        module (e.g. a plain `flax.linen.Dense`). AQT quantizes through the seam the
        module was built with, so `module` comes back unchanged; one built without a
        seam is an error rather than a silently float model.

        Raises:
          ValueError: AQT and a module that has no `dot_general_cls` seam.
        """
        if self.backend == "qwix":
            from rankjax.compression import qwix_backend

            return qwix_backend.wrap(self, module, phase)
        if not hasattr(module, "dot_general_cls"):
            raise ValueError(
                f"{type(module).__name__} has no dot_general_cls seam: AQT quantizes only "
                "models built on rankjax.models.layers.Dense; quant.backend='qwix' "
                "quantizes any Flax module"
            )
        return module

    def calibrate(self, calibrate_model, params: Any, batches) -> dict[str, Any]:
        """Collects static activation ranges over `batches` (no training).

        Args:
          calibrate_model: the model built with `dot_general_factory("calibrate")`.
          params: trained float parameters.
          batches: iterable of the model's `__call__` arguments, e.g. `(features, where)`.

        Returns:
          The calibration statistics collection, for `convert`.
        """
        stats = None
        apply = jax.jit(
            lambda variables, *args: calibrate_model.apply(
                variables, *args, mutable=[CALIBRATION_COLLECTION]
            )[1]
        )
        for args in batches:
            if stats is None:
                init = jax.jit(calibrate_model.init)  # one compilation, not one per op
                stats = init(jax.random.PRNGKey(0), *args)[CALIBRATION_COLLECTION]
            stats = apply({"params": params, CALIBRATION_COLLECTION: stats}, *args)[
                CALIBRATION_COLLECTION
            ]
        if stats is None:
            raise ValueError("static calibration needs at least one batch")
        return stats

    def convert(
        self,
        convert_model,
        params: Any,
        sample: tuple[jax.Array, jax.Array],
        calibration: Any = None,
    ) -> dict[str, Any]:
        """Freezes integer weights: returns the served variables.

        Args:
          convert_model: the model built with `dot_general_factory("convert")`.
          params: trained float parameters.
          sample: `(features, where)`, any batch of the right feature width.
          calibration: statistics from `calibrate` (static calibration only).

        Returns:
          `{"params": float parameters without the kernels of quantized layers,
          "aqt": {layer: {"qrhs": {"value": int8 [in, out], "scale": float}}}}`, plus the
          calibration statistics under static calibration. Under Qwix: `{"params": ...}`
          with each quantized kernel as `{"qvalue", "scale"}`.
        """
        if self.backend == "qwix":
            from rankjax.compression import qwix_backend

            return qwix_backend.convert(convert_model, params, sample)
        if self.static and calibration is None:
            raise ValueError(
                "quant.calibration='static': convert needs the ranges from calibrate(); "
                "without them every activation scale would be a default"
            )
        variables = {"params": params}
        if calibration is not None:
            variables[CALIBRATION_COLLECTION] = calibration
        _, variables = convert_model.apply(variables, *sample, mutable=True)
        frozen = flax.core.unfreeze(variables[FROZEN_COLLECTION])
        quantized_layers = {_layer_of(path) for path in _paths(frozen)}
        kept = {
            path: leaf
            for path, leaf in _paths(flax.core.unfreeze(params)).items()
            if not (path.endswith("/kernel") and path[: -len("/kernel")] in quantized_layers)
        }
        out = {"params": _unflatten(kept), FROZEN_COLLECTION: frozen}
        if calibration is not None and self.serving != "fp8":
            # AQT's serving path reads the calibration statistics too (a few scalars a layer).
            out[CALIBRATION_COLLECTION] = flax.core.unfreeze(variables[CALIBRATION_COLLECTION])
        return out


def _paths(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_paths(value, path))
        else:
            out[path] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _layer_of(frozen_path: str) -> str:
    """`Dense_0/quant_dot_general/qrhs/value` -> `Dense_0` (the layer owning the weights)."""
    return frozen_path.split(f"/{_DG_NAME}/")[0]


def kernel_path(served_path: str) -> str | None:
    """The float kernel a leaf of a served tree stands for, or None.

    `params/Dense_0/kernel` -> `Dense_0/kernel`;
    `aqt/Dense_0/quant_dot_general/qrhs/value` -> `Dense_0/kernel`;
    `params/Dense_0/kernel/qvalue` (Qwix) -> `Dense_0/kernel`.
    """
    if served_path.startswith("params/") and served_path.endswith("/kernel/qvalue"):
        return served_path[len("params/") : -len("/qvalue")]
    if served_path.startswith("params/") and served_path.endswith("/kernel"):
        return served_path[len("params/") :]
    prefix, suffix = f"{FROZEN_COLLECTION}/", f"/{_DG_NAME}/qrhs/value"
    if served_path.startswith(prefix) and served_path.endswith(suffix):
        return served_path[len(prefix) : -len(suffix)] + "/kernel"
    return None


def build(make: Callable[..., nn.Module], quantizer: Quantizer | None, phase: str) -> nn.Module:
    """The model for `phase`: `make(**seam keyword arguments)`, quantized as `quantizer`
    says (float without one). `make` takes the seam's keyword arguments, e.g.
    `functools.partial(models.get, config.model)`."""
    if quantizer is None:
        return make()
    return quantizer.wrap(make(**quantizer.model_seam(phase)), phase)


def config_section(**overrides) -> dict[str, Any]:
    """A complete `quant` config section (enabled; int8 QAT by default), for configs."""
    return {"enabled": True, **dataclasses.asdict(Quantizer(**overrides))}


# Short names for config arguments: QAT of every Dense layer with these bits.
TOWER_CHOICES = {
    "int8": dict(weight_bits=8, activation_bits=8),
    "int4": dict(weight_bits=4, activation_bits=8),
    "w8": dict(weight_bits=8, activation_bits=0),  # weight-only
    # e4m3 weights and activations, scales calibrated once, served as native fp8 GEMMs.
    "fp8": dict(fp8=True, calibration="static", serving="fp8"),
}


# Short names for post-training quantization of a trained float model (config arguments
# `serve=`): fp8 with static scales served by native fp8 GEMMs, AQT int8 weights and
# activations, AQT int8 weights only.
PTQ_CHOICES = {
    "fp8": dict(mode="ptq", fp8=True, calibration="static", serving="fp8"),
    "int8": dict(mode="ptq", serving="int8"),
    "w8": dict(mode="ptq", activation_bits=0, serving="int8"),
}


def ptq_choice(key: str, backend: str = "aqt") -> dict[str, Any]:
    """`PTQ_CHOICES[key]` for `backend`: Qwix takes the same settings with dynamic
    activation ranges (it has no calibration pass)."""
    if key not in PTQ_CHOICES:
        raise ValueError(f"post-training quantization {key!r}; valid: {sorted(PTQ_CHOICES)}")
    settings = {**PTQ_CHOICES[key], "backend": backend}
    if backend == "qwix":
        settings["calibration"] = "dynamic"
    return settings


def retrieval_section(towers: str = "", embedding_bits: int = 0) -> dict[str, Any] | None:
    """A retrieval model's `quant` section: `towers` one of `TOWER_CHOICES` (QAT of the
    dense layers: integer ones served in the device's fastest form, fp8 as e4m3) or ""
    (float), and served tables of `embedding_bits`; None when neither is asked for."""
    if towers and towers not in TOWER_CHOICES:
        raise ValueError(f"towers={towers!r}; valid: {sorted(TOWER_CHOICES)} or empty")
    if towers:
        return config_section(mode="qat", embedding_bits=embedding_bits, **TOWER_CHOICES[towers])
    return {"embedding_bits": embedding_bits} if embedding_bits else None


def from_config(cfg: Mapping[str, Any] | None) -> Quantizer | None:
    """`config.quant` -> a `Quantizer`, or None when absent or `enabled=False`."""
    return config_args.optional_section(Quantizer, cfg, "quant")


def array_bytes(tree: Any) -> int:
    """Bytes of every array in `tree` as stored (int4 counts half a byte)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        bits = jnp.dtype(leaf.dtype).itemsize * 8
        if jnp.dtype(leaf.dtype).name in ("int4", "uint4"):
            bits = 4
        total += (leaf.size * bits + 7) // 8
    return total
