r"""Quality against cost of finished ranking runs: served bytes, scoring throughput and
one-query latency of the exported served model, and the run's test quality — a table, a
JSON file and two Pareto plots.

  python -m benchmarks.run_serving --json=/tmp/rankjax/bench.json --plots=/tmp/rankjax/bench \
      /tmp/rankjax/quickstart /tmp/rankjax/synthetic_listwise_int8 ...

Each argument is a finished workdir of the ranking trainer (feature or text rankers). Each
run is measured as trained (`best`) and, when it has one, as served (`served/`: integer
weights, packed 2:4 kernels). Every model is first exported with `rankjax.export` — one
`jax.export` file with symbolic batch and list sizes — and timed through that file, as a
server would run it:

* throughput: `--lists` lists of `--candidates` items per call, items per second, median
  of 5 calls after a warm-up;
* latency: p50 / p99 of scoring one query's `--candidates` items (50 calls);
* inputs: random raw features of the run's width (feature rankers) or the test split's
  token arrays (text rankers; their cost depends on the length); the cost of a model does
  not depend on input values, so quality comes from the run's `results.json`;
* bytes: `results.json`'s `float_bytes` / `serving_bytes`; a bf16 or fp16 model's float
  parameters are exported in that dtype (cast once, as a server holds them; the artifact
  bytes show it);
* training: the median examples/s the run logged (`metrics.jsonl`, the first record, which
  includes compilation, left out) — measured while it trained, on its machine.

Plots (matplotlib): the `--metric` against p50 latency and against bytes, the Pareto front
(no other variant both better and cheaper) joined by a line.
"""

import json
import os
import tempfile

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import timing
from rankjax import data as data_lib
from rankjax import export, serving

JSON = flags.DEFINE_string("json", "", "also write the rows to this JSON file")
PLOTS = flags.DEFINE_string("plots", "", "folder for the Pareto plots (PNG)")
METRIC = flags.DEFINE_string("metric", "ndcg@10", "quality metric from results.json")
CANDIDATES = flags.DEFINE_integer("candidates", 100, "items per query (list size)")
LISTS = flags.DEFINE_integer("lists", 64, "queries per call in the throughput test")


def _inputs(ranker, lists: int, candidates: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs `[lists, candidates, ...]`: random raw features, or test tokens."""
    rng = np.random.default_rng(seed)
    keys = export.input_keys(ranker)
    if keys == ("features",):
        width = export.raw_width(ranker.transform)
        return {"features": rng.lognormal(size=(lists, candidates, width)).astype(np.float32)}
    test = data_lib.load(ranker.config.data).test
    rows = rng.integers(0, test.num_items, size=lists * candidates)
    return {
        k: np.asarray(test.extras[k])[rows].reshape(lists, candidates, -1).astype(np.int32)
        for k in keys
    }


def training_rate(workdir: str) -> float | None:
    """Median training examples/s logged by the run (`metrics.jsonl`), first record left
    out (it includes compilation); None if it logged none."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    rates = [r["examples_per_sec"] for r in records if "examples_per_sec" in r][1:]
    return float(np.median(rates)) if rates else None


def measure(workdir: str, variant: str, folder: str) -> dict:
    """One row: the exported model of `workdir` (`best` or `served`) timed, plus quality."""
    ranker = serving.load(workdir, variant)
    path = os.path.join(folder, f"{os.path.basename(os.path.normpath(workdir))}.{variant}")
    keys = export.input_keys(ranker)
    width = export.raw_width(ranker.transform) if keys == ("features",) else None
    # A 16-bit model is served with its float parameters in that dtype, cast once here
    # rather than in every call (as `benchmarks/run_speed.py` measures it).
    dtype = ranker.config.model.get("dtype", "float32")
    param_dtype = dtype if dtype in ("bfloat16", "float16") else None
    export.save(ranker, path, num_features=width, param_dtype=param_dtype)
    # `call`: the program compiled as rankjax compiles inference (`export.load`).
    call = export.load(path).call
    big = jax.device_put(_inputs(ranker, LISTS.value, CANDIDATES.value))
    one = {k: v[:1] for k, v in big.items()}
    everywhere = jax.device_put(np.ones((LISTS.value, CANDIDATES.value), bool))
    seconds = timing.median_seconds(lambda: call(big, everywhere))
    lat = timing.latency_ms(lambda b: call(b, everywhere[:1]), one)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    served = variant == "served"
    quality = results["test_served" if served else "test"]
    if METRIC.value not in quality:
        raise app.UsageError(
            f"{workdir}: results.json has no {METRIC.value}; it has {list(quality)}"
        )
    return {
        "run": os.path.basename(os.path.normpath(workdir)) + (" (served)" if served else ""),
        "model": ranker.config.model.name,
        "bytes": int(results["bytes"]["serving_bytes" if served else "float_bytes"]),
        METRIC.value: float(quality[METRIC.value]),
        "items_per_sec": LISTS.value * CANDIDATES.value / seconds,
        **{f"latency_{k}": v for k, v in lat.items()},
        "artifact_bytes": os.path.getsize(path),
        "train_examples_per_sec": training_rate(workdir),
    }


def plot(rows: list[dict], folder: str, metric: str) -> list[str]:
    """Two PNGs: `metric` against p50 latency and against bytes, Pareto fronts marked."""
    return [
        timing.pareto_plot(
            [(r["run"], r[cost], r[metric]) for r in rows],
            os.path.join(folder, f"{metric.replace('@', '')}_vs_{cost}.png"),
            label,
            f"test {metric}",
        )
        for cost, label in (("latency_p50_ms", "p50 latency, one query (ms)"), ("bytes", "bytes"))
    ]


def main(argv):
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more finished workdirs")
    env = timing.environment()
    metric = METRIC.value
    print(
        f"\n{env['device']} ({env['platform']}), jax {env['jax']}; {CANDIDATES.value} items/query"
    )
    head = (
        f"| {'run':<44} | {'bytes':>11} | {metric:>8} | {'items/s':>11} | {'p50 ms':>7} "
        f"| {'p99 ms':>7} | {'train ex/s':>10} |"
    )
    print(head + "\n|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workdir in workdirs:
            if not os.path.exists(os.path.join(workdir, "results.json")):
                logging.warning("%s: no results.json (unfinished run); skipped", workdir)
                continue
            has_served = os.path.isdir(os.path.join(workdir, "served"))
            for variant in ("best", "served") if has_served else ("best",):
                r = measure(workdir, variant, folder)
                rows.append({**r, **env, "candidates": CANDIDATES.value})
                print(
                    f"| {r['run']:<44} | {r['bytes']:11,d} | {r[metric]:8.4f} | "
                    f"{r['items_per_sec']:11,.0f} | {r['latency_p50_ms']:7.3f} | "
                    f"{r['latency_p99_ms']:7.3f} | {r['train_examples_per_sec'] or 0:10,.0f} |",
                    flush=True,
                )
    if JSON.value:
        with open(JSON.value, "w") as f:
            json.dump(rows, f, indent=2)
    if PLOTS.value and rows:
        for path in plot(rows, PLOTS.value, metric):
            print("wrote", path)
    return 0


if __name__ == "__main__":
    app.run(main)
