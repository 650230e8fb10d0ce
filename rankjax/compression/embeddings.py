"""Row-wise quantized embedding tables: integers plus per-group float scales.

A served table `[V, H]` is stored as `values` (int8 `[V, H]`, or int4 packed two to a
byte, uint8 `[V, H/2]`) and `scales` float32 `[V, H/group]`: each row is cut into groups
of `group` columns with one symmetric scale each (`max |x| / (2^(bits-1) - 1)`), so a
rare token's small row keeps its own precision. Lookups gather the integer rows and
dequantize only those: `models.layers.Embed` with `bits` reads this form (`layers.lookup`).
Embedding tables are most of a small BERT's bytes (all-MiniLM-L6-v2: 47 MB of its 90 MB in
float32), and post-training row-wise quantization of them costs little (checked by
evaluating the served model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rankjax.models.layers import MAX_GROUP, group_size, lookup  # noqa: F401  (the served form)

BITS = (0, 4, 8)


def quantize_table(table: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    """`[V, H]` float -> `{"values", "scales"}` (module docstring)."""
    table = np.asarray(table, np.float32)
    v, h = table.shape
    if bits not in BITS[1:]:
        raise ValueError(f"quant.embedding_bits={bits}; valid: {list(BITS)}")
    if bits == 4 and h % 2:
        raise ValueError(f"int4 embeddings need an even width, got {h}")
    group = group_size(h)
    qmax = 2 ** (bits - 1) - 1
    groups = table.reshape(v, h // group, group)
    scales = np.abs(groups).max(axis=-1) / qmax
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    q = np.clip(np.rint(groups / safe), -qmax, qmax).astype(np.int8).reshape(v, h)
    if bits == 4:
        nibbles = (q & 0x0F).astype(np.uint8)
        q = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return {"values": q, "scales": scales.astype(np.float32)}


def quantize_tree(params: Mapping[str, Any], bits: int) -> dict[str, Any]:
    """Replaces every embedding table (a module's `embedding` parameter) in `params` by its
    quantized form; other parameters are kept."""
    out = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            if set(value) == {"embedding"}:
                out[key] = quantize_table(np.asarray(value["embedding"]), bits)
            else:
                out[key] = quantize_tree(value, bits)
        else:
            out[key] = value
    return out
