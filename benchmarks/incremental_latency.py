r"""Per-event latency of next-item serving: appending one event to a user's cached state
(`rankjax.incremental`) against recomputing the user's whole history, both returning the
top-K over the catalog. Float and served int8 (AQT dense layers, int8 item table).

  python -m benchmarks.incremental_latency --lengths=50,200 --users=1

A SASRec of `configs/beauty_sequential.py`'s shape (`--dim`, default 128, 2 blocks, 2 heads)
with `max_len` the longest length, random weights (speed does not depend on them), a
Beauty-sized catalog (12,101 items). Each row: p50/p99 of `--repeats` events for `--users`
users at once, after the history reached the given length; compilation excluded. The
recompute reads exactly the history (no padding to `max_len`), its fastest form.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing
from rankjax import incremental
from rankjax.compression import embeddings, quantization
from rankjax.models import sequential

LENGTHS = flags.DEFINE_list("lengths", ["50", "200"], "history lengths to serve at")
USERS = flags.DEFINE_integer("users", 1, "users whose events arrive together")
ITEMS = flags.DEFINE_integer("items", 12101, "catalog size")
TOP_K = flags.DEFINE_integer("top_k", 10, "items returned per event")
REPEATS = flags.DEFINE_integer("repeats", 50, "timed events per row")
DIM = flags.DEFINE_integer("dim", 128, "hidden width")


def _variants(max_len: int):
    """`{name: (model, variables)}`: float, and served int8 layers and table."""
    model = sequential.SASRec(
        num_items=ITEMS.value,
        max_len=max_len,
        dim=DIM.value,
        num_layers=2,
        num_heads=2,
        positions="oldest",
    )
    sample = jnp.ones((1, max_len), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), sample)
    q = quantization.Quantizer(mode="ptq", serving="int8")
    converter = model.clone(dot_general_cls=q.dot_general_factory("convert"))
    served = q.convert(converter, variables["params"], (sample,))
    served["params"] = embeddings.quantize_tree(jax.device_get(served["params"]), 8)
    serve_model = model.clone(embedding_bits=8, **q.model_seam("serve"))
    return {"float32": (model, variables), "int8 served": (serve_model, served)}


def _event(scorer, state, items):
    """The top-K after appending `items` to `state` (the state is dropped: each timed
    event starts from the same history)."""
    return scorer.append(state, items)[1]


def _ms(fn, repeats: int) -> dict[str, float]:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.perf_counter() - t0))
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def main(argv):
    del argv
    lengths = sorted(int(n) for n in LENGTHS.value)
    users, k = USERS.value, TOP_K.value
    rng = np.random.default_rng(0)
    env = timing.environment()
    rows = []
    for name, (model, variables) in _variants(max(lengths)).items():
        scorer = incremental.IncrementalScorer(model, variables, top_k=k)
        table = scorer.table
        recompute = jax.jit(
            lambda v, seqs, m=model, t=table: jax.lax.top_k(
                m.apply(v, seqs, method="users") @ t.T, k
            )
        )
        for length in lengths:
            history = rng.integers(0, ITEMS.value, size=(users, length))
            state = scorer.start(users)
            for t in range(length - 1):  # the history before the timed event
                state, _ = scorer.append(state, history[:, t])
            last = jnp.asarray(history[:, -1], jnp.int32)
            step = _ms(functools.partial(_event, scorer, state, last), REPEATS.value)
            # Recomputed over the history alone (no padding to max_len): its best case.
            seqs = jnp.asarray(history + 1, jnp.int32)
            full = _ms(functools.partial(recompute, scorer.variables, seqs), REPEATS.value)
            rows.append(
                [
                    name,
                    length,
                    step["p50"],
                    step["p99"],
                    full["p50"],
                    full["p99"],
                    full["p50"] / step["p50"],
                ]
            )
    print(
        timing.markdown_table(
            f"Per-event latency, {users} user(s), dim {DIM.value}, "
            f"top-{k} of {ITEMS.value:,} items, "
            f"{env['device']} ({env['platform']}), jax {env['jax']}",
            ["model", "history", "append p50 ms", "p99", "recompute p50 ms", "p99", "speedup"],
            rows,
        )
    )


if __name__ == "__main__":
    app.run(main)
