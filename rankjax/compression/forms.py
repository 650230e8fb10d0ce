"""The served form of a quantized model, chosen for the hardware it runs on.

One trained model (QAT or PTQ) can be served in several forms, whose speed depends on
the backend and on the model's widths (docs/performance.md):

* `"int8"`: AQT's integer layers (the configured weight/activation bits, integer format);
  native on CPUs and TPUs.
* `"fp8"`: e4m3 weights and activations with calibrated static scales, run as native fp8
  GEMMs with fused kernels (`compression.fp8`); only Hopper-class GPUs (compute
  capability 8.9 and later) have fp8 GEMMs.
* `"bf16"`: no quantized products; float weights stored in bf16 (embedding tables still
  row-quantized when `embedding_bits` says so).
* `"aqt"`: AQT's layers in the format the model was trained with (e4m3 for fp8 QAT).

Under `quant.backend="qwix"` the int8 and fp8 forms are Qwix's products (integer or e4m3
weights per output channel, activations quantized per row at each call) and there is no
`"aqt"` form.

`quant.serving="auto"` (the default) serves the fastest form the device offers: int8 on
CPU and TPU, bf16 on GPUs without fp8, and on fp8 GPUs whichever of fp8 and bf16 scores the
model's own evaluation batches faster, measured at conversion (fp8 wins at MiniLM width,
bf16 on the narrow pruned students; docs/results.md). The choice and every candidate's
bytes and time are written to results.json and, for the ranking task, `compression.json`
(`serving_form`, `serving_forms`), which `rankjax.serving.load` reads to rebuild the
served model; a retrieval run's served model is converted again where it is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from rankjax.compression.quantization import Quantizer

FORMS = ("int8", "fp8", "bf16", "aqt")
AUTO = "auto"


def has_fp8(device: Any) -> bool:
    """Whether `device` multiplies fp8 natively: an NVIDIA GPU of compute capability 8.9
    (Ada) or later (Hopper, Blackwell)."""
    capability = getattr(device, "compute_capability", None)
    if device.platform != "gpu" or not capability:
        return False
    major, minor = (int(p) for p in str(capability).split(".")[:2])
    return (major, minor) >= (8, 9)


def device_forms(device: Any | None = None) -> tuple[str, ...]:
    """The forms `"auto"` chooses between on `device` (default: JAX's first device)."""
    device = device or jax.devices()[0]
    if device.platform == "gpu":
        return ("fp8", "bf16") if has_fp8(device) else ("bf16",)
    return ("int8",)  # CPU and TPU: AQT's integer products are native


def candidates(quantizer: Quantizer) -> tuple[str, ...]:
    """The forms to serve `quantizer`'s model in: the configured one, or for `"auto"`
    this device's (`device_forms`)."""
    if quantizer.serving == AUTO:
        return device_forms()
    return (quantizer.serving,)


def quantizer_for(quantizer: Quantizer, form: str) -> Quantizer:
    """The quantizer that converts to and serves `form` (trained weights unchanged: the
    conversion of a QAT model to another format is post-training quantization)."""
    if form not in FORMS:
        raise ValueError(f"served form {form!r}; valid: {list(FORMS)}")
    if quantizer.backend == "qwix":
        return _qwix_quantizer_for(quantizer, form)
    if form == "aqt":
        return dataclasses.replace(quantizer, serving="aqt")
    if form == "int8":
        return dataclasses.replace(quantizer, serving="aqt", fp8=False)
    if form == "fp8":
        return dataclasses.replace(
            quantizer,
            serving="fp8",
            fp8=True,
            weight_bits=8,
            activation_bits=8,
            calibration="static",
        )
    # bf16: no layer quantized; embedding tables as configured
    return dataclasses.replace(quantizer, serving="aqt", exclude=".*")


def _qwix_quantizer_for(quantizer: Quantizer, form: str) -> Quantizer:
    """Qwix's forms: its integer or e4m3 products with per-row dynamic activation ranges
    (no calibration pass), or none (bf16)."""
    if form == "int8":
        return dataclasses.replace(quantizer, serving="int8", fp8=False)
    if form == "fp8":
        return dataclasses.replace(
            quantizer, serving="fp8", fp8=True, weight_bits=8, activation_bits=8
        )
    if form == "bf16":
        return dataclasses.replace(quantizer, serving="bf16", exclude=".*")
    raise ValueError("served form 'aqt' is AQT's layers; quant.backend='qwix' has int8, fp8, bf16")


def quantizes_layers(form: str) -> bool:
    """Whether `form` converts dense layers (all but `"bf16"`)."""
    return form != "bf16"


def fastest(
    scorers: Mapping[str, Callable[[Any], Any]], batches: Sequence[Any], repeats: int = 5
) -> tuple[str, dict[str, float]]:
    """The form whose scorer takes least time over `batches`, and each form's seconds.

    Each scorer runs over all batches once untimed (compilation), then `repeats` timed
    passes (results waited for); a form's time is the median pass.

    Returns:
      `(fastest form, {form: seconds per pass})`.
    """
    seconds = {}
    for form, score in scorers.items():
        jax.block_until_ready([score(b) for b in batches])
        passes = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready([score(b) for b in batches])
            passes.append(time.perf_counter() - t0)
        seconds[form] = statistics.median(passes)
    return min(seconds, key=seconds.get), seconds


def agreed(form: str, names: Sequence[str]) -> str:
    """`form` as process 0 chose it among `names`: timings differ between hosts, and every
    process must serve the same form."""
    if jax.process_count() == 1:
        return form
    names = list(names)
    index = multihost_utils.broadcast_one_to_all(np.int32(names.index(form)))
    return names[int(index)]


def recorded(workdir: str, quantizer: Quantizer) -> str:
    """The form a finished run served in: `compression.json`'s `serving_form` (written at
    conversion), else the configured one.

    Raises:
      FileNotFoundError: `quant.serving="auto"` and no recorded form to rebuild it by.
    """
    path = os.path.join(workdir, "compression.json")
    if os.path.exists(path):
        with open(path) as f:
            form = json.load(f).get("serving_form")
        if form:
            return form
    if quantizer.serving == AUTO:
        raise FileNotFoundError(
            f"{path}: no serving_form recorded; the run's quant.serving='auto' form is chosen "
            "at conversion (rerun the conversion, or set quant.serving in config.json)"
        )
    return quantizer.serving
