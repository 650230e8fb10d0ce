"""rankjax.compiler: which XLA options each backend gets, and that jit still computes."""

import jax.numpy as jnp
import numpy as np

from rankjax import compiler

GPU = {"xla_gpu_enable_triton_gemm": False, "xla_allow_excess_precision": False}


def test_gpu_inference_turns_triton_gemms_and_excess_precision_off_others_keep_defaults():
    assert compiler.options("gpu") == GPU
    assert compiler.options("cpu") is None
    assert compiler.options("tpu") is None
    # A copy: callers cannot change the table through it.
    compiler.options("gpu")["xla_gpu_enable_triton_gemm"] = True
    assert compiler.OPTIONS["gpu"] == GPU


def test_jit_compiles_and_passes_jit_arguments():
    f = compiler.jit(lambda x, n: jnp.tanh(x) * n, static_argnums=1)
    x = np.linspace(-2, 2, 7, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(f(x, 3)), np.tanh(x) * 3, rtol=1e-6)
