r"""Cost and quality of trained text rankers, side by side: serving bytes, FLOPs per scored
product, test NDCG@5 / pairwise accuracy / calibrated RMSE, and scoring throughput and
latency measured here, now.

  python -m benchmarks.text_rankers_table --json=/tmp/rankjax/hd_table.json \
      /tmp/rankjax/hd_cross /tmp/rankjax/hd_distill /tmp/rankjax/hd_student_int8_nm24

Each argument is a finished workdir (`configs/homedepot_*.py`). A run with a served
(converted) model is measured twice: its float parameters and the served model as saved.
Throughput: every test pair once, sorted by length into batches of `--batch_size` pairs
(each trimmed to its longest sequence, or packed into rows as the run's config packs
them: `data.text.pack_length`; `--pack_length` overrides it), median of 3 passes after a
warm-up pass; latency: p50/p99 of scoring one batch of `--latency_batch` pairs. `real %`
is the share of real tokens among the positions computed in the throughput pass.
"""

import functools
import json
import os

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import timing
from rankjax import data as data_lib
from rankjax import models, serving
from rankjax.data import packing
from rankjax.models import bert

FLAGS = flags.FLAGS
flags.DEFINE_string("json", "", "Also write the rows to this JSON file.")
flags.DEFINE_integer("batch_size", 1024, "Pairs per batch for the throughput pass.")
flags.DEFINE_integer("latency_batch", 64, "Pairs per call for the latency figure.")
flags.DEFINE_integer(
    "pack_length",
    -1,
    "Cross-encoder input: -1 as each run's config says, 0 padded, L packed in L-token rows.",
)


HEAD = (
    f"| {'run':<34} | {'MB':>7} | {'GFLOP/p':>7} | {'NDCG@5':>6} | {'pair acc':>8} | "
    f"{'RMSE':>6} | {'real %':>6} | {'products/s':>10} | {'p50 ms':>6} | {'p99 ms':>6} |"
)


def _quality(workdir: str, served: bool) -> dict[str, float]:
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    return results["test_served" if served else "test"]


def _bytes(workdir: str, served: bool) -> int:
    with open(os.path.join(workdir, "compression.json")) as f:
        report = json.load(f)
    return int(report["serving_bytes" if served else "float_bytes"])


def _flops(ranker, test) -> float:
    """Forward FLOPs per scored product at the test pairs' mean token length."""
    model = ranker.model
    cfg = model.bert_config
    # A compacted served model has narrower layers (pruned heads and units cut out).
    flops = functools.partial(
        bert.flops_per_sequence,
        cfg,
        model.num_layers or cfg.num_hidden_layers,
        layer_sizes=model.layer_sizes,
    )
    if "tokens" in test.extras and model.inputs[0] == "tokens":
        return flops(float((test.extras["tokens"] != 0).sum(1).mean()))
    # Bi-encoder as run here: each product encoded, the query once per list.
    item = float((test.extras["item_tokens"] != 0).sum(1).mean())
    query = float((test.extras["query_tokens"] != 0).sum(1).mean())
    per_list = test.num_items / max(test.num_lists, 1)
    return flops(item) + flops(query) / per_list


def _preparer(ranker: serving.Ranker):
    """`(prepare, pack length)`: how this run's batches are laid out, as its config says
    or as `--pack_length` says (pack length 0: padded)."""
    text_cfg = dict(ranker.config.data.get("text") or {})
    if FLAGS.pack_length >= 0:
        text_cfg["pack_length"] = FLAGS.pack_length
    packs = hasattr(ranker.model, "packed_inputs")
    length = int(text_cfg.get("pack_length", 0)) if packs else 0
    return packing.preparer(text_cfg, packs), length


def _real_share(batches) -> float:
    """Real tokens over computed token positions, all batches together."""
    keys = ("packed_tokens", "tokens", "item_tokens")
    arrays = [b[next(k for k in keys if k in b)] for b in batches]
    return float(sum((a != 0).sum() for a in arrays) / sum(a.size for a in arrays))


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more finished workdirs")
    rows, cache = [], {}
    env = timing.environment()
    print(f"\n{env['device']} ({env['platform']}, {env['devices']} device(s)), jax {env['jax']}")
    print(HEAD)
    print("|" + "|".join("-" * (len(c)) for c in HEAD.split("|")[1:-1]) + "|", flush=True)
    for workdir in workdirs:
        if not os.path.exists(os.path.join(workdir, "results.json")):
            logging.warning("%s: no results.json (unfinished run); skipped", workdir)
            continue
        variants = ["best"] + (["served"] if os.path.isdir(os.path.join(workdir, "served")) else [])
        for params in variants:
            ranker = serving.load(workdir, params)
            key = json.dumps(ranker.config.data.to_dict(), sort_keys=True, default=str)
            if key not in cache:
                cache[key] = data_lib.load(ranker.config.data).test
            test = cache[key]
            apply = jax.jit(
                lambda v, b, m=ranker.model: m.apply(v, models.inputs(m, b), b["where"])
            )
            score = functools.partial(apply, ranker.variables)
            prepare, pack_length = _preparer(ranker)
            batches = [prepare(b) for b in timing.pair_batches(test, FLAGS.batch_size)]
            tp = timing.scoring_throughput(score, batches)
            first = test.select(np.arange(min(FLAGS.latency_batch, test.num_lists)))
            small = timing.pair_batches(first, FLAGS.latency_batch)
            lat = timing.latency_ms(score, prepare(small[len(small) // 2]))
            served = params == "served"
            q = _quality(workdir, served)
            rows.append(
                {
                    "run": os.path.basename(os.path.normpath(workdir))
                    + (" (served)" if served else ""),
                    "model": ranker.config.model.name,
                    "bytes": _bytes(workdir, served),
                    "gflops_per_product": _flops(ranker, test) / 1e9,
                    "ndcg@5": q.get("ndcg@5"),
                    "pairwise_accuracy": q.get("pairwise_accuracy"),
                    "rmse_calibrated": q.get("rmse_calibrated"),
                    "real_token_share": _real_share(batches),
                    "pack_length": pack_length,
                    "products_per_sec": tp.items_per_sec,
                    **{f"latency_{k}": v for k, v in lat.items()},
                    **env,
                }
            )
            r = rows[-1]
            print(
                f"| {r['run']:<34} | {r['bytes'] / 1e6:7.2f} | {r['gflops_per_product']:7.3f} | "
                f"{r['ndcg@5']:6.4f} | {r['pairwise_accuracy']:8.4f} | "
                f"{r['rmse_calibrated']:6.4f} | {100 * r['real_token_share']:6.1f} | "
                f"{r['products_per_sec']:10.0f} | "
                f"{r['latency_p50_ms']:6.2f} | {r['latency_p99_ms']:6.2f} |",
                flush=True,
            )
            if FLAGS.json:  # after every row: a cut-off run keeps what it measured
                with open(FLAGS.json, "w") as f:
                    json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
