r"""The user's alternative to a rankjax text ranker, timed on the same (query, product) pairs:
sentence-transformers' `CrossEncoder` and the Hugging Face model under it, in fp16 on a
CUDA GPU, built from the same BERT folder as the rankjax teacher.

  python benchmarks/peers/st_cross_encoder.py --pairs=pairs.json --checkpoint=MINILM_DIR

`pairs.json` holds `{"queries": [...], "products": [...], "max_length": 64}` (the test
pairs in file order; `benchmarks/text_rankers_table.py` writes it and runs this file in a
subprocess before JAX starts, so the two never share the GPU). The scoring head is fresh
(speed does not depend on weights). Rows, each at its strongest standard setting:

* `CrossEncoder.predict`, fp16, its default batching (tokenizing included, as a user
  calls it): every pair once, and one call of `--latency_batch` pairs;
* the same model alone (`AutoModelForSequenceClassification`, fp16, SDPA attention) on
  pre-tokenized pairs sorted by length into batches of `--batch` (eager), and one batch
  of `--latency_batch` pairs padded to `max_length` under `torch.compile(mode=
  "reduce-overhead")` (CUDA graphs at a fixed shape) for latency.

Prints one JSON list of rows.
"""

import argparse
import json
import statistics

import torch
from torch_timing import seconds


def _latency(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": 1e3 * statistics.median(times),
        "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--checkpoint", required=True, help="a BERT folder (config, weights)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--latency_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    import sentence_transformers
    import transformers

    with open(args.pairs) as f:
        spec = json.load(f)
    pairs = list(zip(spec["queries"], spec["products"], strict=True))
    length = int(spec["max_length"])
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }
    rows = []
    encoder = sentence_transformers.CrossEncoder(
        args.checkpoint,
        num_labels=1,
        max_length=length,
        device="cuda",
        local_files_only=True,
        model_kwargs={"torch_dtype": torch.float16},
    )

    def predict(batch):
        return encoder.predict(batch, show_progress_bar=False)

    whole = statistics.median(seconds(lambda: predict(pairs), 3, warmup=1))
    small = pairs[: args.latency_batch]
    rows.append(
        {
            "variant": "sentence-transformers CrossEncoder.predict, fp16 (default batching)",
            "products_per_sec": len(pairs) / whole,
            **_latency(seconds(lambda: predict(small), args.repeats)),
            **versions,
        }
    )

    model = encoder.model.eval()
    tokenizer = encoder.tokenizer
    enc = tokenizer(
        [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=length
    )
    order = sorted(range(len(pairs)), key=lambda i: len(enc["input_ids"][i]))
    batches = []
    for start in range(0, len(order), args.batch):
        part = [{k: enc[k][i] for k in enc} for i in order[start : start + args.batch]]
        padded = tokenizer.pad(part, return_tensors="pt")
        batches.append({k: v.cuda() for k, v in padded.items()})

    def score_all():
        with torch.inference_mode():
            return [model(**b).logits for b in batches]

    whole = statistics.median(seconds(score_all, 5))
    fixed = tokenizer(
        [q for q, _ in small],
        [p for _, p in small],
        truncation=True,
        max_length=length,
        padding="max_length",
        return_tensors="pt",
    )
    fixed = {k: v.cuda() for k, v in fixed.items()}
    graphed = torch.compile(model, mode="reduce-overhead")

    def score_fixed():
        with torch.inference_mode():
            return graphed(**fixed).logits

    rows.append(
        {
            "variant": "transformers model alone, fp16, pre-tokenized, length-sorted "
            f"batches of {args.batch}; latency: torch.compile CUDA graphs at "
            f"[{args.latency_batch}, {length}]",
            "products_per_sec": len(pairs) / whole,
            **_latency(seconds(score_fixed, args.repeats, warmup=5)),
            **versions,
        }
    )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
