r"""Where a scorer's device time goes: kernel times of the cross-encoder variants of
`benchmarks/speed.py`, from a `jax.profiler` trace.

  python -m benchmarks.kernel_profile --variants=xla,pallas,fp8 --batch=1024 --length=64
  python -m benchmarks.kernel_profile --variants=pallas --xla_defaults  # without rankjax's
                                                                     # compiler options

For each variant (bf16 with `xla`, `cudnn` or `pallas` attention; served `fp8`, `int8`,
`w8` with the default attention), the scoring call (weights compiled in, as
`benchmarks/run_speed.py` times it and the exported artifact holds them; or passed in every call
with `--weights_as_arguments`) is run `--calls` times under
`jax.profiler.trace(create_perfetto_trace=True)`; the trace's kernels on `--device` (e.g.
`/device:GPU`) are summed by name. Prints the busy time and kernel count per call and the
`--top` kernels by time. Kernel names are XLA's (`loop_multiply_fusion_5`, `nvjet_...`
cuBLAS GEMMs, `short_attention` the Pallas kernel): which model operation a fusion holds
is read from its size and order, or from an HLO dump.
"""

import collections
import functools
import glob
import gzip
import json
import os
import tempfile

import jax
from absl import app, flags

from benchmarks import speed
from rankjax import compiler

VARIANTS = flags.DEFINE_list(
    "variants",
    ["xla", "pallas", "fp8"],
    "bf16 attention xla, cudnn or pallas; served fp8, int8, w8",
)
XLA_DEFAULTS = flags.DEFINE_bool(
    "xla_defaults", False, "compile with XLA's default options instead of rankjax.compiler's"
)
WEIGHTS_AS_ARGUMENTS = flags.DEFINE_bool(
    "weights_as_arguments",
    False,
    "pass the weights in every call (`Scorer.score`) instead of compiling them in as "
    "`benchmarks/run_speed.py` and the exported artifact do (`Scorer.served`)",
)
BATCH = flags.DEFINE_integer("batch", 1024, "pairs per call")
LENGTH = flags.DEFINE_integer("length", 64, "tokens per pair")
CALLS = flags.DEFINE_integer("calls", 5, "traced calls (times are per call)")
TOP = flags.DEFINE_integer("top", 16, "kernels listed")
DEVICE = flags.DEFINE_string("device", "/device:GPU", "trace processes whose name has this")

_SERVED = {"fp8": "fp8 (static scales) served", "int8": "int8 (AQT w8a8) served"}
_SERVED["w8"] = "int8 weight-only (AQT) served"


def kernel_times(fn, calls: int, device: str) -> tuple[collections.Counter, collections.Counter]:
    """Microseconds and launches per call of each kernel `fn()` runs on `device`."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            out = [fn() for _ in range(calls)]
            jax.block_until_ready(out)
        (path,) = glob.glob(os.path.join(folder, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    micros, launches = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and device in names.get(e.get("pid"), ""):
            micros[e["name"][:90]] += e["dur"] / calls
            launches[e["name"][:90]] += 1 / calls
    return micros, launches


def main(argv):
    del argv
    if XLA_DEFAULTS.value:
        compiler.OPTIONS.clear()
    attentions = tuple(v for v in VARIANTS.value if v in ("xla", "cudnn", "pallas"))
    served = tuple(_SERVED[v] for v in VARIANTS.value if v in _SERVED)
    tokens = jax.device_put(speed.pair_tokens(BATCH.value, LENGTH.value, 1))
    for scorer in speed.scoring_variants(None, attentions, served):
        if WEIGHTS_AS_ARGUMENTS.value:
            variables = jax.device_put(scorer.variables)
            call = functools.partial(scorer.score, variables, tokens)
        else:
            call = functools.partial(scorer.served, tokens)
        micros, launches = kernel_times(call, CALLS.value, DEVICE.value)
        busy = sum(micros.values()) / 1e3
        print(f"== {scorer.name}: busy {busy:.3f} ms/call, {sum(launches.values()):.0f} kernels")
        for name, us in micros.most_common(TOP.value):
            print(f"  {us:9.1f} us  x{launches[name]:4.0f}  {name}")


if __name__ == "__main__":
    app.run(main)
