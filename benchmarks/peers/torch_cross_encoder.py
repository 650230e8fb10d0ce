r"""PyTorch peer of the cross-encoder speed benchmark: Hugging Face transformers' BERT of
the MiniLM-L6 shape as a cross-encoder (`BertForSequenceClassification`, one label),
scoring (query, product) pairs on a CUDA GPU.

  python benchmarks/peers/torch_cross_encoder.py --batch=1024 --length=64 --latency_batch=64

Random weights (speed does not depend on them) and random token ids with every token
real. Each of fp16 / bf16 × eager / `torch.compile` is timed as rankjax is: warm-up calls
first, the GPU synchronised before every clock read, the median of repeats. Attention is
transformers' default for BERT (PyTorch SDPA, fused kernels). Prints one JSON list of
rows (`benchmarks/run_speed.py` runs this file in a subprocess and reads it).
"""

import argparse
import json
import statistics

import torch
import transformers
from torch_timing import seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--latency_batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=1,
    )
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        model = transformers.BertForSequenceClassification(config).cuda().eval().to(dtype)
        for compiled in (False, True):
            run = torch.compile(model) if compiled else model

            def score(ids, run=run):
                with torch.inference_mode():
                    return run(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

            big = torch.randint(1000, 30000, (args.batch, args.length), device="cuda")
            small = torch.randint(1000, 30000, (args.latency_batch, args.length), device="cuda")
            throughput = statistics.median(seconds(lambda b=big: score(b), args.repeats))
            latency = seconds(lambda s=small: score(s), 5 * args.repeats)
            mode = "torch.compile" if compiled else "eager"
            rows.append(
                {
                    "variant": f"PyTorch {str(dtype)[6:]} {mode}",
                    "docs_per_sec": args.batch / throughput,
                    "p50_ms": 1e3 * statistics.median(latency),
                    "p99_ms": 1e3 * sorted(latency)[int(0.99 * (len(latency) - 1))],
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                }
            )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
