r"""rankjax against PyTorch peers on one GPU, measured in one run: cross-encoder scoring
(bf16 and served compressed), fine-tuning steps (float and QAT), listwise training, and
data-parallel scaling.

  python -m benchmarks.run_speed --json=/tmp/rankjax/speed.json

Parts (`--parts`, comma-separated; all by default):

* `scoring`: the MiniLM-L6-shaped cross-encoder (random weights: speed does not depend on
  them) scoring `--batch` pairs of `--length` tokens per call (docs/s, TFLOP/s and the
  share of `--peak_tflops`, the measured bf16 matrix rate) and one query's
  `--latency_batch` candidates (p50/p99 ms). Variants: bf16 with XLA's, cuDNN's and
  rankjax's Pallas attention; served fp8 (static scales, native fp8 GEMMs), AQT int8 and
  AQT int8 weight-only with the default attention (Pallas on a GPU), all converted from
  the same parameters (Spearman correlation of their scores with bf16's on one batch is
  reported as a sanity check). The `--exported` variants are timed again through the
  serving artifact (`rankjax.export`; on a GPU a fixed-shape export holding the Pallas
  kernels), as a server would load it. Every variant compiles with `rankjax.compiler`'s options,
  uses the default LayerNorm (the Pallas kernel on a GPU) and is timed with its weights
  compiled in (`speed.Scorer.served`), as the exported artifact holds them.
  The PyTorch peer (`benchmarks/peers/torch_cross_encoder.py`: transformers BERT, fp16/bf16,
  eager/compiled) runs first in a subprocess, so the two never share the GPU.
* `train`: fine-tuning steps of the cross-encoder, `--train_batch` pairs (MSE, AdamW):
  bf16 float, int8 QAT and fp8 QAT (AQT), and the step-time ratio to float. Training
  steps (here and below, peers too) run back to back as in a training loop, the device
  waited for once per `--block` steps.
* `listwise`: training steps of rankjax's listwise ranker at allRank's Web30K shape
  (`--lists` lists of `--list_size` items, 136 features) against allRank itself
  (`benchmarks/peers/allrank_listwise.py`, float32 and bf16 autocast, eager/compiled).
* `scaling`: the fine-tuning step data-parallel over 1, 2, 4, ... of the host's devices
  (per-device batch fixed at `--train_batch`), pairs/s and speedup over one device.
* `tables`: training steps of the two-tower retrieval model with `--table_rows` users and
  items (`--table_dim` wide), `--table_batch` rows per step, on 1, 2, 4, ... devices:
  plain data parallelism (tables replicated, their gradients summed) against the tables'
  rows split over all the devices (`mesh.model`).
* `latency` (not in the default parts): where one query's `--latency_batch`-candidate call
  goes, for the bf16 (Pallas on a GPU) and served fp8 scorers with their weights
  compiled in, beside a one-kernel program: synced p50/p10/p99, back-to-back time per
  call (the device's own) and dispatch (`speed.latency_breakdown`).

Prints one table per part and writes every row, with the date, device, JAX and PyTorch
versions, to `--json`.
"""

import json
import os
import subprocess
import sys

import jax
from absl import app, flags, logging

from benchmarks import speed, timing
from rankjax.compression import quantization
from rankjax.models import bert

PARTS = flags.DEFINE_list(
    "parts",
    ["scoring", "train", "listwise", "scaling", "tables"],
    "what to run (also: latency, not run by default)",
)
JSON = flags.DEFINE_string("json", "", "write all rows to this JSON file")
BATCH = flags.DEFINE_integer("batch", 1024, "pairs per scoring call (throughput)")
LENGTH = flags.DEFINE_integer("length", 64, "tokens per pair")
LATENCY_BATCH = flags.DEFINE_integer("latency_batch", 64, "candidates of one query (latency)")
TRAIN_BATCH = flags.DEFINE_integer("train_batch", 512, "pairs per fine-tuning step per device")
LISTS = flags.DEFINE_integer("lists", 64, "lists per listwise training step")
LIST_SIZE = flags.DEFINE_integer("list_size", 240, "items per list (allRank's slate length)")
TABLE_ROWS = flags.DEFINE_integer("table_rows", 10_000_000, "users and items (tables)")
TABLE_DIM = flags.DEFINE_integer("table_dim", 64, "embedding width (tables)")
TABLE_BATCH = flags.DEFINE_integer("table_batch", 8192, "rows per two-tower step (tables)")
PEAK = flags.DEFINE_float("peak_tflops", 790.0, "bf16 matrix rate of the GPU (measured)")
EXPORTED = flags.DEFINE_list(
    "exported",
    ["pallas attention", "fp8"],
    "scoring variants (parts of their names) also timed through the serving artifact",
)
ATTENTIONS = flags.DEFINE_list(
    "attentions",
    [],
    "bf16 attention implementations timed (default: xla, cudnn, pallas on a GPU; xla elsewhere)",
)
SERVED = flags.DEFINE_list(
    "served", [], "served low-precision forms timed, parts of their names (default: all)"
)
PEERS = flags.DEFINE_bool("peers", True, "run the PyTorch peers (needs torch and CUDA)")
REPEATS = flags.DEFINE_integer("repeats", 20, "timed scoring calls per measurement (median)")
TRAIN_REPEATS = flags.DEFINE_integer("train_repeats", 5, "timed blocks of training steps")
BLOCK = flags.DEFINE_integer("block", 10, "training steps run back to back per timed block")
SHAPE = flags.DEFINE_string(
    "shape", "", "BERT overrides for a quick run, e.g. hidden_size=32,num_attention_heads=2"
)

_PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")


def _shape() -> dict[str, int] | None:
    if not SHAPE.value:
        return None
    return {k: int(v) for k, v in (kv.split("=") for kv in SHAPE.value.split(","))}


def _attentions() -> tuple[str, ...]:
    if not ATTENTIONS.value:
        return ("xla", "cudnn", "pallas") if jax.default_backend() == "gpu" else ("xla",)
    unknown = set(ATTENTIONS.value) - set(bert.ATTENTIONS)
    if unknown:
        raise app.UsageError(f"--attentions: {sorted(unknown)}; valid: {list(bert.ATTENTIONS)}")
    return tuple(ATTENTIONS.value)


def _served() -> tuple[str, ...]:
    names = tuple(speed.SERVED)
    chosen = tuple(n for n in names if not SERVED.value or any(p in n for p in SERVED.value))
    missed = [p for p in SERVED.value if not any(p in n for n in names)]
    if missed:
        raise app.UsageError(f"--served: {missed} match no form; forms: {list(names)}")
    return chosen


def run_peer(script: str, *args: str) -> list[dict]:
    """Runs `benchmarks/peers/<script>` and returns its JSON rows ([] if it cannot run)."""
    cmd = [sys.executable, os.path.join(_PEERS, script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        logging.warning("peer %s failed:\n%s", script, proc.stderr[-3000:])
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scoring(peers: list[dict]) -> list[dict]:
    shape, length = _shape(), LENGTH.value
    scorers = speed.scoring_variants(shape, _attentions(), _served())
    check = speed.pair_tokens(256, length, 9)
    reference = None
    rows = []
    flops = speed.flops_per_doc(shape, length)
    for s in scorers:
        logging.info("timing %s", s.name)
        row = {
            "variant": s.name,
            **speed.measure_scoring(s, BATCH.value, length, LATENCY_BATCH.value, REPEATS.value),
        }
        scores = s.score(jax.device_put(s.variables), jax.device_put(check))
        reference = scores if reference is None else reference
        row["spearman_vs_bf16"] = speed.agreement(reference, scores)
        rows.append(row)
    for s in scorers:
        if any(part in s.name for part in EXPORTED.value):
            logging.info("timing %s through its export", s.name)
            measured = speed.measure_exported(
                s, BATCH.value, length, LATENCY_BATCH.value, REPEATS.value
            )
            rows.append({"variant": s.name + speed.EXPORTED, **measured})
    for row in peers + rows:
        row["tflops"] = row["docs_per_sec"] * flops / 1e12
        row["peak_share"] = row["tflops"] / PEAK.value
    torch_best = max((r["docs_per_sec"] for r in peers), default=float("nan"))
    table = [
        [
            r["variant"],
            r["docs_per_sec"],
            r["docs_per_sec"] / torch_best,
            r["docs_per_sec"] / speed.bf16_baseline(rows, r["variant"]),
            r["tflops"],
            f"{100 * r['peak_share']:.0f}%",
            r["p50_ms"],
            r["p99_ms"],
            r.get("spearman_vs_bf16", ""),
        ]
        for r in peers + rows
    ]
    header = ["variant", "docs/s", "× PyTorch best", "× rankjax bf16", "TFLOP/s", "of peak"]
    header += [f"p50 ms ({LATENCY_BATCH.value})", "p99 ms", "Spearman vs bf16"]
    print(
        timing.markdown_table(
            f"Cross-encoder scoring, {BATCH.value} pairs × {length} tokens", header, table
        )
    )
    return peers + rows


def latency() -> list[dict]:
    attention = "pallas" if jax.default_backend() == "gpu" else "xla"
    scorers = speed.scoring_variants(_shape(), (attention,), ("fp8 (static scales) served",))
    tokens = jax.device_put(speed.pair_tokens(LATENCY_BATCH.value, LENGTH.value, 2))
    programs = [("one-kernel program (x + 1), the runtime's floor", *speed.one_kernel_program())]
    programs += [(s.name, s.served, tokens) for s in scorers]
    rows = []
    for name, fn, batch in programs:
        logging.info("latency breakdown: %s", name)
        rows.append({"variant": name, **speed.latency_breakdown(fn, batch)})
    keys = ["synced_p50", "synced_p10", "synced_p99", "back_to_back", "dispatch_p50"]
    table = [[r["variant"], *(r[k] for k in keys)] for r in rows]
    header = ["variant", "synced p50 ms", "p10", "p99", "back-to-back ms/call", "dispatch ms"]
    title = f"One query's call, {LATENCY_BATCH.value} pairs × {LENGTH.value} tokens"
    print(timing.markdown_table(title, header, table))
    return rows


def train() -> list[dict]:
    variants = {
        "bf16 float": None,
        "bf16 int8 QAT (AQT)": quantization.Quantizer(),
        "bf16 fp8 QAT (AQT e4m3)": quantization.Quantizer(fp8=True),
        "bf16 int8 QAT (Qwix)": quantization.Quantizer(backend="qwix"),
        "bf16 fp8 QAT (Qwix e4m3)": quantization.Quantizer(backend="qwix", fp8=True),
    }
    rows = []
    for name, q in variants.items():
        logging.info("timing fine-tuning: %s", name)
        rate = speed.train_step_rate(
            TRAIN_BATCH.value,
            LENGTH.value,
            q,
            1,
            _shape(),
            TRAIN_REPEATS.value,
            BLOCK.value,
        )
        rows.append({"variant": f"rankjax {name}", "pairs_per_sec": rate})
    float_rate = rows[0]["pairs_per_sec"]
    table = [[r["variant"], r["pairs_per_sec"], float_rate / r["pairs_per_sec"]] for r in rows]
    title = f"Cross-encoder fine-tuning step, {TRAIN_BATCH.value} pairs × {LENGTH.value} tokens"
    print(timing.markdown_table(title, ["variant", "pairs/s", "step time × float"], table))
    return rows


def listwise(peers: list[dict]) -> list[dict]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        logging.info("timing listwise training: %s", dtype)
        rate = speed.listwise_train_rate(
            LISTS.value,
            LIST_SIZE.value,
            dtype=dtype,
            repeats=TRAIN_REPEATS.value,
            block=BLOCK.value,
        )
        rows.append({"variant": f"rankjax listwise {dtype}", "lists_per_sec": rate})
    peer_best = max((r["lists_per_sec"] for r in peers), default=float("nan"))
    table = [
        [r["variant"], r["lists_per_sec"], r["lists_per_sec"] / peer_best] for r in peers + rows
    ]
    title = f"Listwise training step, {LISTS.value} lists × {LIST_SIZE.value} items × 136 features"
    print(timing.markdown_table(title, ["variant", "lists/s", "× best peer"], table))
    return peers + rows


def scaling() -> list[dict]:
    counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
    rows = []
    for n in counts:
        logging.info("timing data-parallel fine-tuning on %d devices", n)
        rate = speed.train_step_rate(
            TRAIN_BATCH.value * n, LENGTH.value, None, n, _shape(), TRAIN_REPEATS.value, BLOCK.value
        )
        rows.append({"devices": n, "pairs_per_sec": rate})
    one = rows[0]["pairs_per_sec"]
    table = [[r["devices"], r["pairs_per_sec"], r["pairs_per_sec"] / one] for r in rows]
    title = f"Data-parallel fine-tuning, {TRAIN_BATCH.value} pairs per device per step"
    header = ["devices", "pairs/s", "speedup"]
    print(timing.markdown_table(title, header, table))
    return rows


def tables() -> list[dict]:
    counts = [n for n in (1, 2, 4, 8) if n <= jax.device_count()]
    layouts = [(1, 1)] + [(n, m) for n in counts[1:] for m in (1, n)]
    rows = []
    for n, m in layouts:
        logging.info("timing the two-tower step on %d devices, model axis %d", n, m)
        rate = speed.two_tower_train_rate(
            TABLE_ROWS.value,
            TABLE_DIM.value,
            TABLE_BATCH.value,
            n,
            m,
            TRAIN_REPEATS.value,
            BLOCK.value,
        )
        layout = "one device" if n == 1 else ("rows split" if m > 1 else "replicated")
        rows.append({"devices": n, "model_axis": m, "layout": layout, "examples_per_sec": rate})
    one = rows[0]["examples_per_sec"]
    table = [
        [r["devices"], r["layout"], r["examples_per_sec"], r["examples_per_sec"] / one]
        for r in rows
    ]
    title = (
        f"Two-tower training, {TABLE_ROWS.value:,} users and items × {TABLE_DIM.value}, "
        f"{TABLE_BATCH.value} rows per step"
    )
    print(timing.markdown_table(title, ["devices", "tables", "rows/s", "× one device"], table))
    return rows


def main(argv):
    del argv
    out = {"environment": timing.environment()}
    gpu_peers = PEERS.value and jax.default_backend() == "gpu"
    if gpu_peers:
        try:
            import torch

            out["environment"]["torch"] = torch.__version__
        except ImportError:
            gpu_peers = False
    print(json.dumps(out["environment"]))
    if "scoring" in PARTS.value:
        args = [f"--batch={BATCH.value}", f"--length={LENGTH.value}"]
        args += [f"--latency_batch={LATENCY_BATCH.value}", f"--repeats={REPEATS.value}"]
        peers = run_peer("torch_cross_encoder.py", *args) if gpu_peers else []
        out["scoring"] = scoring(peers)
    if "latency" in PARTS.value:
        out["latency"] = latency()
    if "train" in PARTS.value:
        out["train"] = train()
    if "listwise" in PARTS.value:
        args = [
            f"--batch={LISTS.value}",
            f"--list_size={LIST_SIZE.value}",
            f"--repeats={TRAIN_REPEATS.value}",
            f"--block={BLOCK.value}",
        ]
        peers = run_peer("allrank_listwise.py", *args) if gpu_peers else []
        out["listwise"] = listwise(peers)
    if "scaling" in PARTS.value:
        out["scaling"] = scaling()
    if "tables" in PARTS.value:
        out["tables"] = tables()
    if JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(JSON.value)), exist_ok=True)
        with open(JSON.value, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    app.run(main)
