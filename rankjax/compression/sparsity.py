"""Structured sparsity as an optax wrapper: `tx = sparsifier.wrap_optax(tx)`.

Masks live in the optimizer state, so they are checkpointed, restored and sharded with it;
pruned weights are exactly zero in the parameters and stay zero (their updates are masked
and the parameters are re-multiplied by the mask after every update).

Patterns (`pattern` in the `sparsity` config section):

* `"unstructured"`: any weight, by score, to the target sparsity;
* `"N:M"` (e.g. `"2:4"`, `"1:4"`): in every group of M consecutive weights along the input
  dimension of a kernel `[in, out]`, keep the N with the highest score (sparsity 1 - N/M,
  the pattern sparse tensor cores accelerate);
* `"block:RxC"`: `R x C` tiles of the kernel, scored by their mean score;
* `"channel"`: whole output channels (neurons, kernel columns), scored by their mean score;
* `"heads:H"`: whole attention heads (H per layer): a head's query, key and value columns and
  its rows of the output projection, scored together; other kernels stay dense;
* `"ffn"`: whole feed-forward units of BERT layers: a unit's `intermediate` column and its
  `ffn_output` row, scored together; `"heads:H+ffn"` prunes both, each to `target`.
  Pruned heads and units are cut out of the served model (`compression.compaction`): a
  smaller dense model, faster on every backend, where N:M and block masks only save bytes.

Scores (`criterion`): `"magnitude"` |w| or `"saliency"` |w * g| (first-order Taylor estimate
of the loss change when a weight is removed). Schedules: `"oneshot"` prunes to the target at
`start_step`; `"gradual"` raises sparsity from 0 to the target between `start_step` and
`end_step` along Zhu & Gupta's cubic, updating masks every `update_every` steps. N:M is
applied at `start_step` and its groups re-chosen every `update_every` steps until `end_step`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rankjax import config_args
from rankjax.sharding import path_str

CRITERIA = ("magnitude", "saliency")
SCHEDULES = ("oneshot", "gradual")


class NM(NamedTuple):
    """N of every M consecutive input weights are kept."""

    n: int
    m: int


class Block(NamedTuple):
    rows: int
    cols: int


class Units(NamedTuple):
    """Whole units of transformer layers, pruned with every matrix that reads or writes
    them: attention heads (`num_heads` per layer, 0: none) and feed-forward units."""

    num_heads: int
    ffn: bool


# Attention projections (listwise: `out`; BERT: `output`) and BERT's feed-forward pair.
_ATTENTION = re.compile(r"^(.*)/(query|key|value|out|output)/kernel$")
_FFN = re.compile(r"^(.*)/(intermediate|ffn_output)/kernel$")


def parse_pattern(pattern: str) -> str | NM | Block | Units:
    """`"2:4"` -> NM(2, 4), `"block:4x4"` -> Block(4, 4), `"heads:12+ffn"` -> Units(12,
    True), else the pattern name."""
    if pattern in ("unstructured", "channel"):
        return pattern
    if m := re.fullmatch(r"(\d+):(\d+)", pattern):
        n, mm = int(m.group(1)), int(m.group(2))
        if 0 < n < mm:
            return NM(n, mm)
    if m := re.fullmatch(r"block:(\d+)x(\d+)", pattern):
        if int(m.group(1)) > 0 and int(m.group(2)) > 0:
            return Block(int(m.group(1)), int(m.group(2)))
    if pattern == "ffn":
        return Units(0, True)
    if (m := re.fullmatch(r"heads:(\d+)(\+ffn)?", pattern)) and int(m.group(1)) > 0:
        return Units(int(m.group(1)), bool(m.group(2)))
    raise ValueError(
        f"sparsity.pattern={pattern!r}; valid: 'unstructured', 'N:M' with 0 < N < M "
        "(e.g. '2:4'), 'block:RxC' (e.g. 'block:4x4'), 'channel', 'heads:H' (attention "
        "layers with H heads), 'ffn' (BERT feed-forward units), 'heads:H+ffn'"
    )


def nm_mask(score: jax.Array, n: int, m: int) -> jax.Array:
    """Keeps the `n` highest scores of every `m` consecutive rows of `score [in, out]`.

    Ties are broken towards the lower index, so every group keeps exactly `n`.
    """
    rows, cols = score.shape
    if rows % m:
        raise ValueError(f"N:M with M={m} needs an input dimension divisible by {m}, got {rows}")
    groups = score.reshape(rows // m, m, cols)
    # Rank of each weight within its group (0 = highest), ties by position.
    order = jnp.argsort(-groups, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    return (rank < n).reshape(rows, cols)


def _threshold_mask(score: jax.Array, sparsity: jax.Array) -> jax.Array:
    """Keeps the `1 - sparsity` fraction of highest `score` entries (exact count)."""
    flat = score.ravel()
    k = jnp.round(sparsity * flat.size).astype(jnp.int32)  # how many to prune
    rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)  # 0 = lowest
    return (rank >= k).reshape(score.shape)


def structured_mask(score: jax.Array, pattern, sparsity: jax.Array) -> jax.Array:
    """The mask of `pattern` for a kernel's `score [in, out]` at `sparsity`."""
    if isinstance(pattern, NM):
        return nm_mask(score, pattern.n, pattern.m)
    if pattern == "unstructured":
        return _threshold_mask(score, sparsity)
    if pattern == "channel":
        keep = _threshold_mask(score.mean(axis=0), sparsity)
        return jnp.broadcast_to(keep[None, :], score.shape)
    rows, cols = score.shape
    r, c = pattern.rows, pattern.cols
    if rows % r or cols % c:
        raise ValueError(f"block:{r}x{c} does not tile a kernel of shape {score.shape}")
    tiles = score.reshape(rows // r, r, cols // c, c).mean(axis=(1, 3))
    keep = _threshold_mask(tiles, sparsity)
    return jnp.repeat(jnp.repeat(keep, r, axis=0), c, axis=1)


class SparsityState(NamedTuple):
    """Optimizer state of the wrapper: the inner state, the masks and the step count."""

    inner: Any
    masks: Any  # a bool mask per parameter (an all-True scalar for dense ones)
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class Sparsifier:
    """Sparsity settings (see the module docstring) and the optax wrapper applying them.

    Attributes:
      pattern: `"unstructured"`, `"N:M"`, `"block:RxC"`, `"channel"`, `"heads:H"`,
        `"ffn"` or `"heads:H+ffn"`.
      target: final sparsity for unstructured, block and channel patterns (N:M fixes its
        own: 1 - N/M).
      params: regex over parameter paths (`Dense_0/kernel`) to sparsify; only 2-D kernels.
      exclude: regex of parameter paths kept dense (e.g. the final scoring layer).
      criterion: `"magnitude"` or `"saliency"`.
      schedule: `"oneshot"` or `"gradual"`.
      start_step, end_step, update_every: the schedule's steps.
    """

    pattern: str = "2:4"
    target: float = 0.5
    params: str = r"kernel$"
    exclude: str = ""
    criterion: str = "magnitude"
    schedule: str = "gradual"
    start_step: int = 0
    end_step: int = 1000
    update_every: int = 100

    def __post_init__(self):
        parse_pattern(self.pattern)
        if not 0.0 <= self.target < 1.0:
            raise ValueError(f"sparsity.target={self.target}; valid: 0 <= target < 1")
        if self.criterion not in CRITERIA:
            raise ValueError(f"sparsity.criterion={self.criterion!r}; valid: {list(CRITERIA)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"sparsity.schedule={self.schedule!r}; valid: {list(SCHEDULES)}")
        if not (0 <= self.start_step <= self.end_step and self.update_every >= 1):
            raise ValueError(
                "sparsity needs 0 <= start_step <= end_step and update_every >= 1, got "
                f"{self.start_step}, {self.end_step}, {self.update_every}"
            )

    @property
    def final_sparsity(self) -> float:
        p = parse_pattern(self.pattern)
        return 1.0 - p.n / p.m if isinstance(p, NM) else self.target

    def sparsity_at(self, step: jax.Array) -> jax.Array:
        """Target sparsity after `step` updates (Zhu & Gupta's cubic when gradual)."""
        step = jnp.asarray(step, jnp.float32)
        final = self.final_sparsity
        if self.schedule == "oneshot" or isinstance(parse_pattern(self.pattern), NM):
            return jnp.where(step >= self._first, final, 0.0)
        span = max(self.end_step - self._first, 1)
        # Progress on the update grid, so the value changes only on update steps; the
        # target itself from end_step on (also when end_step is off the grid, or the
        # schedule has a single update).
        done = jnp.floor((step - self._first) / self.update_every) * self.update_every
        frac = jnp.where(step >= self.end_step, 1.0, jnp.clip(done / span, 0.0, 1.0))
        return jnp.where(step >= self._first, final * (1.0 - (1.0 - frac) ** 3), 0.0)

    @property
    def _first(self) -> int:
        """The first update step that may prune (steps count updates from 1)."""
        return max(self.start_step, 1)

    @property
    def final_step(self) -> int:
        """The update after which masks no longer change: checkpoints from before it are not
        sparse yet (the trainer keeps them out of best-checkpoint selection)."""
        if self.schedule == "oneshot" and not isinstance(parse_pattern(self.pattern), NM):
            return self._first
        return max(self.end_step, self._first)

    def refreshes_at(self, step: jax.Array) -> jax.Array:
        """Whether masks are recomputed after update `step` (1-based)."""
        if self.schedule == "oneshot" and not isinstance(parse_pattern(self.pattern), NM):
            return step == self._first
        last = max(self.end_step, self._first)
        on_grid = (step >= self._first) & (step <= last)
        on_grid &= (step - self._first) % self.update_every == 0
        if isinstance(parse_pattern(self.pattern), NM):  # N:M: re-chosen on the grid only
            return on_grid
        return on_grid | (step == last)  # a gradual schedule ends at its target

    def selects(self, path: str, leaf) -> bool:
        p = parse_pattern(self.pattern)
        if isinstance(p, Units) and not (
            (p.num_heads and _ATTENTION.match(path)) or (p.ffn and _FFN.match(path))
        ):
            return False
        return (
            np.ndim(leaf) == 2
            and bool(re.search(self.params, path))
            and not (self.exclude and re.search(self.exclude, path))
        )

    def _check_shape(self, path: str, shape: tuple[int, ...]) -> None:
        p = parse_pattern(self.pattern)
        if isinstance(p, NM) and shape[0] % p.m:
            raise ValueError(
                f"sparsity.pattern={self.pattern!r} needs the input dimension of {path} "
                f"{shape} to be divisible by {p.m}; exclude it with sparsity.exclude"
            )
        heads = isinstance(p, Units) and p.num_heads and _ATTENTION.match(path)
        if heads and (shape[0] % p.num_heads or shape[1] % p.num_heads):
            raise ValueError(
                f"sparsity.pattern={self.pattern!r}: {path} {shape} has no {p.num_heads} "
                "equal heads"
            )
        if isinstance(p, Block) and (shape[0] % p.rows or shape[1] % p.cols):
            raise ValueError(
                f"sparsity.pattern={self.pattern!r} does not tile {path} {shape}; exclude it "
                "with sparsity.exclude"
            )

    def _masks_like(self, params):
        selected = 0
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            if self.selects(path_str(path), leaf):
                self._check_shape(path_str(path), leaf.shape)
                selected += 1
        if not selected:  # a run that prunes nothing must not report itself as pruned
            matrices = [
                path_str(p)
                for p, x in jax.tree_util.tree_leaves_with_path(params)
                if np.ndim(x) == 2
            ]
            raise ValueError(
                f"sparsity.params={self.params!r} (exclude {self.exclude!r}, pattern "
                f"{self.pattern!r}) selects none of the model's weight matrices, e.g. "
                f"{matrices[:4]}"
            )
        return jax.tree_util.tree_map_with_path(
            lambda p, x: (
                jnp.ones(x.shape, bool) if self.selects(path_str(p), x) else jnp.ones([], bool)
            ),
            params,
        )

    def wrap_optax(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """`tx` with masked gradients and updates, and masks refreshed on schedule."""
        pattern = parse_pattern(self.pattern)

        def init(params):
            return SparsityState(
                tx.init(params), self._masks_like(params), jnp.zeros([], jnp.int32)
            )

        def update(grads, state, params=None):
            if params is None:
                raise ValueError("the sparsity wrapper needs params in tx.update")
            grads = jax.tree_util.tree_map(lambda g, m: g * m, grads, state.masks)
            updates, inner = tx.update(grads, state.inner, params)
            step = state.count + 1
            new = optax.apply_updates(params, updates)
            refresh = self.refreshes_at(step)
            sparsity = self.sparsity_at(step)

            def score_of(w, g):
                s = jnp.abs(w) if self.criterion == "magnitude" else jnp.abs(w * g)
                return s.astype(jnp.float32)

            units = {}
            if isinstance(pattern, Units):
                units = _unit_masks(new, grads, state.masks, score_of, pattern, sparsity)

            def new_mask(path, w, g, m):
                if m.ndim == 0:
                    return m
                fresh = (
                    units[path]
                    if path in units
                    else structured_mask(score_of(w, g), pattern, sparsity)
                )
                return jnp.where(refresh, fresh, m)

            masks = jax.tree_util.tree_map_with_path(
                lambda p, w, g, m: new_mask(path_str(p), w, g, m), new, grads, state.masks
            )
            # Pruned weights become exactly zero and stay so.
            updates = jax.tree_util.tree_map(lambda n, p, m: n * m - p, new, params, masks)
            return updates, SparsityState(inner, masks, step)

        return optax.GradientTransformation(init, update)


def _unit_masks(params, grads, masks, score_of, pattern: Units, sparsity) -> dict:
    """Joint masks of whole heads and feed-forward units, layer by layer: each unit's score
    sums its columns of the matrices that write it and its rows of the one that reads it;
    the lowest-scoring `sparsity` of a layer's units are pruned in all of them."""
    flat = {
        path_str(p): (w, g)
        for (p, w), g in zip(
            jax.tree_util.tree_leaves_with_path(params),
            jax.tree_util.tree_leaves(grads),
            strict=True,
        )
    }
    selected = {path_str(p) for p, m in jax.tree_util.tree_leaves_with_path(masks) if m.ndim}
    groups: dict[tuple[str, str], dict[str, str]] = {}  # (kind, layer) -> {role: path}
    for path in selected:
        if pattern.num_heads and (m := _ATTENTION.match(path)):
            role = "read" if m.group(2) in ("out", "output") else m.group(2)
            groups.setdefault(("heads", m.group(1)), {})[role] = path
        elif pattern.ffn and (m := _FFN.match(path)):
            role = "read" if m.group(2) == "ffn_output" else "write"
            groups.setdefault(("ffn", m.group(1)), {})[role] = path
    out = {}
    for (kind, _), parts in groups.items():
        units = pattern.num_heads if kind == "heads" else flat[parts["read"]][0].shape[0]
        total = 0.0
        for role, path in parts.items():
            s = score_of(*flat[path])
            # Writers hold a unit's columns, the reader its rows.
            per_unit = s.T if role != "read" else s
            total = total + per_unit.reshape(units, -1).sum(axis=1)
        keep = _threshold_mask(total, sparsity)  # [units]
        for role, path in parts.items():
            d_in, d_out = flat[path][0].shape
            if role == "read":
                out[path] = jnp.broadcast_to(
                    jnp.repeat(keep, d_in // units)[:, None], (d_in, d_out)
                )
            else:
                out[path] = jnp.broadcast_to(
                    jnp.repeat(keep, d_out // units)[None, :], (d_in, d_out)
                )
    return out


def config_section(pattern: str = "2:4", **overrides) -> dict[str, Any]:
    """A complete `sparsity` config section (enabled), for configs to start from."""
    return {"enabled": True, **dataclasses.asdict(Sparsifier(pattern=pattern, **overrides))}


def from_config(cfg: Mapping[str, Any] | None) -> Sparsifier | None:
    """`config.sparsity` -> a `Sparsifier`, or None when absent or `enabled=False`."""
    return config_args.optional_section(Sparsifier, cfg, "sparsity")


def masks_of(opt_state: Any) -> Any | None:
    """The masks inside an optimizer state built by `wrap_optax` (None if there are none)."""
    found = []

    def visit(node):
        if isinstance(node, SparsityState):
            found.append(node.masks)
            return
        if isinstance(node, tuple | list):
            for child in node:
                visit(child)

    visit(opt_state)
    return found[0] if found else None


def measured(params: Any, sparsifier: Sparsifier) -> dict[str, float]:
    """Fraction of exact zeros in each kernel `sparsifier` prunes, and over all of them."""
    out, zeros, total = {}, 0, 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = path_str(path)
        if sparsifier.selects(name, leaf):
            z = int(np.sum(np.asarray(leaf) == 0))
            out[name] = z / leaf.size
            zeros, total = zeros + z, total + leaf.size
    out["all"] = zeros / max(total, 1)
    return out


# ----------------------------------------------------------------------------- N:M packing

PACKED_VALUES, PACKED_INDEX = "nm_values", "nm_index"


def _index_bits(m: int) -> int:
    return max(1, int(np.ceil(np.log2(m))))


def pack_nm(kernel: np.ndarray, n: int, m: int) -> dict[str, np.ndarray]:
    """Stores an N:M-sparse kernel `[in, out]` as its kept values and their positions.

    Returns:
      `{"nm_values": [in // m * n, out]` (the kernel's dtype, e.g. int8),
      `"nm_index": uint8 [...]}`: each kept value's position within its group of `m`,
      `ceil(log2(m))` bits each, bit-packed.

    Raises:
      ValueError: a group holds more than `n` non-zeros (the kernel is not N:M sparse).
    """
    w = np.asarray(kernel)
    rows, cols = w.shape
    groups = w.reshape(rows // m, m, cols)
    if np.any((groups != 0).sum(axis=1) > n):
        raise ValueError(f"kernel {w.shape} is not {n}:{m} sparse")
    # The n largest magnitudes per group (stable), in position order; a kept weight that
    # is exactly zero is interchangeable with a pruned one.
    magnitude = np.abs(groups.astype(np.float32))
    top = np.sort(np.argsort(-magnitude, axis=1, kind="stable")[:, :n, :], axis=1)
    values = np.take_along_axis(groups, top, axis=1).reshape(rows // m * n, cols)
    bits = _index_bits(m)
    as_bits = ((top.reshape(-1)[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return {PACKED_VALUES: values, PACKED_INDEX: np.packbits(as_bits.reshape(-1))}


def unpack_nm(packed: Mapping[str, np.ndarray], n: int, m: int) -> np.ndarray:
    """The dense kernel `[in, out]` from `pack_nm`'s output."""
    values = np.asarray(packed[PACKED_VALUES])
    kept_rows, cols = values.shape
    rows = kept_rows // n * m
    bits = _index_bits(m)
    count = kept_rows * cols
    flat = np.unpackbits(np.asarray(packed[PACKED_INDEX]))[: count * bits].reshape(count, bits)
    positions = (flat.astype(np.int64) << np.arange(bits)).sum(axis=1).reshape(rows // m, n, cols)
    dense = np.zeros((rows // m, m, cols), values.dtype)
    np.put_along_axis(dense, positions, values.reshape(rows // m, n, cols), axis=1)
    return dense.reshape(rows, cols)


def pack_tree(tree: Any, sparsifier: Sparsifier, is_kernel) -> Any:
    """Packs every N:M-sparsified kernel of `tree`; `is_kernel(path)` -> the parameter path
    of the kernel stored at `path` (or None for other leaves)."""
    p = parse_pattern(sparsifier.pattern)
    if not isinstance(p, NM):
        return tree

    def visit(node, prefix):
        out = {}
        for key, value in node.items():
            path = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                out[key] = visit(value, path)
                continue
            kernel_path = is_kernel(path)
            if kernel_path and np.ndim(value) == 2 and sparsifier.selects(kernel_path, value):
                out[key] = pack_nm(np.asarray(value), p.n, p.m)
            else:
                out[key] = value
        return out

    return visit(tree, "")


def unpack_tree(tree: Any, sparsifier: Sparsifier | None) -> Any:
    """Inverse of `pack_tree`: dense kernels wherever packed ones are stored."""
    if sparsifier is None or not isinstance(parse_pattern(sparsifier.pattern), NM):
        return tree
    p = parse_pattern(sparsifier.pattern)

    def visit(node):
        if isinstance(node, Mapping):
            if set(node) == {PACKED_VALUES, PACKED_INDEX}:
                return unpack_nm(node, p.n, p.m)
            return {k: visit(v) for k, v in node.items()}
        return node

    return visit(tree)
