"""The one way from trained parameters to the served model: convert, save, load.

`convert` turns trained float parameters into what a server holds:

* quantized layers (a `quantization.Quantizer`) as integer or e4m3 weights plus scales,
  their float kernels dropped, after static calibration when the quantizer asks for it;
* embedding tables as int8/int4 rows with per-group scales (`embedding_bits`);
* N:M-sparse kernels packed as kept values plus bit-packed positions (a `Sparsifier`);
* pruned heads and feed-forward units cut out (`compaction`, a `Sparsifier` with a
  `heads:H` / `ffn` pattern): narrower layers, whose sizes the tree carries
  (`LAYER_SIZES`; `served_module` builds the served module to match).

`save` writes that tree to `WORKDIR/served/` (atomically, `checkpoint.save_tree`); `load`
reads it back and unpacks N:M kernels to the dense form the served model multiplies. The
tasks' final evaluation scores what `load` returns, so every `*_served` figure is what a
server would load; `rankjax.serving.load(workdir, params="served")`, `rankjax.export`, the
cascade and the benchmarks read served models through these functions too.

A model family gives its modules by phase (`Build`): "train" (float or fake-quantized),
"calibrate" (collects activation ranges), "convert" (writes integer weights) and "serve"
(multiplies them); `quantizer.model_seam(phase)` is what differs between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from rankjax import checkpoint
from rankjax.compression import compaction, embeddings, quantization, sparsity

Build = Callable[[str], nn.Module]  # phase -> the model built with that phase's seam
SERVED_DIR = "served"
LAYER_SIZES = "layer_sizes"  # int32 [layers, 2] of a compacted model: heads, ffn units


def convert(
    build: Build,
    params: Any,
    sample: Any,
    *,
    quantizer: quantization.Quantizer | None = None,
    calibration_batches: Iterable[Any] = (),
    embedding_bits: int = 0,
    sparsifier: sparsity.Sparsifier | None = None,
) -> dict[str, Any]:
    """The served variables of a trained model, as host arrays.

    Args:
      build: the model by phase (module docstring); only "calibrate" and "convert" are
        built here, and only with a quantizer.
      params: trained parameters (on the mesh or on the host).
      sample: example inputs of the model's `apply` (shapes only matter), as the
        quantizer's `convert` takes them.
      quantizer: converts the layers it quantizes; None keeps every layer float.
      calibration_batches: the model's inputs for static activation ranges
        (`quantizer.calibrate`), used only when `quantizer.static`.
      embedding_bits: 8 or 4 stores every embedding table as int8/int4 rows; 0 keeps
        them float.
      sparsifier: packs the N:M kernels it pruned, or cuts out the heads and units it
        pruned (`compaction`, text rankers) before anything else.

    Returns:
      `{"params": ..., and the quantizer's collections}` as the server holds them, with
      `LAYER_SIZES` when compacted.
    """
    sizes = None
    if sparsifier is not None and isinstance(
        sparsity.parse_pattern(sparsifier.pattern), sparsity.Units
    ):
        model = build("train")
        if compaction.supports(model):
            model, params = compaction.compact(model, jax.device_get(params))
            sizes = model.layer_sizes
            build = _with_sizes(build, sizes)
        else:  # e.g. the listwise ranker: its pruned heads stay as zeros
            logging.info("%s has no layers to compact; served with masks", type(model).__name__)
    variables: dict[str, Any] = {"params": params}
    if quantizer is not None:
        calibration = None
        if quantizer.static:
            calibration = quantizer.calibrate(build("calibrate"), params, calibration_batches)
        model = build("convert")
        variables = jax.jit(lambda p, c: quantizer.convert(model, p, sample, c))(
            params, calibration
        )
    variables = jax.device_get(variables)
    if embedding_bits:
        variables = {
            **variables,
            "params": embeddings.quantize_tree(variables["params"], embedding_bits),
        }
    if sparsifier is not None:
        variables = sparsity.pack_tree(variables, sparsifier, quantization.kernel_path)
    if sizes is not None:
        variables[LAYER_SIZES] = np.asarray(sizes, np.int32)
    return variables


def _with_sizes(build: Build, sizes: tuple[tuple[int, int], ...]) -> Build:
    return lambda phase: build(phase).clone(layer_sizes=sizes)


def served_module(module: nn.Module, variables: dict[str, Any]) -> tuple[nn.Module, dict]:
    """`(module, variables)` to apply a served tree: the module given narrower layers
    when the tree is compacted (`LAYER_SIZES`, which leaves the variables)."""
    if LAYER_SIZES not in variables:
        return module, variables
    sizes = tuple((int(h), int(f)) for h, f in np.asarray(variables[LAYER_SIZES]))
    rest = {k: v for k, v in variables.items() if k != LAYER_SIZES}
    return module.clone(layer_sizes=sizes), rest


def save(workdir: str, variables: dict[str, Any]) -> str:
    """Writes the served variables to `workdir/served/` and returns that path."""
    path = os.path.join(workdir, SERVED_DIR)
    checkpoint.save_tree(path, variables)
    logging.info("served model saved in %s", path)
    return path


def load(workdir: str, sparsifier: sparsity.Sparsifier | None = None) -> dict[str, Any]:
    """The served variables saved in `workdir/served/`, N:M kernels unpacked.

    Raises:
      FileNotFoundError: the run saved no served model.
    """
    path = os.path.join(workdir, SERVED_DIR)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path}: no served model (the run had no quant, embedding_bits or N:M section)"
        )
    return sparsity.unpack_tree(checkpoint.load_tree(path), sparsifier)


def round_trip(
    workdir: str, variables: dict[str, Any], sparsifier: sparsity.Sparsifier | None = None
) -> dict[str, Any]:
    """Saves the served variables and loads them back: what a server would hold."""
    save(workdir, variables)
    return load(workdir, sparsifier)
