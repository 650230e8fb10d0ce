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
warm-up pass; latency: p50/p99 of scoring the first `--latency_batch` test pairs in the
data's order (a query's candidates arrive unsorted). `real %` is the share of real tokens
among the positions computed in the throughput pass.

The user's alternative runs first, on the same pairs and GPU, in a subprocess before JAX
starts (`--peers`, needs torch, sentence-transformers and CUDA; `benchmarks/peers/
st_cross_encoder.py`): sentence-transformers' `CrossEncoder.predict` in fp16 and the
Hugging Face model under it, built from the first run's BERT folder. `--plot=PATH` draws
test NDCG@5 against products/s with the Pareto front, the peers as dashed lines.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
from absl import app, flags, logging

from benchmarks import timing
from rankjax import data as data_lib
from rankjax import models, serving
from rankjax.data import packing, tokens
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
flags.DEFINE_bool("peers", True, "Time sentence-transformers' CrossEncoder on the same pairs.")
flags.DEFINE_string("plot", "", "Write the NDCG@5 / products/s Pareto plot to this PNG.")
_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers", "st_cross_encoder.py")


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


def _test_split(workdir: str, cache: dict):
    """The test split of a run's data (loaded once per data config) and its config."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    key = json.dumps(config["data"], sort_keys=True, default=str)
    if key not in cache:
        cache[key] = data_lib.load(config["data"]).test
    return cache[key], config


def _peer_rows(workdir: str, cache: dict) -> list[dict]:
    """The sentence-transformers rows on the first run's test pairs ([] if it cannot run)."""
    if not all(importlib.util.find_spec(m) for m in ("torch", "sentence_transformers")):
        logging.warning("peers skipped: torch and sentence-transformers are not installed")
        return []
    test, config = _test_split(workdir, cache)
    text = config["data"]["text"]
    products = tokens.item_texts(test, text["item_columns"])
    spec = {
        "queries": tokens.query_texts(test),
        "products": products,
        "max_length": int(text.get("max_length") or 512),
    }
    checkpoint = bert.resolve_checkpoint(config["model"].get("checkpoint", ""))
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(spec, f)
        f.flush()
        cmd = [sys.executable, _PEER, f"--pairs={f.name}", f"--checkpoint={checkpoint}"]
        cmd += [f"--batch={FLAGS.batch_size}", f"--latency_batch={FLAGS.latency_batch}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        logging.warning("peer %s failed:\n%s", _PEER, proc.stderr[-3000:])
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_names(workdirs: list[str]) -> dict[str, str]:
    """Each workdir's name in the table: its folder's name, or its last two path parts
    where folder names repeat (e.g. `hd_mpnet/seed_0` beside `hd_minilm/seed_0`)."""
    parts = {w: os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs}
    base = [p[-1] for p in parts.values()]
    return {w: "/".join(p[-2:]) if base.count(p[-1]) > 1 else p[-1] for w, p in parts.items()}


def main(argv):
    workdirs = [w for w in argv[1:] if os.path.exists(os.path.join(w, "results.json"))]
    for w in set(argv[1:]) - set(workdirs):
        logging.warning("%s: no results.json (unfinished run); skipped", w)
    if not workdirs:
        raise app.UsageError("give one or more finished workdirs")
    rows, cache, names = [], {}, run_names(workdirs)
    # Before JAX takes the GPU: the two never share it.
    peers = _peer_rows(workdirs[0], cache) if FLAGS.peers else []
    env = timing.environment()
    print(f"\n{env['device']} ({env['platform']}, {env['devices']} device(s)), jax {env['jax']}")
    print(HEAD)
    print("|" + "|".join("-" * (len(c)) for c in HEAD.split("|")[1:-1]) + "|", flush=True)
    for peer in peers:
        print(
            f"| {peer['variant'][:34]:<34} | {'':>7} | {'':>7} | {'':>6} | {'':>8} | {'':>6} | "
            f"{'':>6} | {peer['products_per_sec']:10.0f} | {peer['p50_ms']:6.2f} | "
            f"{peer['p99_ms']:6.2f} |",
            flush=True,
        )
        latency = {f"latency_{k}": peer.pop(k) for k in ("p50_ms", "p99_ms")}
        rows.append({"run": peer.pop("variant"), "peer": True, **peer, **latency, **env})
    for workdir in workdirs:
        variants = ["best"] + (["served"] if os.path.isdir(os.path.join(workdir, "served")) else [])
        for params in variants:
            ranker = serving.load(workdir, params)
            test, _ = _test_split(workdir, cache)
            apply = jax.jit(
                lambda v, b, m=ranker.model: m.apply(v, models.inputs(m, b), b["where"])
            )
            score = functools.partial(apply, ranker.variables)
            prepare, pack_length = _preparer(ranker)
            batches = [prepare(b) for b in timing.pair_batches(test, FLAGS.batch_size)]
            tp = timing.scoring_throughput(score, batches)
            first = timing.pair_batches(test, FLAGS.latency_batch, sort=False)[0]
            lat = timing.latency_ms(score, prepare(first))
            served = params == "served"
            q = _quality(workdir, served)
            rows.append(
                {
                    "run": names[workdir] + (" (served)" if served else ""),
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
    if FLAGS.plot:
        ours = [r for r in rows if not r.get("peer")]
        path = timing.pareto_plot(
            [(r["run"], r["products_per_sec"], r["ndcg@5"]) for r in ours],
            FLAGS.plot,
            f"products/s ({env['device']})",
            "test NDCG@5",
            higher_x_is_better=True,
            marks=[(r["run"][:40], r["products_per_sec"]) for r in rows if r.get("peer")],
        )
        print("wrote", path)


if __name__ == "__main__":
    app.run(main)
