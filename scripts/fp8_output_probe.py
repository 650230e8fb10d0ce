r"""Does XLA write an fp8 GEMM's output as e4m3 itself? The feed-forward intermediate layer
of the MiniLM-shaped cross-encoder served in fp8, alone: `[tokens, 384] @ [384, 1536]`, bias,
GELU, then the quantize that the next fp8 layer applies to its input.

  python scripts/fp8_output_probe.py              # on an NVIDIA GPU (Hopper or later)

For each form of the product and the quantize it compiles the step as rankjax's inference
does (`rankjax.compiler`), reads from the compiled HLO the cuBLASLt fp8 call's epilogue and
output dtype (e4m3: the quantize was folded into the GEMM), and prints the GPU kernel time
per call from a `jax.profiler` trace (`scripts/kernel_profile.py`'s summing).
"""

import re

import jax
import jax.numpy as jnp
import kernel_profile  # its --device and --calls flags apply here too
from absl import app, flags

from rankjax import benchmark, compiler
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


def layer(xq, wq, b, scales, out_dtype=jnp.bfloat16):
    """fp8 product (dequantize-then-dot form), bias, tanh GELU."""
    sx, sw = scales
    lhs = xq.astype(out_dtype) * sx.astype(out_dtype)
    rhs = wq.astype(out_dtype) * sw.astype(out_dtype)
    dims = (((xq.ndim - 1,), (1,)), ((), ()))
    y = jax.lax.dot_general(lhs, rhs, dims, preferred_element_type=out_dtype)
    return jax.nn.gelu(y + b.astype(out_dtype), approximate=True)


def main(argv):
    del argv
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(key, (384, 1536), jnp.float32) * 0.05
    b = (jax.random.normal(key, (1536,)) * 0.1).astype(jnp.bfloat16)
    sx, sw, so = jnp.float32(0.02), fp8.weight_scale(w), jnp.float32(0.01)
    x2 = jax.random.normal(key, (TOKENS.value, 384), jnp.bfloat16)
    inputs = {
        "2D": fp8.quantize(x2, sx),
        "3D": fp8.quantize(x2.reshape(-1, 64, 384), sx),  # [B, T, 384] as the model runs
    }
    wq = fp8.quantize(w.T, sw)
    forms = {
        "float32 (rankjax today)": lambda x: quantize_f32(layer(x, wq, b, (sx, sw)), so),
        "bf16 divide": lambda x: quantize_native(layer(x, wq, b, (sx, sw)), so),
        "bf16 multiply": lambda x: quantize_native(layer(x, wq, b, (sx, sw)), so, False),
        "float32 GEMM out": lambda x: quantize_f32(layer(x, wq, b, (sx, sw), jnp.float32), so),
    }
    rows = []
    for shape, x in inputs.items():
        for name, f in forms.items():
            jf = compiler.jit(f)
            text = jf.lower(x).compile().as_text()
            calls = [ln for ln in text.splitlines() if "__cublas$lt$matmul$f8" in ln]
            out = [ln.split("=", 1)[1].split()[0].split("[")[0].strip("(") for ln in calls]
            epilogue = re.findall(r"epilogue.:.(\w+)", text)
            micros, launches = kernel_profile.kernel_times(
                lambda jf=jf, x=x: jf(x), kernel_profile.CALLS.value, kernel_profile.DEVICE.value
            )
            rows.append(
                [
                    shape,
                    name,
                    ",".join(epilogue) or "-",
                    ",".join(out) or "no fp8 GEMM",
                    sum(micros.values()),
                    sum(launches.values()),
                ]
            )
    header = ["tokens", "quantize", "epilogue", "GEMM output", "µs per call", "kernels"]
    print(benchmark.markdown_table("fp8 intermediate layer: is the quantize folded?", header, rows))


if __name__ == "__main__":
    app.run(main)
