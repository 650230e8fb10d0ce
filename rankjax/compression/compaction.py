"""Pruned heads and feed-forward units removed: a physically smaller dense model.

Head and feed-forward pruning (`sparsity` patterns `heads:H`, `ffn`, `heads:H+ffn`) zero
whole units while training; the matrices keep their shapes, so every backend still
multiplies the zeros. `compact` cuts them out at conversion: per BERT layer, the query,
key and value columns and the output-projection rows of each pruned head, and the
intermediate columns and output rows of each pruned feed-forward unit. The compacted
model (`layer_sizes` on the text ranker: heads and intermediate size per layer) computes
what the masked one computes, with fewer FLOPs and bytes on any hardware.

A unit is pruned when its rows of the consuming matrix (attention `output`,
`ffn_output`) are all zero: its contribution is then exactly zero whatever its biases.
A layer keeps at least one unit (a zero one if all were pruned: it adds nothing, and no
matrix has a zero-sized axis). Several encoders (a bi-encoder's two towers) share one
size per layer, the largest; the narrower ones keep pruned (zero) units to fill it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np

LayerSizes = tuple[tuple[int, int], ...]  # (heads, intermediate size) per layer


def _alive(rows: np.ndarray, units: int) -> np.ndarray:
    """`[units]` bool: which units (equal blocks of `rows`) have a non-zero row."""
    return np.any(np.asarray(rows).reshape(units, -1) != 0, axis=1)


def _keep(alive: np.ndarray, size: int) -> np.ndarray:
    """The indices of the `alive` units, plus the lowest pruned ones up to `size`, in
    index order."""
    pruned = np.flatnonzero(~alive)[: size - int(alive.sum())]
    return np.sort(np.concatenate([np.flatnonzero(alive), pruned]))


def _layers(encoder: Mapping[str, Any]) -> list[str]:
    names = [k for k in encoder if k.startswith("layer_")]
    return sorted(names, key=lambda k: int(k.split("_")[1]))


def plan(
    params: Mapping[str, Any], encoders: tuple[str, ...], head_width: int
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """`{encoder: [(kept heads, kept feed-forward units) per layer]}` read from the zeros
    of `params` (module docstring), sizes already equal across encoders."""
    found = {}
    for name in encoders:
        per_layer = []
        for layer in _layers(params[name]):
            p = params[name][layer]
            out = np.asarray(p["attention"]["output"]["kernel"])
            ffn = np.asarray(p["ffn_output"]["kernel"])
            per_layer.append((_alive(out, out.shape[0] // head_width), _alive(ffn, ffn.shape[0])))
        found[name] = per_layer
    depth = len(next(iter(found.values())))
    sizes = [
        [max(1, *(int(found[n][i][j].sum()) for n in encoders)) for j in (0, 1)]
        for i in range(depth)
    ]
    return {
        n: [(_keep(h, sizes[i][0]), _keep(f, sizes[i][1])) for i, (h, f) in enumerate(layers)]
        for n, layers in found.items()
    }


def _cut_layer(layer: Mapping[str, Any], heads: np.ndarray, ffn: np.ndarray, width: int):
    """One layer's params with only `heads` (of `width` columns each) and `ffn` units."""
    cols = (heads[:, None] * width + np.arange(width)[None, :]).reshape(-1)
    attention = dict(layer["attention"])
    for name in ("query", "key", "value"):
        w = attention[name]
        attention[name] = {"kernel": np.asarray(w["kernel"])[:, cols], "bias": w["bias"][cols]}
    out = attention["output"]
    attention["output"] = {**out, "kernel": np.asarray(out["kernel"])[cols]}
    inter, ffn_out = layer["intermediate"], layer["ffn_output"]
    return {
        **layer,
        "attention": attention,
        "intermediate": {
            "kernel": np.asarray(inter["kernel"])[:, ffn],
            "bias": np.asarray(inter["bias"])[ffn],
        },
        "ffn_output": {**ffn_out, "kernel": np.asarray(ffn_out["kernel"])[ffn]},
    }


def supports(model: nn.Module) -> bool:
    """Whether `model` has BERT layers `compact` can narrow (the text rankers)."""
    return hasattr(model, "encoder_names") and hasattr(model, "layer_sizes")


def compact(model: nn.Module, params: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model with narrower layers and its params with the pruned units cut out.

    Args:
      model: a text ranker (`models.text_ranker.TextRanker`: cross- or bi-encoder).
      params: its trained params (host or device arrays) with pruned units zeroed.

    Returns:
      `(model.clone(layer_sizes=...), compacted params as host arrays)`.

    Raises:
      ValueError: the model has no BERT encoder to compact.
    """
    if not supports(model):
        raise ValueError(
            f"{type(model).__name__} has no BERT layers to compact; head and feed-forward "
            "pruning compact the text rankers (cross_encoder, bi_encoder)"
        )
    config = model.bert_config
    width = config.hidden_size // config.num_attention_heads
    params = dict(params)
    kept = plan(params, model.encoder_names(), width)
    for name, layers in kept.items():
        encoder = dict(params[name])
        shared = encoder.pop("relative_attention_bias", None)  # MPNet: [buckets, heads]
        for i, (layer, (heads, ffn)) in enumerate(zip(_layers(encoder), layers, strict=True)):
            encoder[layer] = _cut_layer(encoder[layer], heads, ffn, width)
            if shared is not None:  # each layer keeps its own heads' columns
                table = np.asarray(shared["embedding"])[:, heads]
                encoder[f"relative_attention_bias_{i}"] = {"embedding": table}
        params[name] = encoder
    sizes = tuple((len(h), len(f)) for h, f in next(iter(kept.values())))
    return model.clone(layer_sizes=sizes), params
