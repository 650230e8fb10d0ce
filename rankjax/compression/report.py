"""What compression costs and buys, per layer: parameters, non-zeros, bits, bytes, FLOPs.

`build(params, served)` reads the arrays themselves (never the config's intentions): the
float parameters of the trained model, and, when the model was converted, the served tree
whose integer weights and scales are what a server loads. FLOPs are those of the dense
layers for one scored item (one token, for text encoders; 2 per multiply-add); attention
products, which grow with the list or sequence length, are not included. `dense` FLOPs
are the trained shapes', `served` the served model's (smaller where pruned heads and
feed-forward units were cut out; N:M kernels still multiply densely), `effective` count
only non-zero weights (what a sparse kernel could skip).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rankjax import files
from rankjax.compression.quantization import FROZEN_COLLECTION, array_bytes
from rankjax.sharding import path_str


def _flat(tree: Any) -> dict[str, Any]:
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def build(params: Any, served: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report: one row per dense layer, and totals.

    Args:
      params: trained float parameters.
      served: the converted tree (`{"params": ..., "aqt": ...}`, or Qwix's kernels as
        `params/<layer>/kernel/{qvalue, scale}`) or None when the model is served in float.

    Returns:
      `{"layers": [...], "float_bytes", "serving_bytes", "serving_ratio", "params",
      "nonzeros", "dense_flops_per_item", "served_flops_per_item",
      "effective_flops_per_item"}`.
    """
    flat = _flat(params)
    stored = _flat(served) if served else {f"params/{k}": v for k, v in flat.items()}
    layers = []
    for path, kernel in flat.items():
        if not path.endswith("/kernel") or np.ndim(kernel) != 2:
            continue
        layer = path[: -len("/kernel")]
        k = np.asarray(kernel)
        bias = flat.get(f"{layer}/bias")
        # What a server loads for this layer's weights: a float kernel, integer values and
        # scales, and, when N:M-packed, the kept values and their bit-packed positions.
        weights = {
            p: v
            for p, v in stored.items()
            if p.startswith((f"params/{layer}/kernel", f"{FROZEN_COLLECTION}/{layer}/"))
        }
        values = [
            v
            for p, v in weights.items()
            if p.endswith(("/value", "/qvalue", "/nm_values", "kernel"))
        ]
        dtype = np.dtype(values[0].dtype) if values else np.dtype(np.float32)
        packed = any(p.endswith("/nm_values") for p in weights)  # unpacked to multiply
        served_size = np.size(values[0]) if values and not packed else k.size
        bits = 4 if dtype.name in ("int4", "uint4") else dtype.itemsize * 8
        bias_bytes = 0 if bias is None else array_bytes(bias)
        nonzeros = int(np.count_nonzero(k))
        layers.append(
            {
                "layer": layer,
                "shape": list(k.shape),
                "params": int(k.size + (0 if bias is None else np.size(bias))),
                "nonzeros": nonzeros,
                "sparsity": 1.0 - nonzeros / k.size,
                "bits": int(bits),
                "float_bytes": array_bytes(kernel) + bias_bytes,
                "serving_bytes": array_bytes(list(weights.values())) + bias_bytes,
                "dense_flops_per_item": 2 * int(k.size),
                "served_flops_per_item": 2 * int(served_size),
                "effective_flops_per_item": 2 * nonzeros,
            }
        )
    float_bytes = array_bytes(params)
    serving_bytes = array_bytes(dict(served)) if served else float_bytes
    return {
        "layers": layers,
        "params": int(sum(np.size(x) for x in flat.values())),
        "nonzeros": int(sum(np.count_nonzero(np.asarray(x)) for x in flat.values())),
        "float_bytes": float_bytes,
        "serving_bytes": serving_bytes,
        "serving_ratio": serving_bytes / float_bytes,
        **{
            f"{kind}_flops_per_item": sum(r[f"{kind}_flops_per_item"] for r in layers)
            for kind in ("dense", "served", "effective")
        },
    }


def format_table(report: Mapping[str, Any]) -> str:
    """A text table of the report, one line per layer and a total."""
    head = (
        f"| {'layer':<38} | {'shape':>10} | {'nonzero':>8} | {'bits':>4} | "
        f"{'float B':>9} | {'served B':>9} |"
    )
    lines = [head, "|" + "|".join("-" * (len(c) - 0) for c in head.split("|")[1:-1]) + "|"]
    for r in report["layers"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"| {r['layer'][-38:]:<38} | {shape:>10} | {1 - r['sparsity']:>8.1%} | "
            f"{r['bits']:>4} | {r['float_bytes']:>9,} | {r['serving_bytes']:>9,} |"
        )
    lines.append(
        f"| {'whole model (incl. norms, scales)':<38} | {'':>10} | "
        f"{report['nonzeros'] / max(report['params'], 1):>8.1%} | {'':>4} | "
        f"{report['float_bytes']:>9,} | {report['serving_bytes']:>9,} |"
    )
    lines.append(
        "dense-layer FLOPs per item (token): "
        f"trained {report['dense_flops_per_item']:,}, served {report['served_flops_per_item']:,}"
    )
    return "\n".join(lines)


def write(workdir: str, report: Mapping[str, Any]) -> None:
    """Writes `workdir/compression.json` atomically (`rankjax.files`)."""
    files.write_atomic(os.path.join(workdir, "compression.json"), json.dumps(report, indent=2))
