r"""Is a 2:4 sparse GEMM faster than dense at the compressed student's shapes? A PyTorch probe
(cuSPARSELt through `torch.sparse.to_sparse_semi_structured`), on an NVIDIA GPU:

  python3 benchmarks/sparse24_probe.py [--tokens 16384,65536] [--json PATH]

For every layer shape of a MiniLM-L6 block (`x [tokens, K] @ W^T`, `W [N, K]` 2:4 along
K: q/k/v/output 384->384, intermediate 384->1536, ffn_output 1536->384) and dtype (bf16,
int8, fp8 e4m3 where the installed PyTorch supports it), the median time of a dense and of
a 2:4 product over 50 calls after 3 warm-up calls, and their ratio; for bf16 and int8 also
replayed from a CUDA graph (device time only: PyTorch builds cuSPARSELt descriptors on
every call, a host cost a custom call could keep out of the loop). rankjax serves 2:4 through a
custom kernel only where this ratio is at least 1.2; otherwise 2:4 stays a bytes lever
(packed kept values + positions) and the served model multiplies densely.
"""

import argparse
import json

import torch
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

SHAPES = {"qkv/output": (384, 384), "intermediate": (384, 1536), "ffn_output": (1536, 384)}


def _graphed(fn):
    """`fn` captured in a CUDA graph and replayed: device time without host overheads
    (PyTorch builds cuSPARSELt descriptors on every call)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _time_ms(fn, repeats=50):
    for _ in range(3):  # warm-up: cuSPARSELt chooses its algorithm on the first calls
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _two_four(n, k, dtype):
    """A random `[n, k]` matrix with 2 of every 4 consecutive weights along k kept."""
    w = torch.randn(n, k, device="cuda")
    keep = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(n, k // 4)
    w = w * keep
    if dtype == torch.int8:
        return (w * 20).round().clamp(-127, 127).to(torch.int8)
    return w.to(dtype)


def _products(dtype, x, w):
    """`(dense call, sparse call)` for one dtype; the sparse operand comes first (what
    cuSPARSELt takes): `W x^T`, the output transposed (the layout a fused kernel would
    choose), the activations as a transposed view (contiguous ones are refused for int8
    and fp8 on the H100)."""
    ws = to_sparse_semi_structured(w)
    xt = x.t()
    if dtype == torch.int8:
        return (lambda: torch._int_mm(x, w.t())), (lambda: torch.mm(ws, xt))
    if dtype == torch.float8_e4m3fn:
        one = torch.ones((), device="cuda")
        dense = lambda: torch._scaled_mm(  # noqa: E731
            x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16
        )
        sparse = lambda: torch._scaled_mm(  # noqa: E731
            ws, xt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16
        )
        return dense, sparse
    return (lambda: torch.nn.functional.linear(x, w)), (lambda: torch.mm(ws, xt))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="16384,65536")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    SparseSemiStructuredTensor._FORCE_CUTLASS = False  # cuSPARSELt where available
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"| {'layer':<12} | {'tokens':>6} | {'dtype':<13} | dense ms | 2:4 ms | speed-up |")
    print("|---|---:|---|---:|---:|---:|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        for layer, (k, n) in SHAPES.items():
            for dtype in (torch.bfloat16, torch.int8, torch.float8_e4m3fn):
                row = {"layer": layer, "tokens": tokens, "dtype": str(dtype), "k": k, "n": n}
                try:
                    x = torch.randn(tokens, k, device="cuda")
                    x = ((x * 20).round().clamp(-127, 127) if dtype == torch.int8 else x).to(dtype)
                    dense, sparse = _products(dtype, x, _two_four(n, k, dtype))
                    row["dense_ms"], row["sparse_ms"] = _time_ms(dense), _time_ms(sparse)
                    row["speedup"] = row["dense_ms"] / row["sparse_ms"]
                    cells = (
                        f"{row['dense_ms']:8.4f} | {row['sparse_ms']:6.4f} | {row['speedup']:7.2f}×"
                    )
                    if dtype != torch.float8_e4m3fn:  # a failed fp8 capture breaks later ones
                        g_dense, g_sparse = _time_ms(_graphed(dense)), _time_ms(_graphed(sparse))
                        row["graph_speedup"] = ratio = g_dense / g_sparse
                        cells += f" | graphed {g_dense:.4f} / {g_sparse:.4f} = {ratio:.2f}×"
                # A dtype or layout this PyTorch / cuSPARSELt refuses is a finding, not a
                # crash: the row records it (e.g. int8 with contiguous activations).
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    cells = f"unsupported: {row['error']}"
                rows.append(row)
                name = str(dtype).removeprefix("torch.")
                print(f"| {layer:<12} | {tokens:>6} | {name:<13} | {cells} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
