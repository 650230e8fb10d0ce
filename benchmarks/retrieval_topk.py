r"""Top-K time per user of finished retrieval runs, as served: the users' vectors, their
scores over the whole catalog and the K best, for batches of users.

  python -m benchmarks.retrieval_topk --workdirs=/tmp/rankjax/beauty_s3rec,/tmp/rankjax/beauty_int8

Each workdir is loaded as `rankjax.tasks.retrieval.load` does (best parameters); a run
with `quant` is served in the form its results.json records (`serving_form`: the one
the run chose and evaluated), with its item table as int8/int4 rows when
`quant.embedding_bits` says so, so scores come from the quantized table (`--form`
converts it again for this device instead: a GPU run's model timed on a CPU); a run without
`quant` is timed in float32. Users are the first of the test split's, each batch scored
in one compiled pass then top-K'd; compilation excluded, the median of `--repeats`
passes. Bytes are the served arrays'; test NDCG@10 the run's own (results.json), left empty
for a form converted again here.
The user's earlier items are not removed from the top-K (a few ids per user, filtered
where the ids are used).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import timing
from rankjax.compression import quantization
from rankjax.tasks import retrieval

WORKDIRS = flags.DEFINE_list("workdirs", None, "finished retrieval runs", required=True)
BATCHES = flags.DEFINE_list("batch_sizes", ["1", "256", "4096"], "users scored together")
TOP_K = flags.DEFINE_integer("top_k", 10, "items returned per user")
REPEATS = flags.DEFINE_integer("repeats", 20, "timed passes per row")
METRIC = flags.DEFINE_string("metric", "ndcg@10", "the test metric shown beside the time")
FORM = flags.DEFINE_string(
    "form",
    "recorded",
    "quantized runs' served form: 'recorded' (the run's own), or 'auto', 'int8', 'fp8', "
    "'bf16' to convert again for this device (e.g. a GPU run timed on a CPU)",
)


def served_scorer(workdir: str, form: str = "recorded"):
    """`(scorer, label, bytes, test metrics, users)` of the run in `workdir` as served in
    `form` (see `--form`); the metrics are the run's own (results.json), empty for a form
    converted again here."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    trained = retrieval.load(workdir)
    users = trained.log.num_users
    if "test_served" not in results:  # a float run
        float_bytes = results["bytes"]["float_bytes"]
        return trained.scorer("test"), "float32", float_bytes, results["test"], users
    quantizer = retrieval.quantizer_of(trained.config)
    bits = int(trained.config.quant.get("embedding_bits", 0))
    recorded = results.get("serving_form")
    form = recorded if form == "recorded" else form
    if quantizer is not None and form:
        quantizer = dataclasses.replace(quantizer, serving=form)
    variables, served_form, _ = retrieval.served(
        trained.task, quantizer, trained.params, bits, np.arange(min(512, users))
    )
    label = retrieval.served_name(quantizer, bits, served_form.served)
    same = (served_form.served or None) == recorded
    return (
        trained.task.scorer(jax.device_put(variables), served_form, "test"),
        label,
        quantization.array_bytes(variables),
        results["test_served"] if same else {},
        users,
    )


def main(argv):
    del argv
    k = TOP_K.value
    top = jax.jit(lambda scores: jax.lax.top_k(scores, k))
    env = timing.environment()
    rows = []
    for workdir in WORKDIRS.value:
        score, label, size, test, num_users = served_scorer(workdir, FORM.value)
        for n in (int(b) for b in BATCHES.value):
            if n > num_users:
                raise ValueError(f"--batch_sizes={n}: {workdir} has {num_users} users")
            batch = {"users": jnp.arange(n, dtype=jnp.int32)}
            seconds = timing.median_seconds(lambda b=batch, s=score: top(s(b)), REPEATS.value)
            rows.append(
                [
                    os.path.basename(workdir.rstrip("/")),
                    label,
                    size,
                    test.get(METRIC.value, np.nan),
                    n,
                    1e3 * seconds,
                    1e6 * seconds / n,
                    n / seconds,
                ]
            )
    print(
        timing.markdown_table(
            f"Top-{k} over the catalog per user, as served, {env['device']} "
            f"({env['platform']}), jax {env['jax']}, {env['date']}",
            [
                "run",
                "served",
                "bytes",
                f"test {METRIC.value}",
                "users",
                "ms per batch",
                "µs per user",
                "users/s",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    app.run(main)
