r"""What the fp8 feed-forward GEMM of the MiniLM-shaped cross-encoder costs, alone:
`[tokens, 384] @ [384, 1536]`, bias, tanh GELU, then the quantize that the next fp8 layer
applies to its input.

  python -m benchmarks.fp8_output_probe              # on an NVIDIA GPU (Hopper or later)

Two tables, each row compiled as rankjax's inference does (`rankjax.compiler`) with the
weights passed as arguments (compiled in, XLA would fold `convert(e4m3) × scale` into a
16-bit constant and run a bf16 GEMM; `fp8.fp8_dot` guards the model against that), with
the GEMM's custom call, epilogue and output dtype read from the compiled HLO and the GPU
kernel time per call from a `jax.profiler` trace (`benchmarks/kernel_profile.py`'s summing):

* whether XLA writes the GEMM's output as e4m3 itself (the quantize folded into the
  cuBLASLt call), for each form of the quantize, on `[B, T, 384]` tokens as the model
  ran them and on flat `[B·T, 384]`;
* what each step of the epilogue costs: the product alone, + bias, + GELU, + the e4m3
  output, in fp8 and bf16, and the second feed-forward GEMM's shape for comparison.
"""

import re

import jax
import jax.numpy as jnp
import kernel_profile  # its --device and --calls flags apply here too
from absl import app, flags

from benchmarks import timing
from rankjax import compiler
from rankjax.compression import fp8

TOKENS = flags.DEFINE_integer("tokens", 65536, "rows of the product (1,024 pairs × 64 tokens)")


def quantize_f32(y, scale):
    """rankjax's quantize: converts to float32, multiplies by the reciprocal."""
    return fp8.quantize(y, scale)


def quantize_native(y, scale, divide=True):
    """The quantize in `y`'s own dtype, clamped with `lax.clamp`."""
    s = jnp.asarray(scale, y.dtype)
    lim = jnp.asarray(fp8.E4M3_MAX, y.dtype)
    z = y / s if divide else y * (1 / s)
    return jax.lax.clamp(-lim, z, lim).astype(fp8.E4M3)


def product(xq, wq, scales, out_dtype=jnp.bfloat16):
    """fp8 product in the dequantize-then-dot form XLA rewrites to a cuBLASLt fp8 GEMM;
    `wq` is `[out, in]`."""
    sx, sw = scales
    lhs = xq.astype(out_dtype) * sx.astype(out_dtype)
    rhs = wq.astype(out_dtype) * sw.astype(out_dtype)
    dims = (((xq.ndim - 1,), (1,)), ((), ()))
    return jax.lax.dot_general(lhs, rhs, dims, preferred_element_type=out_dtype)


def layer(xq, wq, b, scales, out_dtype=jnp.bfloat16):
    """fp8 product, bias, tanh GELU."""
    y = product(xq, wq, scales, out_dtype)
    return jax.nn.gelu(y + b.astype(out_dtype), approximate=True)


def describe(fn, *args) -> list:
    """[GEMM calls, epilogues, GEMM output dtypes, µs per call, kernels per call] of
    `compiler.jit(fn)(*args)`."""
    jf = compiler.jit(fn)
    text = jf.lower(*args).compile().as_text()
    calls = [ln for ln in text.splitlines() if 'custom_call_target="__cublas' in ln]
    targets = sorted({ln.split('custom_call_target="')[1].split('"')[0] for ln in calls})
    out = [ln.split("=", 1)[1].split()[0].split("[")[0].strip("(") for ln in calls]
    epilogue = re.findall(r"epilogue.:.(\w+)", text)
    micros, launches = kernel_profile.kernel_times(
        lambda: jf(*args), kernel_profile.CALLS.value, kernel_profile.DEVICE.value
    )
    return [
        ",".join(targets) or "no cuBLAS GEMM",
        ",".join(epilogue) or "-",
        ",".join(out) or "-",
        sum(micros.values()),
        sum(launches.values()),
    ]


def main(argv):
    del argv
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (384, 1536), jnp.float32) * 0.05
    w2 = jax.random.normal(key, (1536, 384), jnp.float32) * 0.05
    b = (jax.random.normal(key, (1536,)) * 0.1).astype(jnp.bfloat16)
    b2 = (jax.random.normal(key, (384,)) * 0.1).astype(jnp.bfloat16)
    sx, sw, sw2 = jnp.float32(0.02), fp8.weight_scale(w), fp8.weight_scale(w2)
    so = jnp.float32(0.01)
    x2 = jax.random.normal(key, (TOKENS.value, 384), jnp.bfloat16)
    h2 = jax.random.normal(key, (TOKENS.value, 1536), jnp.bfloat16)
    inputs = {
        "2D": fp8.quantize(x2, sx),
        "3D": fp8.quantize(x2.reshape(-1, 64, 384), sx),  # [B, T, 384] as the model ran
    }
    wq, w2q = fp8.quantize(w.T, sw), fp8.quantize(w2.T, sw2)
    forms = {
        "float32 (multiply by the reciprocal)": lambda x, k: quantize_f32(
            layer(x, k, b, (sx, sw)), so
        ),
        "bf16 divide": lambda x, k: quantize_native(layer(x, k, b, (sx, sw)), so),
        "bf16 multiply": lambda x, k: quantize_native(layer(x, k, b, (sx, sw)), so, False),
        "float32 GEMM out": lambda x, k: quantize_f32(layer(x, k, b, (sx, sw), jnp.float32), so),
    }
    rows = [
        [shape, name, *describe(f, x, wq)]
        for shape, x in inputs.items()
        for name, f in forms.items()
    ]
    header = ["tokens", "quantize", "GEMM", "epilogue", "GEMM output", "µs per call", "kernels"]
    print(timing.markdown_table("fp8 intermediate layer: is the quantize folded?", header, rows))

    xq, hq = inputs["2D"], fp8.quantize(h2, sx)
    wb = w.astype(jnp.bfloat16)
    steps = [
        ("fp8", "product only", lambda x, k: product(x, k, (sx, sw)), xq, wq),
        ("fp8", "+ bias", lambda x, k: product(x, k, (sx, sw)) + b, xq, wq),
        ("fp8", "+ bias + GELU", lambda x, k: layer(x, k, b, (sx, sw)), xq, wq),
        (
            "fp8",
            "+ bias + GELU, e4m3 output (served)",
            lambda x, k: quantize_native(layer(x, k, b, (sx, sw)), so),
            xq,
            wq,
        ),
        (
            "fp8",
            "product only, e4m3 output",
            lambda x, k: quantize_native(product(x, k, (sx, sw)), so),
            xq,
            wq,
        ),
        (
            "fp8",
            "[B·T, 1536] @ [1536, 384] + bias",
            lambda x, k: product(x, k, (sx, sw2)) + b2,
            hq,
            w2q,
        ),
        ("bf16", "product only", lambda x, k: x @ k, x2, wb),
        (
            "bf16",
            "+ bias + GELU",
            lambda x, k: jax.nn.gelu(x @ k + b, approximate=True),
            x2,
            wb,
        ),
    ]
    rows = [[dtype, name, *describe(f, x, k)] for dtype, name, f, x, k in steps]
    header = ["inputs", "step", "GEMM", "epilogue", "GEMM output", "µs per call", "kernels"]
    title = f"[{TOKENS.value}, 384] @ [384, 1536]: what each epilogue step costs"
    print(timing.markdown_table(title, header, rows))


if __name__ == "__main__":
    app.run(main)
