"""Packed cross-encoder input: several (query, product) pairs per row, no empty slots.

A padded batch `tokens [B, N, T]` makes a cross-encoder compute every list slot (filled or
not) at the batch's longest sequence. On Home Depot that is a fifth to a quarter real
tokens. Packing lays the real pairs of a batch end to end in rows of `row_length` tokens
(best-fit decreasing), and the model keeps them apart: each token attends only to tokens
of its own pair (segment-masked attention, `kernels.short_attention`), positions restart
at 0 for each pair, and each pair's score is read at its own first token. A packed batch
replaces `tokens` and `token_types` with:

  packed_tokens     [R, L] int32  token ids (0 where a row has room left)
  packed_types      [R, L] int8   token type ids
  packed_segments   [R, L] int32  the pair's slot in the batch (b * N + n), -1 on padding
  packed_positions  [R, L] int32  position within the pair
  packed_item_at    [G, B / G * N] int32  where each slot's first token is, as an index
                    into its group's `R / G * L` flattened row tokens (0 for empty slots)

With data parallelism the batch's lists are split into `G` groups (one per device of the
data axis), each packed into its own `R / G` rows, so a device finds its pairs' tokens
in its own share of the rows. The row count is rounded up to 2 significant bits (12, 16,
24, 32, ...), so a run compiles only a few shapes (3 row counts in Home Depot training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rankjax.data import tokens

PACKED_KEYS = (
    "packed_tokens",
    "packed_types",
    "packed_segments",
    "packed_positions",
    "packed_item_at",
)


def round_rows(rows: int, bits: int = 2) -> int:
    """`rows` rounded up to `bits` significant bits (with 2: 1-4 exact, then 6, 8, 12, 16,
    24, 32, ...): at most a third more rows than needed, and few distinct shapes."""
    rows = max(1, int(rows))
    shift = max(0, rows.bit_length() - bits)
    return -(-rows >> shift) << shift if rows & ((1 << shift) - 1) else rows


def best_fit(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Best-fit-decreasing bin packing of sequences into rows of `capacity` tokens.

    Args:
      lengths: `[M]` tokens per sequence; 0 for nothing to place (an empty slot).
      capacity: tokens per row; every length must be at most this.

    Returns:
      `(row [M], offset [M], rows used)`: the row and first column of each sequence (-1
      and 0 for zero lengths).
    """
    row = np.full(len(lengths), -1, np.int64)
    offset = np.zeros(len(lengths), np.int64)
    by_space: list[list[int]] = [[] for _ in range(capacity + 1)]  # free tokens -> rows
    used = 0
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        if n == 0:
            break
        space = next((s for s in range(n, capacity + 1) if by_space[s]), None)
        if space is None:
            r, space = used, capacity
            used += 1
        else:
            r = by_space[space].pop()
        row[i], offset[i] = r, capacity - space
        by_space[space - n].append(r)
    return row, offset, used


def pack_pairs(
    batch: Mapping[str, np.ndarray], row_length: int, groups: int = 1
) -> dict[str, np.ndarray]:
    """The batch with its pairs packed into rows (module docstring).

    Args:
      batch: a padded batch with `tokens [B, N, T]` (right-padded with 0),
        `token_types [B, N, T]` and `where [B, N]`; other keys are kept.
      row_length: `L`, tokens per packed row; at least the longest pair.
      groups: `G`, packed separately (one per data-parallel device); divides `B`.

    Returns:
      The batch with `PACKED_KEYS` instead of `tokens` and `token_types`.

    Raises:
      ValueError: a pair longer than `row_length`, `B` not divisible by `groups`, or
        tokens that are not right-padded.
    """
    ids = np.asarray(batch["tokens"])
    b, n, t = ids.shape
    if b % groups:
        raise ValueError(f"a batch of {b} lists cannot be packed in {groups} equal groups")
    real = ids != 0
    lengths = real.sum(-1) * np.asarray(batch["where"], bool)
    if not np.array_equal(real, np.arange(t) < real.sum(-1)[..., None]):
        raise ValueError("packing needs right-padded tokens (real tokens first, then 0s)")
    longest = int(lengths.max(initial=0))
    if longest > row_length:
        raise ValueError(
            f"a pair of {longest} tokens does not fit data.text.pack_length={row_length}; "
            "set it to at least data.text.max_length"
        )
    lengths = lengths.reshape(groups, -1)  # [G, B / G * N]
    fits = [best_fit(g, row_length) for g in lengths]
    rows = round_rows(max(used for _, _, used in fits))
    row = np.stack([r for r, _, _ in fits])
    offset = np.stack([o for _, o, _ in fits])
    item_at = np.where(row >= 0, row * row_length + offset, 0).astype(np.int32)
    # Scatter every real token to (group row, column): token j of slot s lands at
    # (g * rows + row[s], offset[s] + j).
    slot = np.flatnonzero(lengths.reshape(-1))
    count = lengths.reshape(-1)[slot]
    src = np.repeat(slot, count)
    pos = np.arange(src.size) - np.repeat(np.cumsum(count) - count, count)
    group = src // lengths.shape[1]
    dest_row = group * rows + row.reshape(-1)[src]
    dest_col = offset.reshape(-1)[src] + pos
    shape = (groups * rows, row_length)
    out = {k: v for k, v in batch.items() if k not in ("tokens", "token_types")}
    out["packed_tokens"] = np.zeros(shape, np.int32)
    out["packed_tokens"][dest_row, dest_col] = ids.reshape(b * n, t)[src, pos]
    out["packed_types"] = np.zeros(shape, np.int8)
    out["packed_types"][dest_row, dest_col] = np.asarray(batch["token_types"]).reshape(b * n, t)[
        src, pos
    ]
    out["packed_segments"] = np.full(shape, -1, np.int32)
    out["packed_segments"][dest_row, dest_col] = src
    out["packed_positions"] = np.zeros(shape, np.int32)
    out["packed_positions"][dest_row, dest_col] = pos
    out["packed_item_at"] = item_at
    return out


def real_token_share(batch: Mapping[str, np.ndarray]) -> float:
    """Real tokens over the token positions a cross-encoder computes on this batch
    (packed or padded)."""
    ids = batch["packed_tokens"] if "packed_tokens" in batch else batch["tokens"]
    return float((np.asarray(ids) != 0).mean())


def describe_shares(
    batches: Callable[[int], dict[str, np.ndarray]],
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    multiple: int = 16,
    steps: int = 20,
) -> str:
    """A log line: the share of real tokens among the token positions a cross-encoder
    computes, over the first `steps` training batches, as padded lists (every slot at the
    longest sequence), trimmed (to a `multiple`), and as `prepare` leaves them (e.g.
    packed)."""
    raw = [batches(i) for i in range(steps)]
    trimmed = [tokens.trim_token_axes(b, multiple) for b in raw]
    shares = {
        "padded": np.mean([real_token_share(b) for b in raw]),
        "trimmed": np.mean([real_token_share(b) for b in trimmed]),
        "as computed": np.mean([real_token_share(prepare(b)) for b in raw]),
    }
    return f"real tokens over computed positions, first {steps} training batches: " + ", ".join(
        f"{k} {v:.1%}" for k, v in shares.items()
    )


def preparer(
    text_cfg: Mapping[str, Any] | None, packs: bool, groups: int = 1
) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """What a text ranker's host batches go through before the model: token axes trimmed
    to the batch's longest sequence (`data.text.pad_multiple`), then, for a model that
    reads packed pairs (`packs`) with `data.text.pack_length > 0`, packed in `groups`.

    Raises:
      ValueError: `pack_length` shorter than `max_length`.
    """
    text_cfg = text_cfg or {}
    multiple = int(text_cfg.get("pad_multiple", 16))
    length = int(text_cfg.get("pack_length", 0))
    if length < 0:
        raise ValueError(f"data.text.pack_length={length}; expected 0 (off) or a row length")
    max_length = int(text_cfg.get("max_length", 0))
    if length and max_length > length:
        raise ValueError(
            f"data.text.pack_length={length} is shorter than data.text.max_length="
            f"{max_length}: the longest pairs would not fit a row"
        )
    if not (length and packs):
        return lambda batch: tokens.trim_token_axes(batch, multiple)
    return lambda batch: pack_pairs(batch, length, groups)
