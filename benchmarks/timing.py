"""Measuring what a ranker costs to serve: scoring throughput, latency and FLOPs.

Timings follow the usual rules: a warm-up pass first (compilation is not timed), device
work finished (`block_until_ready`) before a clock is read, the median of several
repeats reported, and the device and JAX version recorded beside the numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from rankjax.data import tokens
from rankjax.data.batches import pad_batch_count, pad_lists
from rankjax.data.dataset import RankingDataset


def environment() -> dict[str, str]:
    """The date, device kind, device count and JAX version, for the record."""
    devices = jax.devices()
    return {
        "date": datetime.date.today().isoformat(),
        "device": devices[0].device_kind,
        "platform": devices[0].platform,
        "devices": str(len(devices)),
        "jax": jax.__version__,
    }


def pair_batches(
    dataset: RankingDataset, batch_size: int, multiple: int = 16, sort: bool = True
) -> list[dict[str, np.ndarray]]:
    """Every item of `dataset` as its own one-item list, sorted by token length (or in
    the data's order: `sort=False`, as a server receives a query's candidates) and cut
    into batches `[batch_size, 1, T]` (each trimmed to its longest sequence): how an
    offline or high-throughput scorer batches (query, product) pairs. The last batch is
    filled with empty lists."""
    singles = dataclasses.replace(
        dataset,
        list_offsets=np.arange(dataset.num_items + 1, dtype=np.int64),
        query_ids=np.repeat(dataset.query_ids, dataset.list_sizes),
    )
    order = np.arange(singles.num_lists)
    if sort:
        order = np.argsort(tokens.list_token_lengths(singles), kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        part = singles.select(order[start : start + batch_size])
        batch = pad_batch_count(pad_lists(part, 1), batch_size)
        out.append(tokens.trim_token_axes(batch, multiple))
    return out


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Items scored per second over a pass of batches, median of `repeats` passes."""

    items_per_sec: float
    seconds_per_pass: float
    items: int
    repeats: int


def scoring_throughput(
    score: Callable[[dict[str, np.ndarray]], jax.Array],
    batches: Sequence[dict[str, np.ndarray]],
    repeats: int = 3,
) -> Throughput:
    """Times `score` over all `batches` (device-resident first, so the host's transfers
    are not timed); counts only real items (`where`)."""
    device_batches = [jax.device_put(b) for b in batches]
    for b in device_batches:  # warm-up: one compilation per shape
        jax.block_until_ready(score(b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [score(b) for b in device_batches]
        jax.block_until_ready(outs)
        times.append(time.perf_counter() - t0)
    items = int(sum(int(b["where"].sum()) for b in batches))
    median = statistics.median(times)
    return Throughput(items / median, median, items, repeats)


def latency_ms(
    score: Callable[[dict[str, np.ndarray]], jax.Array],
    batch: dict[str, np.ndarray],
    repeats: int = 50,
) -> dict[str, float]:
    """p50 and p99 wall time in ms of scoring one batch (e.g. one query's candidates)."""
    b = jax.device_put(batch)
    jax.block_until_ready(score(b))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(score(b))
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def wall_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn()` (its result waited for), after
    `warmup` untimed calls (compilation, first-touch allocation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall seconds of `fn()` (its result waited for) over `repeats`, after one
    warm-up call."""
    return statistics.median(wall_seconds(fn, repeats))


def _cell(value: object) -> str:
    if not isinstance(value, float):
        return str(value)
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """`title` and a Markdown table of `rows` (floats of 100 or more as integers with
    thousands separators, smaller ones to 3 significant digits), columns lined up."""
    cells = [list(header)]
    cells += [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([f"\n{title}\n", line(cells[0]), rule] + [line(r) for r in cells[1:]])


def pareto_plot(
    rows: Sequence[tuple[str, float, float]],
    path: str,
    xlabel: str,
    ylabel: str,
    higher_x_is_better: bool = False,
    marks: Sequence[tuple[str, float]] = (),
) -> str:
    """Writes a PNG of `(label, x, y)` points (y higher is better), the Pareto front
    joined and coloured, a log x axis, and vertical dashed `marks` (`(label, x)`: e.g.
    a peer without a quality figure). Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sign = -1.0 if higher_x_is_better else 1.0
    front = set(pareto_front([(sign * x, y) for _, x, y in rows]))  # costs: lower is better
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, x, y in rows:
        on = (sign * x, y) in front
        ax.scatter(x, y, color="tab:blue" if on else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
    line = sorted((sign * c, q) for c, q in front)
    ax.plot([x for x, _ in line], [y for _, y in line], color="tab:blue", lw=1)
    for label, x in marks:
        ax.axvline(x, color="tab:red", ls="--", lw=1)
        ax.annotate(
            label,
            (x, ax.get_ylim()[0]),
            fontsize=7,
            rotation=90,
            color="tab:red",
            textcoords="offset points",
            xytext=(3, 4),
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The `(cost, quality)` points no other point beats on one without losing on the
    other (lower cost, higher quality), sorted by cost."""
    front = []
    for c, q in points:
        dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for c2, q2 in points)
        if not dominated and (c, q) not in front:
            front.append((c, q))
    return sorted(front)
